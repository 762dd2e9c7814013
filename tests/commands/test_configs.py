"""The YAML files under configs/: they load through the real parser, match the README's commands
and the paper's table, and command-line flags override them."""

import re
import shlex
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from idml.config import TrainConfig, parse_train_args

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
SEED_PAIRS = [(f"seed/{ds}_{m}.yaml", f"paper/{ds}/{m}.yaml")
              for ds in ("imagenet", "cifar10", "cifar100") for m in ("ism_baseline", "idml_cutmix")]
#: paper row -> (ISM on, CutMix on, Mixup on)
PAPER_ROWS = {
    "baseline": (False, False, False), "ism_baseline": (True, False, False),
    "mixup": (False, False, True), "idml_mixup": (True, False, True),
    "cutmix": (False, True, False), "idml_cutmix": (True, True, False),
}


def readme_commands(prefix: str, section: str = "") -> list[list[str]]:
    """The arguments of every command containing ``prefix`` in the README's bash blocks (of the
    section whose heading starts with ``section``, if given)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    if section:
        text = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)).replace("\\\n", " ")
    return [shlex.split(line.partition(prefix)[2]) for line in blocks.splitlines() if prefix in line]


def settings(cfg: TrainConfig, *ignore: str) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in ignore}


def test_config_files_exist():
    names = {str(p.relative_to(ROOT / "configs")) for p in CONFIGS}
    assert "quickstart.yaml" in names
    assert {s for pair in SEED_PAIRS for s in pair} <= names
    assert len([n for n in names if n.startswith("paper/")]) == 18
    assert len([n for n in names if n.startswith("seed/")]) == 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_validates(path):
    cfg = parse_train_args(["--config", str(path)])
    assert cfg.to_dict().keys() >= yaml.safe_load(path.read_text()).keys()


@pytest.mark.parametrize(("seed", "paper"), SEED_PAIRS)
def test_paper_rows_that_are_seed_commands_equal_them(seed, paper):
    base = ROOT / "configs"
    assert yaml.safe_load((base / seed).read_text()) == yaml.safe_load((base / paper).read_text())


def test_seed_configs_are_the_readme_commands():
    commands = readme_commands("python train.py ", section="The official README's commands")
    assert len(commands) == 6
    configs = [parse_train_args(["--config", str(ROOT / "configs" / s)]) for s, _ in SEED_PAIRS]
    for argv in commands:
        cfg = parse_train_args(argv)
        matches = [c for c in configs if settings(c, "expname") == settings(cfg, "expname")]
        assert len(matches) == 1, f"no config for: {' '.join(argv)}"


def test_quickstart_config_is_the_readme_quick_start():
    (argv,) = [c for c in readme_commands("idml train ") if "digits" in c]
    assert parse_train_args(argv) == parse_train_args(["--config", str(ROOT / "configs/quickstart.yaml")])


@pytest.mark.parametrize("dataset", ["imagenet", "cifar10", "cifar100"])
def test_paper_rows_differ_only_in_the_method(dataset):
    reference = parse_train_args(["--config", str(ROOT / f"configs/paper/{dataset}/ism_baseline.yaml")])
    method_keys = ("expname", "ism", "cutmix_prob", "mixup_alpha", "mixup_prob")
    for row, (ism, cutmix, mixup) in PAPER_ROWS.items():
        cfg = parse_train_args(["--config", str(ROOT / f"configs/paper/{dataset}/{row}.yaml")])
        assert settings(cfg, *method_keys) == settings(reference, *method_keys), row
        assert (cfg.ism, cfg.mix.cutmix_share > 0, cfg.mix.mixup_share > 0) == (ism, cutmix, mixup), row
        assert cfg.dataset == dataset and cfg.epochs == 300


def test_override_order_defaults_yaml_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.25\nepochs: 7\nnet_type: resnet\ndepth: 20\nbottleneck: false\nverbose: false\n")
    cfg = parse_train_args(["--config", str(path), "--lr", "0.5", "--dataset", "cifar10"])
    assert cfg.lr == 0.5  # CLI beats YAML
    assert cfg.epochs == 7 and cfg.depth == 20 and cfg.bottleneck is False and cfg.verbose is False  # YAML
    assert cfg.momentum == TrainConfig.momentum and cfg.batch_size == TrainConfig.batch_size  # defaults
    flags_first = parse_train_args(["--lr", "0.5", "--config", str(path)])
    assert flags_first.lr == 0.5  # position on the command line does not matter


def test_readme_train_commands_validate(monkeypatch):
    """Every ``idml train`` command of the README parses and validates (run from the repository root)."""
    monkeypatch.chdir(ROOT)
    commands = readme_commands("idml train ")
    assert len(commands) >= 8
    extras = {"--tensorboard": "tensorboard", "timm:": "timm"}
    for argv in commands:
        needed = [pkg for flag, pkg in extras.items() if any(flag in a for a in argv)]
        if any(not find_spec(pkg) for pkg in needed) or any(a.startswith("runs/") for a in argv):
            continue  # an optional extra is not installed, or the command reads a run made earlier
        parse_train_args(argv)
