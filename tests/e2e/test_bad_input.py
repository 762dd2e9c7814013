"""Bad input of every kind: exit status 2, exactly one line on stderr, no traceback, nothing lost.

Most cases run ``python train.py`` in this process (the same ``cli.main``, without paying for a
new interpreter each time); a few run as real subprocesses to check the process boundary too.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import fake_data
from expect import one_error_line
from idml.checkpoint.schema import BEST_NAME, CHECKPOINT_NAME
from idml.cli import main as cli_main
from idml.commands.train import main as train_main
from idml.data.build import build_data
from idml.data.types import DataRequest
from idml.errors import DataError
from runs import one_thread, run_cli, run_train_process, single_thread, train_args  # noqa: F401 - autouse fixture

CIFAR = "cifar-10-batches-py"
IMAGENET = ["--dataset", "imagenet", "--net_type", "resnet", "--depth", "18", "--batch_size", "12"]


# -- data ----------------------------------------------------------------------------------------
def rewrite_batch(root: Path, **changes) -> None:
    """Rewrite data_batch_1 of the tiny CIFAR-10 under ``root`` with some entries changed."""
    path = root / CIFAR / "data_batch_1"
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    fake_data.write_pickle(path, batch | changes, py2=False)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def remove_batch(root: Path) -> None:
    (root / CIFAR / "data_batch_3").unlink()


DATA_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing folder": (lambda root: None, "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "missing file": (remove_batch, "missing .*data_batch_3; expected .*holding data_batch_1"),
    "truncated pickle": (lambda root: truncate(root / CIFAR / "data_batch_2"), "truncated or corrupt"),
    "corrupt pickle": (lambda root: (root / CIFAR / "test_batch").write_bytes(b"\x80\x02garbage" * 50),
                       "truncated or corrupt|not a plain CIFAR archive"),
    "wrong array shape": (lambda root: rewrite_batch(root, data=torch.zeros(4, 100, dtype=torch.uint8).numpy()),
                          r"N x 3072 uint8, found \(4, 100\)"),
    "label too large": (lambda root: rewrite_batch(root, labels=[0, 1, 2, 10]), r"labels must lie in \[0, 10\)"),
    "negative label": (lambda root: rewrite_batch(root, labels=[0, -1, 2, 3]), r"labels must lie in \[0, 10\)"),
}


@pytest.mark.parametrize("fault", DATA_FAULTS)
def test_bad_cifar_data(fault: str, tmp_path: Path, capsys) -> None:
    make_bad, expected = DATA_FAULTS[fault]
    if fault != "missing folder":
        fake_data.make_cifar10(tmp_path)
    make_bad(tmp_path)
    code, _, err = run_cli(train_args(tmp_path, tmp_path / "runs", "run", "--epochs", "1"), capsys)
    one_error_line(err, code=code)
    assert re.search(expected, err), err
    assert not (tmp_path / "runs").exists()  # nothing written before the input is known good


def empty_class_folders(root: Path) -> None:
    for split in ("train", "val"):
        (root / "imagenet-1k" / split / "n01440764").mkdir(parents=True)


def corrupt_one_image(root: Path) -> None:
    fake_data.make_imagenet(root)
    victim = next((root / "imagenet-1k" / "train" / "n01443537").iterdir())
    victim.write_bytes(victim.read_bytes()[:100])


@pytest.mark.parametrize(("make", "workers", "expected"), [
    (lambda root: None, "0", r"missing folder .*imagenet-1k/train; expected .*https://image-net.org/"),
    (empty_class_folders, "0", r"Found no valid file .*; expected <data_dir>/imagenet-1k/train/<class>"),
    (corrupt_one_image, "0", r"cannot read image .*n01443537_\d\.JPEG: .*--skip_bad_images"),
    (corrupt_one_image, "2", r"cannot read image .*n01443537_\d\.JPEG: .*--skip_bad_images"),
], ids=["missing", "no images", "corrupt image", "corrupt image in a worker"])
def test_bad_imagenet_folder(make, workers: str, expected: str, tmp_path: Path, capsys) -> None:
    make(tmp_path)
    args = [*IMAGENET, "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "runs"), "--workers", workers,
            "--device", "cpu", "--amp", "off", "--epochs", "1"]
    code, _, err = run_cli(args, capsys)
    line = one_error_line(err, code=code)
    assert re.search(expected, line), line
    assert not (tmp_path / "runs" / "TEST" / CHECKPOINT_NAME).exists()


def test_skip_bad_images_skips_and_counts(tmp_path: Path, capfd) -> None:
    corrupt_one_image(tmp_path)
    req = DataRequest("imagenet", tmp_path, batch_size=12, workers=0, skip_bad_images=True)
    data = build_data(req, torch.device("cpu"))
    data.train.set_epoch(0)
    images, targets = next(iter(data.train))
    assert images.shape[0] == targets.shape[0] == 11  # 12 training images, one unreadable
    warning = capfd.readouterr().err
    assert "skipped unreadable image" in warning and "(1 so far)" in warning


# -- settings ------------------------------------------------------------------------------------
BAD_FLAGS = {
    "unknown net_type": (["--net_type", "vgg"], "unknown --net_type 'vgg'"),
    "unknown dataset": (["--dataset", "mnist"], "unknown --dataset 'mnist'"),
    "impossible depth": (["--depth", "7"], "depth"),
    "lr zero": (["--lr", "0"], r"--lr must be a number in \(0, 1e\+06\] \(got 0.0\)"),
    "lr negative": (["--lr", "-0.1"], r"--lr must be a number in \(0, 1e\+06\] \(got -0.1\)"),
    "lr nan": (["--lr", "nan"], r"--lr must be a number in \(0, 1e\+06\] \(got nan\)"),
    "lr inf": (["--lr", "inf"], r"--lr must be a number in \(0, 1e\+06\] \(got inf\)"),
    "lr not a number": (["--lr", "fast"], r"argument --lr/--learning-rate: must be a number \(got .fast.\)"),
    "batch size zero": (["--batch_size", "0"], r"--batch_size must be an integer in \[1, 65536\] \(got 0\)"),
    "cutmix_prob above 1": (["--cutmix_prob", "1.5"], r"--cutmix_prob must be a number in \[0, 1\]"),
    "cutmix_prob below 0": (["--cutmix_prob", "-0.1"], r"--cutmix_prob must be a number in \[0, 1\]"),
    "beta negative": (["--beta", "-1"], r"--beta must be 0 \(off\) or a number in \[1e-06, 1e\+06\]"),
    "epochs negative": (["--epochs", "-1"], r"--epochs must be an integer in \[1, 100000\]"),
    "epochs zero": (["--epochs", "0"], r"--epochs must be an integer in \[1, 100000\] \(got 0\)"),
    "save_every_steps negative": (["--save_every_steps", "-5"], "--save_every_steps must be an integer in"),
    "expname escapes": (["--expname", "../elsewhere"], "must be a plain folder name of at most 240 characters"),
    "resume path missing": (["--resume", "nowhere.pth.tar"], "no such checkpoint file"),
    "unknown flag": (["--unknown_flag"], "unrecognized arguments: --unknown_flag"),
}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    fake_data.make_cifar10(root, n_train=40, n_test=10)
    return root


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_bad_flag(case: str, cifar: Path, tmp_path: Path, capsys) -> None:
    flags, expected = BAD_FLAGS[case]
    args = [*train_args(cifar, tmp_path, "run", "--epochs", "1"), *flags]
    code, _, err = run_cli(args, capsys)
    line = one_error_line(err, code=code)
    assert re.search(expected, line), line
    assert not (tmp_path / "run").exists()


# -- checkpoints and the output folder -----------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding the checkpoint of one finished epoch."""
    out = tmp_path_factory.mktemp("finished")
    with single_thread():
        assert train_main(train_args(cifar, out, "run", "--epochs", "1", "--no-verbose")) == 0
    return out


