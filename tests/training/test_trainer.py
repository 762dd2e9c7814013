"""Faults while training: failed and full-disk checkpoint writes, a diverging loss, hostile files;
and the line that says how long each epoch's steps waited for their data."""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import time
from pathlib import Path

import pytest
import torch

import fake_data
import idml.training.trainer
from expect import one_error_line
from idml.checkpoint.io import load_checkpoint
from idml.checkpoint.schema import CHECKPOINT_NAME
from idml.data.cifar import load_cifar
from idml.data.loaders import InMemoryLoader
from idml.errors import DataError, IdmlError
from runs import load, one_thread, run_cli, save_state, temp_files, train_args  # noqa: F401 - autouse fixture


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    fake_data.make_cifar10(root, n_train=40, n_test=10)  # 5 steps of 8 per epoch
    return root


# -- atomic checkpoint files ---------------------------------------------------------------------
def half_then_fail(error: Exception):
    real_save = torch.save

    def save(obj, fh):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise error

    return save


@pytest.mark.parametrize("failure", ["torch.save", "os.replace"])
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch, failure: str) -> None:
    path = tmp_path / CHECKPOINT_NAME
    old = {"state_dict": {"w": torch.arange(5.0)}, "model": {}}
    save_state(old, path)
    if failure == "torch.save":
        monkeypatch.setattr(torch, "save", half_then_fail(RuntimeError("simulated crash")))
    else:
        monkeypatch.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(IdmlError, match="previous file, if any, is intact"):
        save_state({"state_dict": {"w": torch.zeros(5)}, "model": {}}, path)
    monkeypatch.undo()
    assert torch.equal(load(path)["state_dict"]["w"], old["state_dict"]["w"])
    assert temp_files(tmp_path) == []


def test_full_disk_during_a_checkpoint_exits_2_and_keeps_the_old_one(data, tmp_path, monkeypatch, capsys) -> None:
    args = train_args(data, tmp_path, "run", "--epochs", "1", "--no-verbose")
    assert run_cli(args, capsys)[0] == 0
    before = (tmp_path / "run" / CHECKPOINT_NAME).read_bytes()
    monkeypatch.setattr(torch, "save", half_then_fail(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    code, _, err = run_cli([*args[:-3], "--epochs", "2", "--resume", "auto"], capsys)
    assert code == 2
    assert "No space left on device" in one_error_line(err)
    assert (tmp_path / "run" / CHECKPOINT_NAME).read_bytes() == before
    assert temp_files(tmp_path / "run") == []


# -- a diverging loss -----------------------------------------------------------------------------
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    data, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Epoch 0 trains normally; the loss of epoch 1, step 3 is NaN (the 9th step of 5 + 5)."""
    real_loss, calls = idml.training.trainer.mixed_cross_entropy, []

    def loss(logits, batch, *options):
        calls.append(1)
        value = real_loss(logits, batch, *options)
        return value * float("nan") if len(calls) == 9 else value

    monkeypatch.setattr(idml.training.trainer, "mixed_cross_entropy", loss)
    args = train_args(data, tmp_path, "run", "--epochs", "3", "--no-verbose", "--save_every_steps", "2")
    code, _, err = run_cli(args, capsys)
    assert code == 2
    line = one_error_line(err)
    assert "NaN or infinite at epoch 1, step 3" in line and "--resume auto" in line
    kept = load(tmp_path / "run" / CHECKPOINT_NAME)
    assert (kept["epoch"], kept["step"]) == (1, 2)  # saved after steps 0-1 of epoch 1, before the NaN
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values() if t.is_floating_point())
    assert load(tmp_path / "run" / "model_best.pth.tar")["epoch"] == 1


def test_an_absurd_learning_rate_diverges_into_a_clear_error(data, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(train_args(data, tmp_path, "run", "--epochs", "1", "--no-verbose", "--lr", "1e6"), capsys)
    assert code == 2
    assert "the training loss became NaN or infinite at epoch 0" in one_error_line(err)
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


# -- hostile files ------------------------------------------------------------------------------
class MarkerPayload:
    """Unpickling this object would create a marker file (if the unpickler allowed it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_cifar_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    folder = fake_data.make_cifar10(tmp_path)
    marker = tmp_path / "marker"
    batch = {"data": MarkerPayload(marker), "labels": [0, 1]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="forbidden global"):
        load_cifar("cifar10", tmp_path)
    assert not marker.exists()


def test_a_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"state_dict": MarkerPayload(marker), "model": {}}, path)
    with pytest.raises(IdmlError, match=r"refusing to load .* tampered"):
        load_checkpoint(path)
    assert not marker.exists()


# -- waiting for data ----------------------------------------------------------------------------
WAIT = re.compile(r"^\* Data wait: ([\d.]+) s of ([\d.]+) s of training \((\d+)%\)", re.M)


def test_the_data_wait_line_measures_a_slow_loader(data, tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, err = run_cli(train_args(data, tmp_path, "fast", "--epochs", "1", "--no-verbose"), capsys)
    assert code == 0, err
    waited, total, share = WAIT.search(out).groups()
    assert 0 <= float(waited) <= float(total) and int(share) < 50

    batches = InMemoryLoader.__iter__

    def slow(self):
        for batch in batches(self):
            time.sleep(0.2)  # 5 batches: a second of waiting for data
            yield batch

    monkeypatch.setattr(InMemoryLoader, "__iter__", slow)
    code, out, err = run_cli(train_args(data, tmp_path, "slow", "--epochs", "1", "--no-verbose"), capsys)
    assert code == 0, err
    waited, total, share = WAIT.search(out).groups()
    assert float(waited) >= 1.0 and int(share) >= 50, out
