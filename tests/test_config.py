"""The YAML files under configs/: they load through the real parser, match the README's commands
and the paper's table, and command-line flags override them."""

import contextlib
import io
import os
from dataclasses import fields
from importlib.util import find_spec

import pytest
import yaml

import doc_blocks
from child import in_child
from doc_blocks import ROOT, section
from expect import one_error_line, one_line_message
from idml.cli import main as cli_main
from idml.config import TrainConfig, flag_table, load_yaml_config, parse_train_args
from idml.errors import ConfigError
from runs import run_idml

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
OFFICIAL_PAIRS = [(f"official/{ds}_{m}.yaml", f"paper/{ds}/{m}.yaml")
              for ds in ("imagenet", "cifar10", "cifar100") for m in ("ism_baseline", "idml_cutmix")]
#: paper row -> (ISM on, CutMix on, Mixup on)
PAPER_ROWS = {
    "baseline": (False, False, False), "ism_baseline": (True, False, False),
    "mixup": (False, False, True), "idml_mixup": (True, False, True),
    "cutmix": (False, True, False), "idml_cutmix": (True, True, False),
}


def readme_commands(prefix: str, heading: str = "") -> list[list[str]]:
    """The arguments of every command containing ``prefix`` in the documentation's bash blocks
    (only the README's section whose heading starts with ``heading``, if given)."""
    if heading:
        return doc_blocks.commands(prefix, section((ROOT / "README.md").read_text(encoding="utf-8"), heading))
    return doc_blocks.commands(prefix)


def settings(cfg: TrainConfig, *ignore: str) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in ignore}


def test_config_files_exist():
    names = {str(p.relative_to(ROOT / "configs")) for p in CONFIGS}
    assert "quickstart.yaml" in names
    assert {s for pair in OFFICIAL_PAIRS for s in pair} <= names
    assert len([n for n in names if n.startswith("paper/")]) == 18
    assert len([n for n in names if n.startswith("official/")]) == 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_validates(path):
    cfg = parse_train_args(["--config", str(path)])
    assert cfg.to_dict().keys() >= yaml.safe_load(path.read_text()).keys()


@pytest.mark.parametrize(("official", "paper"), OFFICIAL_PAIRS)
def test_paper_rows_that_are_official_commands_equal_them(official, paper):
    base = ROOT / "configs"
    assert yaml.safe_load((base / official).read_text()) == yaml.safe_load((base / paper).read_text())


def test_official_configs_are_the_readme_commands():
    commands = readme_commands("python train.py ", heading="The official README's commands")
    assert len(commands) == 6
    configs = [parse_train_args(["--config", str(ROOT / "configs" / s)]) for s, _ in OFFICIAL_PAIRS]
    for argv in commands:
        cfg = parse_train_args(argv)
        matches = [c for c in configs if settings(c, "expname") == settings(cfg, "expname")]
        assert len(matches) == 1, f"no config for: {' '.join(argv)}"


def test_quickstart_config_is_the_readme_quick_start():
    (argv,) = [c for c in readme_commands("idml train ") if "--dataset" in c and "digits_quickstart" in c]
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
    flags_first = parse_train_args(["--lr", "0.5", "--config", str(path), "--dataset", "cifar10"])
    assert flags_first.lr == 0.5  # position on the command line does not matter


