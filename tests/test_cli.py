"""Bad command lines: exit status 2, one line on stderr naming the problem, no traceback, nothing written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fake_data
import idml
from doc_blocks import ROOT
from expect import one_error_line
from runs import TRAIN_PY, run_cli, run_idml, run_train_process, subprocess_env

BAD_COMMAND_LINES = {
    "lr_zero": (["--lr", "0"], ["--lr", "a number in (0, 1e+06]"]),
    "cutmix_prob_2": (["--cutmix_prob", "2"], ["--cutmix_prob", "[0, 1]"]),
    "pyramidnet_depth_33": (["--net_type", "pyramidnet", "--dataset", "cifar10", "--depth", "33"],
                            ["depth 33", "9n+2", "11, 20"]),
    "basic_depth_33": (["--net_type", "resnet", "--dataset", "cifar10", "--depth", "33", "--no-bottleneck"],
                       ["depth 33", "6n+2", "8, 14"]),
    "imagenet_depth_51": (["--net_type", "resnet", "--dataset", "imagenet", "--depth", "51"],
                          ["depth 51", "18, 34, 50, 101, 152, 200"]),
    "unknown_dataset": (["--dataset", "mnist"], ["--dataset", "mnist", "cifar10"]),
    "unknown_net_type": (["--net_type", "vgg"], ["--net_type", "vgg", "resnet"]),
    "not_a_number": (["--depth", "abc"], ["--depth", "abc"]),
    "batch_size_0": (["--batch_size", "0"], ["--batch_size"]),
    "escaping_expname": (["--expname", "../elsewhere"], ["--expname"]),
    "missing_config_file": (["--config", "no_such.yaml"], ["no_such.yaml"]),
    "missing_cifar_data": (["--dataset", "cifar10", "--net_type", "resnet", "--depth", "20"],
                           ["cifar-10-batches-py", "data_batch_1", "cifar.html"]),
    "missing_imagenet_data": (["--dataset", "imagenet", "--net_type", "resnet", "--depth", "18"],
                              ["imagenet-1k", "train"]),
    # the official defaults on CIFAR (PyramidNet-32, bottleneck blocks): the depths of both block
    # types and the switch between them, before the (missing) data is looked for
    "official_default_network": (["--dataset", "cifar10"],
                                 ["--depth 32", "bottleneck", "9n+2 (11, 20, 29", "6n+2 (8, 14, 20", "--no-bottleneck",
                                  "--depth 29 or 38"]),
    "depth_8_bottleneck": (["--dataset", "digits", "--depth", "8"], ["--depth 8", "add --no-bottleneck"]),
    "depth_11_basic": (["--dataset", "cifar100", "--net_type", "resnet", "--depth", "11", "--no-bottleneck"],
                       ["--depth 11", "drop --no-bottleneck", "--depth 8 or 14"]),
    "abbreviated_flag": (["--dataset", "digits", "--epoch", "2"], ["unrecognized arguments: --epoch 2",
                                                                   "did you mean --epochs?"]),
    "zero_epochs": (["--dataset", "digits", "--epochs", "0"], ["--epochs"]),
}


@pytest.mark.parametrize("case", list(BAD_COMMAND_LINES))
def test_bad_values_exit_2_with_one_line(case: str, tmp_path: Path, capsys, monkeypatch) -> None:
    argv, fragments = BAD_COMMAND_LINES[case]
    monkeypatch.chdir(tmp_path)  # no data/ here: checks must not depend on data being present
    output = tmp_path / "runs"
    code, _, err = run_cli(["--epochs", "1", *argv, "--output_dir", str(output)], capsys)
    one_error_line(err, *fragments, code=code, prefix="idml train: error:")
    assert not output.exists(), "a refused run must not write anything"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu(tmp_path: Path, capsys) -> None:
    fake_data.make_cifar10(tmp_path, n_train=10, n_test=5)
    code, _, err = run_cli(["--dataset", "cifar10", "--net_type", "resnet", "--depth", "8",
                                   "--no-bottleneck", "--device", "cuda", "--data_dir", str(tmp_path)], capsys)
    one_error_line(err, "--device cuda", code=code, prefix="idml train: error:")


def test_refused_run_keeps_existing_checkpoint(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "runs" / "TEST"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pth.tar").write_bytes(b"earlier run")
    code, _, err = run_cli(["--dataset", "cifar10", "--data_dir", str(tmp_path / "none"),
                                   "--output_dir", str(tmp_path / "runs"), "--lr", "-1"], capsys)
    one_error_line(err, "--lr", code=code, prefix="idml train: error:")
    assert (run_dir / "checkpoint.pth.tar").read_bytes() == b"earlier run"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pth.tar"]


def test_train_py_process_exit_status(tmp_path: Path) -> None:
    """The real entry point (a separate process): exit status 2 and one stderr line."""
    proc = run_train_process(["--dataset", "cifar100", "--net_type", "resnet", "--depth", "20",
                              "--data_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")])
    one_error_line(proc.stderr, "missing/cifar-100-python", code=proc.returncode, prefix="idml train: error:")
    assert not (tmp_path / "out").exists()


def test_bad_imagenet_depth_fails_before_reading_the_data(tmp_path: Path) -> None:
    """Even with ImageNet data present (and DataLoader workers that warn), only the depth error is printed."""
    fake_data.make_imagenet(tmp_path, per_class=1, val_per_class=1, size=(8, 8))
    proc = run_train_process(["--net_type", "resnet", "--dataset", "imagenet", "--depth", "51", "-j", "40",
                              "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    one_error_line(proc.stderr, "depth 51", code=proc.returncode, prefix="idml train: error:")


def test_help_and_a_refused_flag_do_not_import_torch() -> None:
    """The CLI starts fast: help texts and flag errors come before any heavy import."""
    probe = ("import contextlib, io, sys\nfrom idml.cli import main\n"
             "def code(argv):\n"
             "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
             "        try:\n            return main(argv)\n"
             "        except SystemExit as stop:\n            return stop.code\n"
             "codes = [code(argv) for argv in ({argvs})]\n"
             "print(codes, 'torch' in sys.modules, 'numpy' in sys.modules)")
    argvs = ("['--help'], ['--version'], ['train', '--help'], ['eval', '--help'], ['predict', '--help'], "
             "['plot', '--help'], ['bench', '--help'], ['export', '--help'], ['train', '--epoch', '2'], "
             "['train', '--depth', '0'], ['eval', '--checkpoint'], ['export', '--format', 'onnx', '--opset', '3']")
    done = subprocess.run([sys.executable, "-c", probe.format(argvs=argvs)], capture_output=True, text=True,
                          timeout=60, env=subprocess_env())
    assert done.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2] False False", done.stdout


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "idml", "--version"], capture_output=True, text=True, timeout=60,
                          env=subprocess_env())
    assert done.returncode == 0 and done.stdout.strip() == f"idml {idml.__version__}"


@pytest.mark.parametrize(("argv", "prefix"), [
    (["train", "--epoch", "2"], "--epoch"), (["train", "--learning", "0.1"], "--learning"),
    (["eval", "--checkpoint", "x.pth.tar", "--fit"], "--fit"),
    (["predict", "--checkpoint", "x.pth.tar", "x.png", "--top", "3"], "--top"),
    (["plot", "runs/x", "--ou", "x.png"], "--ou"), (["bench", "--step", "2"], "--step"),
    (["export", "--checkpoint", "x.pth.tar", "--format", "onnx", "--output", "m.onnx", "--ops", "18"], "--ops"),
])
def test_every_command_takes_its_flags_only_as_written(argv, prefix, capsys) -> None:
    """argparse would read a prefix of a flag as the flag (--epoch as --epochs): refused instead."""
    code, _, err = run_idml(argv, capsys)
    one_error_line(err, f"unrecognized arguments: {prefix}", code=code, prefix=f"idml {argv[0]}: error:")


def test_every_script_parser_refuses_abbreviations() -> None:
    """The scripts' own parsers (benchmarks/, experiments/) take flags only as written too."""
    for path in [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("experiments/*.py"), ROOT / "train.py"]:
        text = path.read_text(encoding="utf-8")
        for call in re.findall(r"ArgumentParser\((.*?)\)\n", text, flags=re.S):
            assert "allow_abbrev=False" in call, f"{path.name}: ArgumentParser({call})"


def missing_dependency_run(python_args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python_args, str(TRAIN_PY), "--dataset", "digits"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)


def test_train_py_without_the_dependencies_says_so_in_one_line(tmp_path: Path) -> None:
    """As the README's official commands are written, run by a Python outside idml's environment."""
    bare = missing_dependency_run(["-S", "-I"], subprocess_env())  # no site-packages at all: no yaml, no torch
    one_error_line(bare.stderr, "lacks idml's dependencies", "source .venv/bin/activate", code=bare.returncode,
                   prefix="python train.py: error:")
    # a Python that has the command line's modules (yaml) but no torch: the run fails past the parsing
    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    no_torch = missing_dependency_run([], subprocess_env() | {"PYTHONPATH": str(fake.parent)})
    one_error_line(no_torch.stderr, "no module named 'torch'", code=no_torch.returncode,
                   prefix="python train.py: error:")


def test_eval_refuses_a_blend_seed_without_blends(capsys) -> None:
    code, _, err = run_idml(["eval", "--checkpoint", "x.pth.tar", "--blend_seed", "3"], capsys)
    one_error_line(err, "--blend_seed 3 does nothing without --blends", code=code, prefix="idml eval: error:")
