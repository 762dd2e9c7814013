"""Stopping for a scheduler: the warning signal (--stop_signal, SIGUSR1 by default), the clock
(--stop_after), and a signal that arrives during validation or during a checkpoint write. Each stop
writes a checkpoint, exits with 128 + the signal, and a resumed run ends bit-identical to an
uninterrupted one (CPU, one process; DDP and SLURM: test_launch.py, tests/cluster/)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from expect import one_error_line
from idml.device.runtime import build_runtime
from idml.training import stopping
from idml.training.stopping import StopControl, StopRequest
from runs import (
    assert_same_weights,
    load,
    one_thread,  # noqa: F401 - autouse fixture
    run_cli,
    signal_at,
    tiny_cifar,
    train_args,
    uninterrupted_run,
)

EPOCHS = ["--epochs", "2", "--no-verbose"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cifar(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return uninterrupted_run(data, tmp_path_factory.mktemp("reference"), "--epochs", "2")


def stop_then_resume(args: list[str], run_dir: Path, capsys, expected_code: int, *fragments: str) -> dict:
    """Run (a stop is arranged by the caller), check the one line and the status, undo nothing, and
    return the checkpoint the stop wrote."""
    code, _, err = run_cli(args, capsys)
    one_error_line(err, "--resume auto", *fragments, code=code, expected_code=expected_code)
    return load(run_dir / "checkpoint.pth.tar")


def resume_to_the_end(args: list[str], run_dir: Path, capsys, reference: dict) -> None:
    code, out, err = run_cli([*args, "--resume", "auto"], capsys)
    assert code == 0, err
    assert "=> resuming" in out
    assert_same_weights(load(run_dir / "checkpoint.pth.tar"), reference)


# -- the scheduler's signal ---------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "sig"), [([], signal.SIGUSR1), (["--stop_signal", "USR2"], signal.SIGUSR2)])
def test_the_scheduler_signal_stops_at_the_step_saves_and_resumes_exactly(
    data, reference, tmp_path, monkeypatch, capsys, flag: list[str], sig: int
) -> None:
    args = train_args(data, tmp_path, "run", *EPOCHS, *flag)
    signal_at(monkeypatch, sig, 0, 6)
    stopped = stop_then_resume(args, tmp_path / "run", capsys, 128 + sig, f"stopped by signal {sig}")
    assert (stopped["epoch"], stopped["step"]) == (0, 7)  # the step in flight was finished
    assert signal.getsignal(sig) == signal.SIG_DFL  # the handler is put back
    monkeypatch.undo()
    resume_to_the_end(args, tmp_path / "run", capsys, reference)


def signal_on_first_call(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[tuple]:
    """Make ``owner.name`` send this process SIGUSR1 when it is first entered (the call then goes on);
    returns the list of the calls' arguments."""
    original = getattr(owner, name)
    calls: list[tuple] = []

    def signalled(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, signalled)
    return calls


def test_a_signal_during_validation_stops_after_the_epochs_checkpoint(
    data, reference, tmp_path, monkeypatch, capsys
) -> None:
    from idml.training.trainer import Trainer

    signal_on_first_call(monkeypatch, Trainer, "validate")  # epoch 0's validation
    args = train_args(data, tmp_path, "run", *EPOCHS)
    stopped = stop_then_resume(args, tmp_path / "run", capsys, 138, "resumes at epoch 1, step 0")
    assert (stopped["epoch"], stopped["step"]) == (1, 0)  # validation finished, the epoch was saved
    monkeypatch.undo()
    resume_to_the_end(args, tmp_path / "run", capsys, reference)