def test_flag_reference_is_derived_from_the_declarations():
    """docs/configuration.md's flag tables are exactly what idml.config.flag_table() derives from
    TrainConfig (regenerate with: python -c "from idml.config import flag_table; print(flag_table())")."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    begin, end = "<!-- flag table: generated by idml.config.flag_table() -->\n", "<!-- end of flag table -->"
    assert text.split(begin, 1)[1].split(end, 1)[0] == flag_table()


def test_every_setting_has_a_flag_and_help():
    parser_help = " ".join(f.metadata["help"] for f in fields(TrainConfig))
    assert all(f.metadata["flags"] and f.metadata["help"] for f in fields(TrainConfig)), parser_help


def test_readme_train_commands_validate(monkeypatch):
    """Every ``idml train`` command of the documentation parses and validates (from the repository root)."""
    monkeypatch.chdir(ROOT)
    commands = readme_commands("idml train ")
    assert len(commands) >= 8
    extras = {"--tensorboard": "tensorboard", "timm:": "timm"}
    for argv in commands:
        needed = [pkg for flag, pkg in extras.items() if any(flag in a for a in argv)]
        if any(not find_spec(pkg) for pkg in needed) or any(a.startswith("runs/") for a in argv):
            continue  # an optional extra is not installed, or the command reads a run made earlier
        parse_train_args(argv)


RECIPE_KEYS = ("expname", "sched", "warmup_epochs", "model_ema", "label_smoothing", "grad_accum_steps",
               "clip_grad_norm", "val_split")


@pytest.mark.parametrize(("ours", "paper"), [("cifar100_pyramidnet_modern", "cifar100/idml_cutmix"),
                                             ("imagenet_resnet50_modern", "imagenet/idml_cutmix")])
def test_our_modern_configs_are_labelled_and_add_only_the_recipe(ours, paper):
    path = ROOT / "configs" / "ours" / f"{ours}.yaml"
    assert path.read_text(encoding="utf-8").startswith("# OURS, NOT THE PAPER'S")
    cfg = parse_train_args(["--config", str(path)])
    row = parse_train_args(["--config", str(ROOT / "configs" / "paper" / f"{paper}.yaml")])
    assert settings(cfg, *RECIPE_KEYS) == settings(row, *RECIPE_KEYS)
    assert cfg.sched == "cosine" and cfg.warmup_epochs > 0 and cfg.model_ema > 0 and cfg.label_smoothing > 0


DO_NOTHING = {
    "cutmix_prob_without_beta": (["--cutmix_prob", "0.5"], ["--cutmix_prob 0.5 does nothing with --beta 0"]),
    "mixup_prob_without_alpha": (["--mixup_prob", "0.5"], ["--mixup_prob 0.5 does nothing with --mixup_alpha 0"]),
    "mixup_alpha_without_prob": (["--mixup_alpha", "1"], ["--mixup_alpha 1 does nothing without --mixup_prob"]),
    "uncertainty_dim_without_ism": (["--no-ism", "--uncertainty_dim", "64"], ["--uncertainty_dim", "--no-ism"]),
    "ism_lambda_without_ism": (["--no-ism", "--ism_lambda", "2"], ["--ism_lambda", "--no-ism"]),
    "alpha_for_resnet": (["--net_type", "resnet", "--depth", "20", "--alpha", "48"], ["--alpha 48", "resnet"]),
    "depth_for_torchvision": (["--net_type", "torchvision:resnet18", "--depth", "50"], ["--depth", "torchvision"]),
    "no_bottleneck_for_imagenet": (["--dataset", "imagenet", "--net_type", "resnet", "--depth", "50",
                                    "--no-bottleneck"], ["--no-bottleneck does nothing", "follows --depth"]),
    "print_freq_without_verbose": (["--no-verbose", "--print-freq", "10"], ["--print-freq 10", "--no-verbose"]),
    "skip_bad_images_on_cifar": (["--skip_bad_images"], ["--skip_bad_images does nothing on cifar10"]),
    "image_key_off_hf": (["--image_key", "picture"], ["--image_key applies to --dataset hf:<path> only"]),
    "data_memory_off_user_data": (["--data_memory_mb", "10"], ["--data_memory_mb applies"]),
}


@pytest.mark.parametrize("case", list(DO_NOTHING))
def test_settings_that_would_do_nothing_are_refused(case) -> None:
    argv, fragments = DO_NOTHING[case]
    with pytest.raises(ConfigError) as info:
        parse_train_args(["--dataset", "cifar10", *argv])
    one_line_message(info, *fragments)


def test_the_official_ism_baseline_commands_give_beta_without_cutmix_and_are_accepted() -> None:
    assert parse_train_args(["--dataset", "cifar10", "--beta", "1.0", "--cutmix_prob", "0"]).mix.cutmix_share == 0


@pytest.mark.parametrize(("argv", "network"), [
    (["--dataset", "digits"], ("resnet", 20, False, True)),
    (["--dataset", "folder", "--input_size", "48"], ("resnet", 20, False, True)),
    (["--dataset", "folder", "--input_size", "96"], ("resnet", 18, True, True)),
    (["--dataset", "hf:somewhere"], ("resnet", 20, False, True)),
    # the official datasets keep the official defaults
    (["--dataset", "cifar10"], ("pyramidnet", 32, True, False)),
    (["--dataset", "imagenet"], ("pyramidnet", 32, True, False)),
    # a network named by the user: the official defaults for what it leaves out
    (["--dataset", "digits", "--net_type", "resnet"], ("resnet", 32, True, False)),
    (["--dataset", "digits", "--depth", "11"], ("pyramidnet", 11, True, False)),
    (["--dataset", "digits", "--no-bottleneck"], ("resnet", 20, False, True)),
])
def test_the_default_network(argv, network) -> None:
    cfg = parse_train_args(argv)
    assert (cfg.net_type, cfg.depth, cfg.bottleneck, cfg.own_default_network) == network
    assert cfg.to_dict()["net_type"] == network[0]  # config.yaml and checkpoints record the network itself


# -- hostile settings files: one line, memory bounded by the file --------------------------------------
def alias_bomb(name: str) -> str:
    """``name`` holding a YAML alias bomb: 9 levels of 9 references, 387 million strings if expanded
    (a few hundred bytes on disk, and a few KB once loaded: the references are shared)."""
    levels = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return f"{name}: [{', '.join(levels)}]\n"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to measure a child's memory")
@pytest.mark.parametrize("name", [f.name for f in fields(TrainConfig)])
def test_a_yaml_alias_bomb_in_any_setting_is_one_line_in_bounded_memory(tmp_path, name: str) -> None:
    """The review's case: a bomb in a setting of the wrong type was expanded into the error message."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(name))

    def run() -> str:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli_main(["train", "--config", str(path)])
        return f"{code}|{err.getvalue()}"

    status, text, grown = in_child(run)
    assert os.WIFEXITED(status)
    assert grown < 50 * 2**20, f"{grown / 2**20:.0f} MiB for a {path.stat().st_size}-byte file"
    code, _, err = text.removeprefix("returned ").partition("|")
    assert code == "2" and err.count("\n") == 1 and "Traceback" not in err and len(err) < 400, text[:500]


@pytest.mark.parametrize(("content", "fragment"), [
    ("[" * 50000 + "]" * 50000, "nested too deeply"),
    ("1: 2\nfoo: 3\n", "unknown setting(s) 1, 'foo'"),
    ("lr: \xff\n", "is not valid YAML"),
    ("lr: !!python/object:os.system 'echo'\n", "is not valid YAML"),
    ("".join(f"k{i}: 1\n" for i in range(1000)), "and 995 more"),
])
def test_hostile_settings_files_are_one_line(tmp_path, capsys, content: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content.encode("latin-1") if "\xff" in content else content.encode())
    code, _, err = run_idml(["train", "--config", str(path)], capsys)
    one_error_line(err, fragment, code=code)


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path) -> None:
    """PyYAML reads ``1e-3`` as text (YAML 1.1 wants ``1.0e-3``); a settings file means the number."""
    path = tmp_path / "sci.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5e-4\nepochs: 1e3\nexpname: 1e5\n")
    values = load_yaml_config(str(path))
    assert values["lr"] == 0.001 and values["weight_decay"] == 0.0005
    assert values["epochs"] == "1e3" and values["expname"] == "1e5"  # an integer setting, a text setting: as written
