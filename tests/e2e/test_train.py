"""One-epoch end-to-end runs of the real command line, ``python train.py ...``, in subprocesses.

Each run gets tiny data in the official on-disk formats (tests/fake_data.py) and its own folder.
Subprocesses use one torch thread: the runs are small, and several threads slow to a crawl when
other processes share the cores. The six commands of the official README run two at a time.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import fake_data
from idml.checkpoint.schema import BEST_NAME, CHECKPOINT_NAME
from idml.data.build import build_data
from idml.data.types import DataRequest
from idml.inference import load_trained_model, run_model
from idml.models.registry import build_from_spec
from idml.models.spec import ModelSpec
from runs import REPO, TRAIN_PY, load, subprocess_env

CHECKPOINT_KEYS = {"epoch", "arch", "model", "state_dict", "best_err1", "best_err5", "optimizer"}


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    run_dir: Path
    seconds: float

    def explain(self) -> str:
        return f"exit {self.proc.returncode}\nstdout:\n{self.proc.stdout[-3000:]}\nstderr:\n{self.proc.stderr[-3000:]}"


def train(args: list[str], workdir: Path, expname: str, timeout: float = 600) -> Run:
    """``python train.py ARGS --output_dir WORKDIR/out`` with WORKDIR as the current folder."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(TRAIN_PY), *args, "--output_dir", "out"],
                          cwd=workdir, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    return Run(proc, workdir / "out" / expname, time.perf_counter() - start)


def check_run(run: Run, expected_model: dict) -> dict:
    """Exit 0, both checkpoints, readable with weights_only=True, holding the fields docs/training.md lists."""
    assert run.proc.returncode == 0, run.explain()
    assert "Traceback" not in run.proc.stderr, run.explain()
    for name in (CHECKPOINT_NAME, BEST_NAME):
        assert (run.run_dir / name).is_file(), f"{name} missing\n{run.explain()}"
    assert f"{run.run_dir.relative_to(run.run_dir.parents[1]) / CHECKPOINT_NAME}" in run.proc.stdout
    state = load(run.run_dir / CHECKPOINT_NAME)
    assert state.keys() >= CHECKPOINT_KEYS
    assert state["epoch"] == 1
    assert {k: state["model"][k] for k in expected_model} == expected_model
    assert 0.0 <= state["best_err5"] <= state["best_err1"] <= 100.0
    if expected_model["dataset"] in ("cifar10", "cifar100", "imagenet"):  # the official protocol: the official line
        best_line = re.search(r"Best accuracy \(top-1 and 5 error\): (\S+) (\S+)", run.proc.stdout)
        assert best_line and [float(v) for v in best_line.groups()] == [state["best_err1"], state["best_err5"]]
    else:  # idml's own line: error in percent, 2 decimals, top-5 with more than 5 classes
        best_line = re.search(r"^Best: epoch \d+, test error (\d+\.\d\d) % \(top-5 (\d+\.\d\d) %\)$", run.proc.stdout,
                              flags=re.M)
        assert best_line and [float(v) for v in best_line.groups()] == [round(state["best_err1"], 2),
                                                                        round(state["best_err5"], 2)]
    assert state["optimizer"]["param_groups"][0]["nesterov"] is True
    assert len(state["optimizer"]["state"]) > 0  # momentum buffers after one epoch
    return state


def rebuild(state: dict) -> torch.nn.Module:
    model = build_from_spec(ModelSpec(**state["model"]))
    model.load_state_dict(state["state_dict"])  # strict: every weight present, nothing extra
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    optimizer.load_state_dict(state["optimizer"])
    return model.eval()


def top1_error(checkpoint: Path, dataset: str, data_dir: Path, batch_size: int) -> float:
    """The validation error of the saved weights, computed as training computed it: with the run's
    precision, memory format and batch size (under bfloat16, other kernels may flip a borderline
    image of these barely trained networks)."""
    trained = load_trained_model(checkpoint, torch.device("cpu"))
    data = build_data(DataRequest(dataset, data_dir, batch_size=batch_size), torch.device("cpu"))
    wrong = total = 0
    for images, labels in data.test:
        logits = run_model(trained, [data.eval_transform(images)]).logits
        wrong += int((logits.argmax(1) != labels.numpy()).sum())
        total += len(labels)
    return 100.0 * wrong / total


# -- one small run per dataset --------------------------------------------------------------------

