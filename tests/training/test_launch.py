"""``idml train --devices N``: one plain command starts one DDP process per device (Gloo on the CPU
here; the CUDA decision with the device count mocked), with the weights of the torchrun run that has
half the per-process batch, and the same stops, lock, errors and exit statuses."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from expect import one_error_line
from idml.config import parse_train_args
from idml.errors import ConfigError
from idml.training.launch import LaunchPlan, exit_status, plan_launch
from runs import (
    TRAIN_PY,
    assert_same_weights,
    load,
    one_thread,  # noqa: F401 - autouse fixture
    run_cli,
    start_train,
    subprocess_env,
    torchrun_reference,
    train_args,
)

EPOCHS = ["--epochs", "2"]
#: a verbose run's per-step line, any number of epochs and steps: "Epoch: [epoch/E][step/S]"
STEP_LINE = re.compile(r"^Epoch: \[(\d+)/\d+\]\[(\d+)/\d+\]")


# -- the decision --------------------------------------------------------------------------------
def plan(*flags: str, gpus: int | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> LaunchPlan:
    """plan_launch for these flags, on a machine with ``gpus`` CUDA GPUs (None: the real machine)."""
    if gpus is not None and monkeypatch is not None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    return plan_launch(parse_train_args(["--dataset", "digits", *flags]))


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_on_a_4_gpu_node_auto_takes_every_gpu_and_splits_the_official_batch(monkeypatch, no_launcher) -> None:
    assert plan("--batch_size", "256", gpus=4, monkeypatch=monkeypatch) == LaunchPlan(4, 64, "cuda")
    assert plan("--batch_size", "256", "--devices", "2", gpus=4, monkeypatch=monkeypatch) == LaunchPlan(2, 128, "cuda")
    assert plan("--batch_size", "256", "--devices", "1", gpus=4, monkeypatch=monkeypatch).processes == 1
    assert plan("--batch_size", "256", "--device", "cpu", gpus=4, monkeypatch=monkeypatch).processes == 1
    assert plan("--batch_size", "64", "--device", "cpu", "--devices", "2", monkeypatch=monkeypatch) == LaunchPlan(
        2, 32, "cpu")
    assert plan("--batch_size", "64", gpus=0, monkeypatch=monkeypatch).processes == 1  # no GPU: as before


def test_impossible_device_counts_and_uneven_batches_are_one_line(monkeypatch, no_launcher) -> None:
    cases = [(("--devices", "8"), "only 4 CUDA GPU(s) are visible"),
             (("--batch_size", "250"), "--batch_size 250 does not split evenly over 4 processes"),
             (("--devices", "0"), "--devices must be auto or a number"),
             (("--devices", "two"), "--devices must be auto or a number")]
    for flags, fragment in cases:
        with pytest.raises(ConfigError, match=re.escape(fragment)) as info:
            plan("--batch_size", "256", *flags, gpus=4, monkeypatch=monkeypatch)
        assert "\n" not in str(info.value)


def test_under_torchrun_nothing_is_launched(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert plan("--batch_size", "256", "--devices", "4", gpus=4, monkeypatch=monkeypatch) == LaunchPlan(1, 256)


def test_the_command_launches_what_the_plan_says(monkeypatch, no_launcher, capsys) -> None:
    """``python train.py --batch_size 256`` on a (mocked) 4-GPU node: 4 processes of 64, said in one line."""
    import idml.training.launch as launch

    launched: list[tuple[list[str], LaunchPlan]] = []
    monkeypatch.setattr(launch, "run_processes", lambda argv, p, _sig: launched.append((argv, p)) or (0, ""))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    argv = ["--dataset", "digits", "--batch_size", "256"]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and launched == [(argv, LaunchPlan(4, 64, "cuda"))]
    assert out.strip() == ("=> 4 DDP processes, one per CUDA GPU: --batch_size 256 is the total batch, 64 per "
                           "process (--devices 1 for a single process)")


def test_exit_status_of_the_processes() -> None:
    assert exit_status({0: 2, 1: -15}) == (2, "")  # rank 0 failed with a one-line error; the agent stopped rank 1
    assert exit_status({0: 138, 1: 138}) == (138, "")  # a clean stop
    assert exit_status({0: 1, 1: 2}) == (1, "")  # a bug (traceback) wins over the others' errors
    assert exit_status({0: -15, 1: -15}) == (143, "")


def test_a_killed_process_is_named_in_one_line() -> None:
    status, why = exit_status({0: 2, 1: -9})
    assert status == 137
    one_error_line(why, "rank 1 was killed by SIGKILL", "--resume auto")


# -- Gloo processes on the CPU -------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tiny_cifar_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``torchrun --nproc_per_node 2 train.py ... --batch_size 8``, 2 epochs: the final checkpoint."""
    return torchrun_reference(tiny_cifar_data, tmp_path_factory.mktemp("torchrun"), *EPOCHS, "--batch_size", "8")


