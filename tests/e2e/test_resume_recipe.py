"""Exact resume with the modern recipe on: EMA, cosine schedule with warmup, gradient accumulation
(stopped inside a group), label smoothing, clipping and CutMix. A stopped or killed run, resumed,
ends bitwise equal to an uninterrupted one, its EMA included."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from runs import (
    assert_same_weights,
    load,
    one_thread,  # noqa: F401 - autouse fixture
    run_cli,
    sigkill_at_a_random_step_then_resume,
    signal_at,
    tiny_cifar,
    train_args,
    uninterrupted_run,
)

RECIPE = ["--epochs", "2", "--model_ema", "0.9", "--sched", "cosine", "--warmup_epochs", "0.5",
          "--grad_accum_steps", "3", "--label_smoothing", "0.1", "--clip_grad_norm", "2", "--beta", "1",
          "--cutmix_prob", "0.5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cifar(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final checkpoint of an uninterrupted 2-epoch run."""
    return uninterrupted_run(data, tmp_path_factory.mktemp("reference"), *RECIPE)


def assert_same_run(a: dict, b: dict) -> None:
    assert_same_weights(a, b)
    assert a["ema"]["updates"] == b["ema"]["updates"] == 2 * 7  # 7 groups of 3 (the last of 2) per epoch
    for key, tensor in a["ema"]["state_dict"].items():
        assert torch.equal(tensor, b["ema"]["state_dict"][key]), key
    assert a["best_weights"] == b["best_weights"]


def test_stopped_inside_an_accumulation_group_resumes_exactly(data, reference, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    args = train_args(data, tmp_path, "run", *RECIPE, "--no-verbose")
    signal_at(monkeypatch, signal.SIGTERM, 0, 4)  # step 4 is the middle of the group of steps 3, 4, 5
    code, _, err = run_cli(args, capsys)
    assert code == 143, err
    stopped = load(tmp_path / "run" / "checkpoint.pth.tar")
    assert (stopped["epoch"], stopped["step"]) == (0, 5)
    assert stopped["ranks"][0]["accum_grads"] is not None  # the group's gradients so far are saved
    assert stopped["ema"]["updates"] == 1  # one optimiser step (steps 0-2) so far
    monkeypatch.undo()
    code, out, err = run_cli([*args, "--resume", "auto"], capsys)
    assert code == 0, err
    assert "=> note" not in out  # nothing makes the continuation differ
    assert_same_run(load(tmp_path / "run" / "checkpoint.pth.tar"), reference)


@pytest.mark.slow
def test_sigkill_with_ema_at_a_random_step_then_resume_is_bit_exact(data, reference, tmp_path: Path) -> None:
    sigkill_at_a_random_step_then_resume(train_args(data, tmp_path, "run", *RECIPE, "--save_every_steps", "1"),
                                         tmp_path / "run")
    assert_same_run(load(tmp_path / "run" / "checkpoint.pth.tar"), reference)


def test_eval_and_predict_use_the_ema_with_ema(data, reference, tmp_path: Path, capsys) -> None:
    """``--ema`` loads the averaged weights; a checkpoint without them is one line."""
    from idml.errors import IdmlError
    from idml.inference import load_trained_model

    path = tmp_path / "ref.pth.tar"
    torch.save(reference, path)
    raw = load_trained_model(path, torch.device("cpu"))
    ema = load_trained_model(path, torch.device("cpu"), ema=True)
    for key, tensor in ema.model.state_dict().items():
        assert torch.equal(tensor, reference["ema"]["state_dict"][key])
    assert not torch.equal(raw.model.head.fc.weight, ema.model.head.fc.weight)
    plain = {k: v for k, v in reference.items() if k != "ema"}
    torch.save(plain, tmp_path / "plain.pth.tar")
    with pytest.raises(IdmlError, match="trained without --model_ema"):
        load_trained_model(tmp_path / "plain.pth.tar", torch.device("cpu"), ema=True)