def damaged_copy(run: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    target = tmp_path / "run"
    target.mkdir()
    (target / CHECKPOINT_NAME).write_bytes((run / "run" / CHECKPOINT_NAME).read_bytes())
    damage(target / CHECKPOINT_NAME)
    return target / CHECKPOINT_NAME


CHECKPOINT_FAULTS = {
    "another depth": (lambda path: None, ["--depth", "14", "--resume", "auto"],
                      r"holds another model: depth 8 \(checkpoint\) vs 14 \(this run\)"),
    "another head": (lambda path: None, ["--no-ism", "--resume", "auto"],
                             r"holds another model: ism True \(checkpoint\) vs False"),
    "truncated": (truncate, ["--resume", "auto"], "truncated or corrupt"),
    "not a checkpoint": (lambda path: torch.save({"weights": torch.zeros(2)}, path), ["--resume", "auto"],
                         "not an idml checkpoint"),
}


@pytest.mark.parametrize("case", CHECKPOINT_FAULTS)
def test_unusable_checkpoint_is_refused_and_kept(case: str, cifar, finished_run, tmp_path, capsys) -> None:
    damage, flags, expected = CHECKPOINT_FAULTS[case]
    path = damaged_copy(finished_run, tmp_path, damage)
    before = path.read_bytes()
    args = [*train_args(cifar, tmp_path, "run", "--epochs", "2"), *flags]
    code, _, err = run_cli(args, capsys)
    line = one_error_line(err, code=code)
    assert re.search(expected, line), line
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [CHECKPOINT_NAME]  # no config.yaml either


def test_fresh_run_moves_an_earlier_run_aside(cifar: Path, finished_run: Path, tmp_path: Path, capsys) -> None:
    path = damaged_copy(finished_run, tmp_path, lambda path: None)
    before = path.read_bytes()
    code, out, _ = run_cli(train_args(cifar, tmp_path, "run", "--epochs", "1", "--no-verbose"), capsys)
    assert code == 0
    assert f"moved it to {tmp_path / 'run.1'}" in out
    assert (tmp_path / "run.1" / CHECKPOINT_NAME).read_bytes() == before
    assert (tmp_path / "run" / CHECKPOINT_NAME).is_file() and (tmp_path / "run" / BEST_NAME).is_file()


def test_output_folder_that_cannot_be_written(cifar: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(train_args(cifar, blocker, "run", "--epochs", "1"), capsys)
    line = one_error_line(err, code=code)
    assert f"cannot write to {blocker / 'run'}" in line and "--output_dir" in line


# -- the process boundary and --debug ------------------------------------------------------------
@pytest.mark.slow
def test_a_real_process_prints_one_line(tmp_path: Path) -> None:
    done = run_train_process(train_args(tmp_path, tmp_path / "runs", "run", "--epochs", "1"))
    one_error_line(done.stderr, code=done.returncode)
    assert "cifar-10-batches-py" in done.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        cli_main(["train", *train_args(tmp_path, tmp_path / "runs", "run", "--epochs", "1"), "--debug"])