def devices_args(data: Path, out: Path, expname: str, *extra: str) -> list[str]:
    """``--device cpu --devices 2 --batch_size 16``: twice the torchrun reference's per-process batch."""
    return [*train_args(data, out, expname, *EPOCHS, *extra), "--devices", "2", "--batch_size", "16"]


@pytest.mark.slow
def test_two_gloo_processes_from_one_command_equal_torchrun_with_half_the_batch(
    tiny_cifar_data, reference, tmp_path
) -> None:
    args = devices_args(tiny_cifar_data, tmp_path, "run", "--no-verbose")
    proc = subprocess.run([sys.executable, str(TRAIN_PY), *args], env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == ("=> 2 DDP processes, Gloo processes on the CPU: --batch_size 16 is the "
                                           "total batch, 8 per process (--devices 1 for a single process)")
    assert "rank 0/2" in proc.stdout
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr.lower(), proc.stderr  # torch may warn
    assert_same_weights(load(tmp_path / "run" / "checkpoint.pth.tar"), reference)


def start_and_wait_for_training(args: list[str]) -> subprocess.Popen:
    """Start ``python train.py ARGS`` (verbose) and return once it has trained step 3 of epoch 0."""
    proc = start_train(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = STEP_LINE.match(line)
        if match and (int(match[1]), int(match[2])) >= (0, 3):
            return proc
    pytest.fail(f"the run ended before step 3: {proc.communicate()[1]}")


@pytest.mark.slow
def test_the_stop_signal_and_resume_auto_work_as_under_torchrun(tiny_cifar_data, reference, tmp_path) -> None:
    args = devices_args(tiny_cifar_data, tmp_path, "run")
    proc = start_and_wait_for_training(args)
    proc.send_signal(signal.SIGUSR1)  # as SLURM's warning reaches a job
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 138, err
    one_error_line(err, "stopped by signal 10", "--resume auto")
    stopped = load(tmp_path / "run" / "checkpoint.pth.tar")
    assert len(stopped["ranks"]) == 2 and (0, 0) < (stopped["epoch"], stopped["step"]) < (2, 0)

    resumed = subprocess.run([sys.executable, str(TRAIN_PY), *args, "--resume", "auto", "--no-verbose"],
                             env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"=> resuming {tmp_path / 'run' / 'checkpoint.pth.tar'} at epoch {stopped['epoch']}, step " \
           f"{stopped['step']}" in resumed.stdout
    assert_same_weights(load(tmp_path / "run" / "checkpoint.pth.tar"), reference)


@pytest.mark.slow
def test_a_second_run_on_the_folder_is_refused_by_the_lock_and_sigterm_stops_with_143(
    tiny_cifar_data, tmp_path
) -> None:
    args = [*train_args(tiny_cifar_data, tmp_path, "run", "--epochs", "50"), "--devices", "2", "--batch_size", "16"]
    proc = start_and_wait_for_training(args)
    try:
        second = subprocess.run([sys.executable, str(TRAIN_PY), *args, "--resume", "auto"], env=subprocess_env(),
                                capture_output=True, text=True, timeout=300)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    # refused in one line, by the lock; or, when the live run writes a checkpoint between the second run's
    # two ranks reading it, by their disagreement on where to resume, which is checked before the lock
    disagree = "the ranks do not agree"
    refusal = disagree if disagree in second.stderr else "is in use by another idml train"
    one_error_line(second.stderr, refusal, code=second.returncode)
    assert proc.returncode == 143, err
    one_error_line(err, "stopped by signal 15")


@pytest.mark.slow
def test_an_error_in_the_processes_is_one_line_and_status_2(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(TRAIN_PY), *train_args(tmp_path / "missing", tmp_path, "run"),
                           "--devices", "2", "--batch_size", "16"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    one_error_line(proc.stderr, "idml train: error:", code=proc.returncode)
    assert not (tmp_path / "run").exists()


def test_a_batch_that_does_not_split_is_refused_before_anything_starts(tiny_cifar_data, tmp_path, capsys,
                                                                       no_launcher) -> None:
    args = train_args(tiny_cifar_data, tmp_path, "run", "--devices", "3", "--batch_size", "16")
    code, _, err = run_cli(args, capsys)
    one_error_line(err, "--batch_size 16 does not split evenly over 3 processes", code=code)
    assert not (tmp_path / "run").exists()