def test_a_signal_during_a_checkpoint_write_lets_it_finish_then_stops(
    data, reference, tmp_path, monkeypatch, capsys
) -> None:
    import idml.training.checkpoints as checkpoints

    writes = signal_on_first_call(monkeypatch, checkpoints, "save_checkpoint")  # the first step checkpoint
    args = train_args(data, tmp_path, "run", *EPOCHS, "--save_every_steps", "4")
    stopped = stop_then_resume(args, tmp_path / "run", capsys, 138, "stopped by signal 10")
    assert (stopped["epoch"], stopped["step"]) == (0, 4)  # the write finished; nothing else was trained
    assert len(writes) == 2  # the step checkpoint, then the stop's checkpoint at the same position
    monkeypatch.undo()
    resume_to_the_end(args, tmp_path / "run", capsys, reference)


# -- the clock ----------------------------------------------------------------------------------
def clock_runs_out_at(monkeypatch: pytest.MonkeyPatch, epoch: int, step: int) -> None:
    """Make --stop_after's time run out while step ``step`` of ``epoch`` runs (``STARTED`` moved back)."""
    import idml.training.trainer

    original = idml.training.trainer.step_rng

    def step_rng(seed: int, e: int, s: int, rank: int):
        if (e, s) == (epoch, step):
            monkeypatch.setattr(stopping, "STARTED", time.monotonic() - 10 * 3600)
        return original(seed, e, s, rank)

    monkeypatch.setattr(idml.training.trainer, "step_rng", step_rng)


def test_stop_after_stops_like_the_stop_signal_and_resumes_exactly(data, reference, tmp_path, monkeypatch, capsys):
    args = train_args(data, tmp_path, "run", *EPOCHS, "--stop_after", "2")
    clock_runs_out_at(monkeypatch, 1, 3)
    stopped = stop_then_resume(args, tmp_path / "run", capsys, 138, "stopped after --stop_after 2 h")
    assert (stopped["epoch"], stopped["step"]) == (1, 4)
    monkeypatch.undo()
    resume_to_the_end(args, tmp_path / "run", capsys, reference)  # the clock starts again with the process


def test_without_stop_after_the_clock_never_stops_a_run(data, tmp_path, monkeypatch, capsys) -> None:
    clock_runs_out_at(monkeypatch, 0, 3)
    code, _, err = run_cli(train_args(data, tmp_path, "run", "--epochs", "1", "--no-verbose"), capsys)
    assert code == 0, err
    assert load(tmp_path / "run" / "checkpoint.pth.tar")["epoch"] == 1


# -- the agreement itself -----------------------------------------------------------------------
def test_the_clock_is_a_stop_with_the_stop_signals_status(monkeypatch) -> None:
    control = StopControl(build_runtime("cpu", "off", None), "USR2", stop_after_h=1.0)
    assert control.stop_requested() is None
    monkeypatch.setattr(stopping, "STARTED", time.monotonic() - 3601)
    assert control.stop_requested() == StopRequest(int(signal.SIGUSR2), clock=True)
    control.signum = int(signal.SIGTERM)  # a signal as well: the signal is what is reported
    assert control.stop_requested() == StopRequest(int(signal.SIGTERM))


def test_a_repeated_scheduler_signal_never_aborts_but_a_repeated_sigterm_does(monkeypatch) -> None:
    control = StopControl(build_runtime("cpu", "off", None), "USR1")
    control._on_signal(signal.SIGUSR1, None)
    monkeypatch.setattr(control, "_first_signal_at", time.monotonic() - 60)  # long ago
    control._on_signal(signal.SIGUSR1, None)  # forwarded again by a launcher: the same request
    assert control.signum == signal.SIGUSR1
    with pytest.raises(KeyboardInterrupt):  # someone insists with SIGTERM: stop now
        control._on_signal(signal.SIGTERM, None)


def test_bad_stop_settings_are_one_line(data, tmp_path, capsys) -> None:
    for bad, fragment in ((["--stop_after", "-1"], "--stop_after must be a number in [0, 8760]"),
                          (["--stop_signal", "KILL"], "--stop_signal")):
        code, _, err = run_cli(train_args(data, tmp_path, "run", *bad), capsys)
        one_error_line(err, fragment, code=code)
    assert not (tmp_path / "run").exists()