@pytest.mark.slow
def test_cifar10_end_to_end(tmp_path: Path) -> None:
    fake_data.make_cifar10(tmp_path / "data", n_train=20, n_test=10)
    run = train(["--dataset", "cifar10", "--net_type", "pyramidnet", "--depth", "11", "--alpha", "12",
                 "--batch_size", "8", "--beta", "1.0", "--cutmix_prob", "1", "--epochs", "1", "--expname", "c10"],
                tmp_path, "c10")
    state = check_run(run, {"net_type": "pyramidnet", "dataset": "cifar10", "depth": 11, "alpha": 12.0,
                            "bottleneck": True, "ism": True, "num_classes": 10})
    assert "Epoch: [0/1][0/3]" in run.proc.stdout  # verbose by default: a line per step
    model = rebuild(state)
    assert model.head.uncertainty.out_features == 128
    # the saved weights are the evaluated ones: their validation error is the reported one
    checkpoint = run.run_dir / CHECKPOINT_NAME
    assert top1_error(checkpoint, "cifar10", tmp_path / "data", 8) == pytest.approx(state["best_err1"])
    assert state["class_names"][0] == "airplane" and state["config"]["cutmix_prob"] == 1.0
    assert load(run.run_dir / BEST_NAME)["best_err1"] == state["best_err1"]
    # checkpoints get the usual permissions of a new file (those of config.yaml), not mkstemp's 0600
    mode = (run.run_dir / "config.yaml").stat().st_mode & 0o777
    assert (run.run_dir / CHECKPOINT_NAME).stat().st_mode & 0o777 == mode
    assert (run.run_dir / BEST_NAME).stat().st_mode & 0o777 == mode
    assert not list(run.run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_cifar100_end_to_end_without_ism(tmp_path: Path) -> None:
    fake_data.make_cifar100(tmp_path / "data", n_train=30, n_test=10)
    run = train(["--dataset", "cifar100", "--net_type", "resnet", "--depth", "11", "-b", "16", "--no-ism",
                 "--no-verbose", "--epochs", "1", "--expname", "c100", "--data_dir", "data"], tmp_path, "c100")
    state = check_run(run, {"net_type": "resnet", "dataset": "cifar100", "depth": 11, "ism": False,
                            "num_classes": 100})
    assert "Epoch: [0/1][" not in run.proc.stdout  # --no-verbose: per-epoch summaries only
    model = rebuild(state)
    assert model.head.uncertainty is None
    assert not any("uncertainty" in k for k in state["state_dict"])


@pytest.mark.slow
def test_imagenet_end_to_end(tmp_path: Path) -> None:
    fake_data.make_imagenet(tmp_path / "data", per_class=2, val_per_class=1, size=(40, 32))
    run = train(["--dataset", "imagenet", "--net_type", "resnet", "--depth", "18", "-b", "3", "-j", "0",
                 "--beta", "1.0", "--cutmix_prob", "0.5", "--epochs", "1", "--expname", "in"], tmp_path, "in")
    state = check_run(run, {"net_type": "resnet", "dataset": "imagenet", "depth": 18, "num_classes": 3})
    model = rebuild(state)
    assert model.head.fc.out_features == 3 and model.head.uncertainty.out_features == 512
    assert state["class_names"] == ["n01440764", "n01443537", "n01484850"] and state["input_size"] == 224


@pytest.mark.slow
def test_digits_end_to_end(tmp_path: Path) -> None:
    # float32: a barely trained network's bfloat16 logits hold exact ties, which the training's topk and a
    # re-evaluation may break differently
    run = train(["--dataset", "digits", "--net_type", "resnet", "--depth", "8", "--no-bottleneck", "-b", "128",
                 "--lr", "0.1", "--epochs", "1", "--no-verbose", "--expname", "digits", "--amp", "off"], tmp_path,
                "digits")
    state = check_run(run, {"net_type": "resnet", "dataset": "digits", "depth": 8, "bottleneck": False,
                            "num_classes": 10})
    rebuild(state)  # the weights load strictly into the network the checkpoint describes
    assert top1_error(run.run_dir / CHECKPOINT_NAME, "digits", tmp_path, 128) == pytest.approx(state["best_err1"])


# -- the six commands of the official README, verbatim, plus --epochs 1 and tiny data ----------------

OFFICIAL_COMMANDS = {
    "imagenet_cutmix": "--net_type resnet --dataset imagenet --batch_size 256 --lr 0.1 --depth 50 --epochs 300 "
                       "--expname ResNet50 -j 40 --beta 1.0 --cutmix_prob 1.0 --no-verbose",
    "imagenet_baseline": "--net_type resnet --dataset imagenet --batch_size 256 --lr 0.1 --depth 50 --epochs 300 "
                         "--expname ResNet50 -j 40 --beta 1.0 --cutmix_prob 0 --no-verbose",
    "cifar10_cutmix": "--net_type pyramidnet --dataset cifar10 --depth 200 --alpha 240 --batch_size 64 --lr 0.25 "
                      "--expname PyraNet200 --epochs 300 --beta 1.0 --cutmix_prob 0.5 --no-verbose",
    "cifar10_baseline": "--net_type pyramidnet --dataset cifar10 --depth 200 --alpha 240 --batch_size 64 --lr 0.25 "
                        "--expname PyraNet200 --epochs 300 --beta 1.0 --cutmix_prob 0 --no-verbose",
    "cifar100_cutmix": "--net_type pyramidnet --dataset cifar100 --depth 200 --alpha 240 --batch_size 64 --lr 0.25 "
                       "--expname PyraNet200 --epochs 300 --beta 1.0 --cutmix_prob 0.5 --no-verbose",
    "cifar100_baseline": "--net_type pyramidnet --dataset cifar100 --depth 200 --alpha 240 --batch_size 64 "
                         "--lr 0.25 --expname PyraNet200 --epochs 300 --beta 1.0 --cutmix_prob 0 --no-verbose",
}
SEED_MODELS = {
    "imagenet": {"net_type": "resnet", "depth": 50, "num_classes": 2},
    "cifar10": {"net_type": "pyramidnet", "depth": 200, "alpha": 240.0, "bottleneck": True, "num_classes": 10},
    "cifar100": {"net_type": "pyramidnet", "depth": 200, "alpha": 240.0, "bottleneck": True, "num_classes": 100},
}


def tiny_official_data(root: Path) -> Path:
    """Next to no images (the big networks are slow on a CPU): 5 + 2 CIFAR-10 images (one per
    training batch file), 2 + 2 CIFAR-100 images, 2 ImageNet classes with 1 + 1 small JPEGs each."""
    fake_data.make_cifar10(root, n_train=5, n_test=2)
    fake_data.make_cifar100(root, n_train=2, n_test=2)
    fake_data.make_imagenet(root, classes=("n01440764", "n01443537"), per_class=1, val_per_class=1, size=(40, 32))
    return root


@pytest.fixture(scope="module")
def official_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    """Start the selected official commands, two at a time (one torch thread each: both cores busy)."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_official_readme_command"]
    data = tiny_official_data(tmp_path_factory.mktemp("official_data"))

    def run(name: str) -> Run:
        args = [*shlex.split(OFFICIAL_COMMANDS[name]), "--epochs", "1", "--data_dir", str(data)]
        return train(args, tmp_path_factory.mktemp(name), expname=args[args.index("--expname") + 1])

    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: pool.submit(run, name) for name in names}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OFFICIAL_COMMANDS))
def test_official_readme_command(name: str, official_runs: dict[str, Future]) -> None:
    run = official_runs[name].result()
    try:
        dataset = name.split("_")[0]
        state = check_run(run, {"dataset": dataset, "ism": True, **SEED_MODELS[dataset]})
        cutmix_prob = float(shlex.split(OFFICIAL_COMMANDS[name])[-2])
        assert state["config"]["cutmix_prob"] == cutmix_prob and state["config"]["epochs"] == 1
        assert state["config"]["batch_size"] == (256 if dataset == "imagenet" else 64)
        n_params = sum(t.numel() for k, t in state["state_dict"].items() if k.endswith(("weight", "bias")))
        assert f"the number of model parameters: {n_params}" in run.proc.stdout
        print(f"{name}: {run.seconds:.1f} s")
    finally:
        shutil.rmtree(run.run_dir.parent, ignore_errors=True)  # about 0.4 GB of checkpoints per run


OFFICIAL_README = REPO.parent / "shared" / "seed" / "000_a8162a34077a9762.txt"


@pytest.mark.skipif(not OFFICIAL_README.is_file(), reason="the official README is not next to this checkout")
def test_official_commands_are_the_readme_verbatim() -> None:
    """The commands above are the official README's, character for character (after joining lines)."""
    blocks = re.findall(r"```\n(python train.py.*?)```", OFFICIAL_README.read_text(), flags=re.S)
    official = [" ".join(block.replace("\\\n", " ").split()) for block in blocks]
    assert official == [f"python train.py {command}" for command in OFFICIAL_COMMANDS.values()]
