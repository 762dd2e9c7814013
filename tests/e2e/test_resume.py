"""Exact resume: a run killed (SIGKILL, a real process) or stopped by SIGTERM/SIGINT and resumed
ends with bitwise the same weights and optimiser state as an uninterrupted run on the CPU."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

import fake_data
from expect import one_error_line
from idml.data.build import build_data
from idml.data.types import DataRequest
from runs import (
    assert_same_weights,
    load,
    one_thread,  # noqa: F401 - autouse fixture
    run_cli,
    sigkill_at_a_random_step_then_resume,
    signal_at,
    temp_files,
    tiny_cifar,
    train_args,
    uninterrupted_run,
)

EPOCHS = ["--epochs", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cifar(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final checkpoint of an uninterrupted 2-epoch run."""
    return uninterrupted_run(data, tmp_path_factory.mktemp("reference"), *EPOCHS)




@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_exact(data, reference, tmp_path: Path) -> None:
    sigkill_at_a_random_step_then_resume(train_args(data, tmp_path, "run", *EPOCHS, "--save_every_steps", "1"),
                                         tmp_path / "run")
    assert_same_weights(load(tmp_path / "run" / "checkpoint.pth.tar"), reference)
    assert temp_files(tmp_path / "run") == []




@pytest.mark.parametrize(("sig", "epoch", "step"), [(signal.SIGTERM, 0, 5), (signal.SIGINT, 1, 0)])
def test_signal_finishes_the_step_saves_and_resumes_exactly(
    data, reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, sig: int, epoch: int, step: int
) -> None:
    args = train_args(data, tmp_path, "run", *EPOCHS, "--no-verbose")
    signal_at(monkeypatch, sig, epoch, step)
    code, _, err = run_cli(args, capsys)
    one_error_line(err, "--resume auto", code=code, expected_code=128 + sig)  # 143 SIGTERM, 130 SIGINT
    stopped = load(tmp_path / "run" / "checkpoint.pth.tar")
    assert (stopped["epoch"], stopped["step"]) == (epoch, step + 1)  # the step in flight was finished
    assert signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)  # handlers put back

    monkeypatch.undo()
    code, _, err = run_cli([*args, "--resume", "auto"], capsys)
    assert code == 0, err
    assert_same_weights(load(tmp_path / "run" / "checkpoint.pth.tar"), reference)


def test_bf16_autocast_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    small = fake_data.make_cifar10(tmp_path / "data", n_train=40, n_test=10).parent  # 5 steps (bf16 is slow here)
    bf16 = ["--epochs", "1", "--amp", "bf16", "--no-verbose"]
    assert run_cli(train_args(small, tmp_path, "ref", *bf16), capsys)[0] == 0
    signal_at(monkeypatch, signal.SIGTERM, 0, 1)
    assert run_cli(train_args(small, tmp_path, "run", *bf16), capsys)[0] == 143
    monkeypatch.undo()
    assert run_cli(train_args(small, tmp_path, "run", *bf16, "--resume", "auto"), capsys)[0] == 0
    assert_same_weights(load(tmp_path / "run" / "checkpoint.pth.tar"), load(tmp_path / "ref" / "checkpoint.pth.tar"))


def test_imagenet_augmentation_depends_only_on_seed_epoch_and_index(tmp_path: Path) -> None:
    """What makes ImageNet resumable without worker RNG state: a sample's random crop, flip, jitter
    and lighting are drawn from its own seed, whatever ran before in that process."""
    fake_data.make_imagenet(tmp_path)
    data = build_data(DataRequest("imagenet", tmp_path, batch_size=4, workers=0, seed=5), torch.device("cpu"))
    images = data.train.dataset
    first = images[(1, 3)][0]
    torch.rand(100)  # disturb the global RNG
    assert torch.equal(images[(1, 3)][0], first)
    assert not torch.equal(images[(2, 3)][0], first)
