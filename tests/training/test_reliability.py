"""Reliability of a run's files: whose folder a run may write, the pair checkpoint/best model under a
crash, never saving diverged weights, settings changed on resume, values that pass validation, the
metrics.csv rewrite, the run-folder lock and the message of a resumed finished run."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml

import fake_data
import idml.files
import idml.training.checkpoints
import idml.training.trainer
from expect import one_error_line
from idml.checkpoint.health import DIVERGED_WEIGHT, weights_problem
from idml.checkpoint.schema import BEST_NAME, CHECKPOINT_NAME
from idml.config import TrainConfig
from idml.training.resume import DATA_ORDER, RESUME_RULES
from idml.training.run_folder import RunLock
from idml.training.run_log import METRICS_NAME, EpochRecord, MetricsCSV, metrics_history, read_metrics
from runs import (  # noqa: F401 - one_thread: autouse fixture
    assert_same_weights,
    load,
    one_thread,
    run_cli,
    save_state,
    signal_at,
    subprocess_env,
    temp_files,
    train_args,
)

QUIET = ["--no-verbose"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    fake_data.make_cifar10(root, n_train=40, n_test=10)  # 5 steps of 8 per epoch
    return root


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}




# -- 3. resuming another run's checkpoint into a folder --------------------------------------------
def test_resume_from_another_runs_checkpoint_moves_the_folders_run_aside(data, tmp_path, capsys) -> None:
    assert run_cli(train_args(data, tmp_path, "a", "--epochs", "1", *QUIET), capsys)[0] == 0
    assert run_cli(train_args(data, tmp_path, "b", "--epochs", "1", "--seed", "7", *QUIET), capsys)[0] == 0
    before = files(tmp_path / "b")
    foreign = tmp_path / "a" / CHECKPOINT_NAME
    code, out, err = run_cli(train_args(data, tmp_path, "b", "--epochs", "2", "--resume", str(foreign), *QUIET),
                             capsys)
    assert code == 0, err
    assert f"moved it to {tmp_path / 'b.1'}" in out and str(foreign) in out
    assert files(tmp_path / "b.1") == before  # b's own run, untouched
    assert [row["epoch"] for row in read_metrics(tmp_path / "b" / METRICS_NAME)] == [1]  # no row of b's run
    assert load(tmp_path / "b" / CHECKPOINT_NAME)["epoch"] == 2


def test_resume_from_the_folders_own_file_continues_in_place(data, tmp_path, capsys) -> None:
    assert run_cli(train_args(data, tmp_path, "b", "--epochs", "1", *QUIET), capsys)[0] == 0
    # through a symbolic link to the same folder: still the same run
    (tmp_path / "link").symlink_to(tmp_path / "b")
    own = tmp_path / "link" / CHECKPOINT_NAME
    code, out, err = run_cli(train_args(data, tmp_path, "b", "--epochs", "2", "--resume", str(own), *QUIET), capsys)
    assert code == 0, err
    assert "moved" not in out and not (tmp_path / "b.1").exists()
    assert [row["epoch"] for row in read_metrics(tmp_path / "b" / METRICS_NAME)] == [0, 1]


# -- 4. a crash between the two writes of an epoch's end -------------------------------------------
def crash_after_first_write_of_epoch_end(monkeypatch: pytest.MonkeyPatch, epoch_end: int) -> list[str]:
    """The process dies (as under kill -9: nothing else runs) right after the first file written at
    the end of epoch ``epoch_end`` (0-based) is in place."""
    real, written = idml.training.checkpoints.save_checkpoint, []

    def save(ckpt, path):
        real(ckpt, path)
        if ckpt.epoch == epoch_end + 1 and ckpt.step == 0:
            written.append(Path(path).name)
            raise KeyboardInterrupt  # not caught by the trainer: the second write never happens

    monkeypatch.setattr(idml.training.checkpoints, "save_checkpoint", save)
    return written


def test_a_kill_between_best_and_checkpoint_keeps_both_consistent_and_resumes_bit_exact(
    data, tmp_path, monkeypatch, capsys
) -> None:
    # NCHW: the trajectory this test was set up with, in which the second epoch is the best
    args = train_args(data, tmp_path, "run", "--epochs", "2", "--no-channels_last", *QUIET)
    assert run_cli(train_args(data, tmp_path, "ref", "--epochs", "2", "--no-channels_last", *QUIET), capsys)[0] == 0
    reference = tmp_path / "ref"
    assert load(reference / BEST_NAME)["epoch"] == 2, "epoch 1 must be the best for this test to bite"

    written = crash_after_first_write_of_epoch_end(monkeypatch, epoch_end=1)
    assert run_cli(args, capsys)[0] == 130
    assert written == [BEST_NAME]  # the best model is written first
    checkpoint, best = load(tmp_path / "run" / CHECKPOINT_NAME), load(tmp_path / "run" / BEST_NAME)
    # what the checkpoint calls the best is never newer than the best file
    assert checkpoint["epoch"] < best["epoch"] or checkpoint["best_err1"] == best["best_err1"]

    monkeypatch.undo()
    code, _, err = run_cli([*args, "--resume", "auto"], capsys)
    assert code == 0, err
    assert_same_weights(load(tmp_path / "run" / CHECKPOINT_NAME), load(reference / CHECKPOINT_NAME))
    assert_same_weights(load(tmp_path / "run" / BEST_NAME), load(reference / BEST_NAME))
    assert temp_files(tmp_path / "run") == []


# -- 5. diverged weights are never saved ---------------------------------------------------------
def test_weights_problem_names_the_bad_tensor() -> None:
    good = {"conv.weight": torch.ones(3, 3), "bn.running_var": torch.full((3,), 1e9), "bn.n": torch.tensor(5)}
    assert weights_problem(good) is None  # large running statistics are fine, integers ignored
    assert "conv.weight" in weights_problem(good | {"conv.weight": torch.full((2,), DIVERGED_WEIGHT * 10)})
    assert "NaN" in weights_problem(good | {"bn.running_var": torch.tensor([1.0, float("nan")])})
    assert "NaN" in weights_problem(good | {"fc.bias": torch.tensor([float("inf")])})


def assert_sane_or_absent(path: Path) -> None:
    if path.exists():
        assert weights_problem(load(path)["state_dict"]) is None


def test_a_huge_lr_saving_every_step_never_saves_diverged_weights(data, tmp_path, capsys) -> None:
    args = train_args(data, tmp_path, "run", "--epochs", "1", "--save_every_steps", "1", *QUIET)
    code, _, err = run_cli([*args, "--lr", "1e6"], capsys)
    line = one_error_line(err, "--resume auto", code=code)
    assert "diverged" in line or "NaN" in line
    assert_sane_or_absent(tmp_path / "run" / CHECKPOINT_NAME)
    assert_sane_or_absent(tmp_path / "run" / BEST_NAME)
    code, _, err = run_cli([*args, "--resume", "auto"], capsys)  # the advice works
    assert code == 0, err


def test_a_nan_validation_loss_saves_nothing_and_is_never_best(data, tmp_path, monkeypatch, capsys) -> None:
    real = idml.training.trainer.Trainer.validate

    def validate(self, epoch):
        result = real(self, epoch)
        if epoch == 1:
            result.loss = float("nan")
        return result

    monkeypatch.setattr(idml.training.trainer.Trainer, "validate", validate)
    code, _, err = run_cli(train_args(data, tmp_path, "run", "--epochs", "3", *QUIET), capsys)
    one_error_line(err, "validation loss became NaN", "epoch 1", code=code)
    assert load(tmp_path / "run" / CHECKPOINT_NAME)["epoch"] == 1
    assert load(tmp_path / "run" / BEST_NAME)["epoch"] == 1
    assert [row["epoch"] for row in read_metrics(tmp_path / "run" / METRICS_NAME)] == [0]


def test_a_checkpoint_with_diverged_weights_is_refused_on_resume(data, tmp_path, capsys) -> None:
    args = train_args(data, tmp_path, "run", "--epochs", "1", *QUIET)
    assert run_cli(args, capsys)[0] == 0
    path = tmp_path / "run" / CHECKPOINT_NAME
    state = load(path)
    key = next(k for k in state["state_dict"] if k.endswith("conv1.weight"))
    state["state_dict"][key] = state["state_dict"][key] * 1e37
    save_state(state, path)
    code, _, err = run_cli([*args[:-3], "--epochs", "2", "--resume", "auto"], capsys)
    one_error_line(err, "diverged weights", key, code=code)


# -- 6. settings changed on resume -----------------------------------------------------------------
def test_every_setting_has_a_resume_rule() -> None:
    assert set(RESUME_RULES) == {f.name for f in fields(TrainConfig)}


def test_changed_optimiser_settings_are_applied_noted_and_recorded(data, tmp_path, capsys) -> None:
    args = train_args(data, tmp_path, "run", "--epochs", "1", *QUIET)
    assert run_cli(args, capsys)[0] == 0
    changed = ["--epochs", "2", "--momentum", "0.5", "--wd", "0.001", "--mixup_alpha", "0.2", "--mixup_prob", "1",
               "--dist_timeout", "600"]
    code, out, err = run_cli([*args, *changed, "--resume", "auto"], capsys)
    assert code == 0, err
    for flag in ("--momentum", "--weight-decay", "--mixup_alpha", "--mixup_prob", "--epochs"):
        assert f"=> note: {flag} changed" in out, flag
    assert "--dist_timeout" not in out  # runtime settings change silently
    state = load(tmp_path / "run" / CHECKPOINT_NAME)
    group = state["optimizer"]["param_groups"][0]
    assert (group["momentum"], group["weight_decay"]) == (0.5, 0.001)  # what ran...
    assert (state["config"]["momentum"], state["config"]["weight_decay"]) == (0.5, 0.001)  # ...is what is recorded
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (recorded["momentum"], recorded["weight_decay"]) == (0.5, 0.001)


@pytest.mark.parametrize("change", [["--seed", "3"], ["--label_noise", "0.2"]])
def test_data_order_settings_cannot_change_inside_an_epoch(data, tmp_path, monkeypatch, capsys, change) -> None:
    args = train_args(data, tmp_path, "run", "--epochs", "2", *QUIET)
    signal_at(monkeypatch, signal.SIGTERM, 0, 2)
    assert run_cli(args, capsys)[0] == 143
    monkeypatch.undo()
    before = files(tmp_path / "run")
    code, _, err = run_cli([*args, *change, "--resume", "auto"], capsys)
    one_error_line(err, change[0], "inside epoch 0", code=code)
    assert files(tmp_path / "run") == before  # nothing written, config.yaml included


def test_data_order_settings_may_change_at_an_epochs_end(data, tmp_path, capsys) -> None:
    assert all(RESUME_RULES[name] == DATA_ORDER for name in ("seed", "label_noise"))
    args = train_args(data, tmp_path, "run", "--epochs", "1", *QUIET)
    assert run_cli(args, capsys)[0] == 0
    code, out, err = run_cli([*args, "--epochs", "2", "--seed", "3", "--resume", "auto"], capsys)
    assert code == 0, err
    assert "=> note: --seed changed from 0 to 3" in out
    assert load(tmp_path / "run" / CHECKPOINT_NAME)["config"]["seed"] == 3


# -- 7. values that pass validation must not fail later -------------------------------------------
@pytest.mark.parametrize("bad", [
    ["--seed", "-1"], ["--seed", str(10**14)], ["--seed", str(2**32)], ["--depth", str(10**9)],
    ["--workers", str(10**9)], ["--batch_size", str(10**9)], ["--uncertainty_dim", str(10**11)],
    ["--dist_timeout", "0"], ["--dist_timeout", "-5"], ["--dist_timeout", "1e300"],
    ["--net_type", "pyramidnet", "--depth", "20", "--alpha", "1e7"],
])
def test_impossible_values_fail_before_the_run_folder_exists(data, tmp_path, capsys, bad) -> None:
    code, _, err = run_cli(train_args(data, tmp_path, "run", "--epochs", "1", *QUIET, *bad), capsys)
    one_error_line(err, code=code)
    assert not (tmp_path / "run").exists()


# -- 10. metrics.csv, the lock, a finished run ----------------------------------------------------
def record(epoch: int) -> EpochRecord:
    return EpochRecord(epoch, 0.1, 1.0, 50.0, 10.0, 1.0, 50.0, 10.0, 1.0, 100.0)


def test_a_kill_while_metrics_csv_is_rewritten_leaves_the_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / METRICS_NAME
    log = MetricsCSV(path, [])
    log.write(record(0))
    log.write(record(1))
    before = path.read_bytes()

    def killed(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(idml.files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        metrics_history(path, 1)  # a resume at epoch 1 keeps the file aside and rewrites it
    assert path.read_bytes() == before and (tmp_path / "metrics.csv.old-1").read_bytes() == before
    assert temp_files(tmp_path) == []
    monkeypatch.undo()
    assert [row["epoch"] for row in read_metrics(path)] == [0, 1]
    rows, note = metrics_history(path, 1)
    assert [row["epoch"] for row in rows] == [0] == [row["epoch"] for row in read_metrics(path)]
    assert "metrics.csv.old-2" in note and (tmp_path / "metrics.csv.old-2").read_bytes() == before


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from idml.training.run_folder import RunLock
    lock = RunLock(Path(sys.argv[1]))
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_run_on_a_locked_folder_is_refused_and_a_killed_holder_does_not_block(
    data, tmp_path, capsys
) -> None:
    args = train_args(data, tmp_path, "run", "--epochs", "1", *QUIET)
    assert run_cli(args, capsys)[0] == 0
    before = files(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--resume", "auto", "--epochs", "2"]):  # a fresh run would move it aside
            code, _, err = run_cli([*args, *extra], capsys)
            one_error_line(err, "in use by another idml train", f"pid {holder.pid}", code=code)
            assert files(tmp_path / "run") == before and not (tmp_path / "run.1").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    code, _, err = run_cli([*args, "--resume", "auto", "--epochs", "2"], capsys)
    assert code == 0, err


def test_a_run_lock_is_exclusive_within_one_process_too(tmp_path) -> None:
    first = RunLock(tmp_path)
    with pytest.raises(Exception, match="in use"):
        RunLock(tmp_path)
    first.release()
    RunLock(tmp_path).release()


def test_resuming_a_finished_run_says_so_and_names_no_file(data, tmp_path, capsys) -> None:
    args = train_args(data, tmp_path, "run", "--epochs", "1", *QUIET)
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and f"checkpoint: {tmp_path / 'run' / CHECKPOINT_NAME}" in out
    before = files(tmp_path / "run")
    time.sleep(0.01)
    code, out, err = run_cli([*args, "--resume", "auto"], capsys)
    assert code == 0, err
    assert "nothing to train" in out and CHECKPOINT_NAME not in out.split("=> resuming")[-1].split("\n", 1)[-1]
    assert {k: v for k, v in files(tmp_path / "run").items() if k != "config.yaml"} == {
        k: v for k, v in before.items() if k != "config.yaml"}


# -- 10. DDP: a peer that dies or goes silent ------------------------------------------------------
def test_a_collective_failure_becomes_one_line_naming_the_timeout() -> None:
    from idml.device.runtime import build_runtime
    from idml.errors import IdmlError
    from idml.training.distributed import peer_failures_reported

    rt = build_runtime("cpu", "off", None)
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:1: "
                        "Connection reset by peer. This is typically caused by a remote worker hanging. GLHF!")
    with pytest.raises(RuntimeError, match="GLHF"), peer_failures_reported(rt, 600):  # one process: untouched
        raise gloo
    rt = dataclasses.replace(rt, world_size=2)  # as under torchrun
    with pytest.raises(IdmlError) as info, peer_failures_reported(rt, 45):
        raise gloo
    message = str(info.value)
    assert "\n" not in message and "--dist_timeout 45 s" in message and "Connection reset by peer" in message
    assert "GLHF" not in message and "--resume auto" in message
    with pytest.raises(ValueError), peer_failures_reported(rt, 45):  # other errors keep their own path
        raise ValueError("not a collective")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields_ = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields_[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_a_killed_ddp_peer_stops_the_other_with_one_line(data, tmp_path) -> None:
    args = train_args(data, tmp_path, "run", "--epochs", "50", "--batch_size", "4", "--dist_timeout", "60")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(Path(__file__).resolve().parents[2] / "train.py"), *args]
    proc = subprocess.Popen(command, env=subprocess_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Epoch: [1/"):
            break
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)  # one of the two ranks dies (kill -9)
    _, err = proc.communicate(timeout=120)
    ours = [line for line in err.splitlines() if line.startswith("[rank")]
    assert any("another process of this run stopped answering" in line for line in ours), err
    assert "[rank0]:" not in err and "Traceback" not in "\n".join(ours), err
