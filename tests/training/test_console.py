"""What a run prints and records about its best epoch: the official code's lines on its datasets,
idml's own lines elsewhere; and one best epoch for the console, metrics.csv, the checkpoint and
``idml plot``, ties included."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

import idml.training.trainer
from idml.checkpoint.io import load_checkpoint
from idml.checkpoint.schema import BEST_NAME, CHECKPOINT_NAME
from idml.config import parse_train_args
from idml.device.runtime import Runtime
from idml.training.run_log import METRICS_NAME, read_metrics
from idml.training.setup import build_trainer
from idml.training.trainer import EpochResult
from runs import one_thread, run_cli, run_idml, tiny_cifar, train_args  # noqa: F401 - autouse fixture

IDML_ERRORS = re.compile(r"error \d+\.\d\d %")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cifar(tmp_path_factory.mktemp("data"))


def test_the_official_protocol_prints_the_official_lines(data, tmp_path, capsys) -> None:
    code, out, _ = run_cli(train_args(data, tmp_path, "run", "--epochs", "2", "--no-verbose"), capsys)
    assert code == 0
    assert re.search(r"^Current best accuracy \(top-1 and 5 error\): \S+ \S+$", out, flags=re.M)
    assert re.search(r"^Best accuracy \(top-1 and 5 error\): \S+ \S+$", out, flags=re.M)
    assert "Top 5-err" in out and not IDML_ERRORS.search(out)


def test_idml_lines_say_error_percent_with_two_decimals(data, tmp_path, capsys) -> None:
    code, out, _ = run_cli(train_args(data, tmp_path, "run", "--epochs", "2", "--no-verbose", "--val_split", "0.25"),
                           capsys)
    assert code == 0
    assert "accuracy" not in out  # the official best line is the official protocol's only
    current = re.findall(r"^Current best: epoch \d, validation (error \S+ %) \(top-5 \S+ %\); test error .*$", out,
                         flags=re.M)
    assert len(current) == 2 and all(IDML_ERRORS.fullmatch(e) for e in current)  # one line per epoch
    assert re.search(r"^Best: epoch \d, validation error \d+\.\d\d % \(top-5 \d+\.\d\d %\)$", out, flags=re.M)
    assert re.search(r"^  test at the best validation epoch \(\d\): error \d+\.\d\d % \(top-5 \d+\.\d\d %\)$", out,
                     flags=re.M)
    assert re.search(r"^  softmax temperature of the best model \(fitted on the validation split\): "
                     r"(\d\.\d{4}|none \((no validation mistakes|no interior minimum)\b.*\))$", out, flags=re.M)


def test_no_top5_error_for_five_classes_or_fewer(data, tmp_path, capsys) -> None:
    args = train_args(data, tmp_path, "run", "--epochs", "1", "--val_split", "0.25", "--classes", "0-2",
                      "--print-freq", "5")
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "Top 1-err" in out and "Epoch: [0/1][0/" in out  # the per-step lines too
    assert "Top 5-err" not in out and "top-5" not in out


def test_the_temperature_line_says_why_there_is_none(data, tmp_path, capsys) -> None:
    """Before any fit: "not fitted yet" (the other two reasons: tests/test_metrics.py)."""
    cfg = parse_train_args(train_args(data, tmp_path, "run", "--val_split", "0.25"))
    trainer = build_trainer(cfg, Runtime(torch.device("cpu"), None, False))
    printed: list[str] = []
    trainer.print = printed.append
    trainer.print_best("Best")
    assert printed[-1].endswith("softmax temperature of the best model (fitted on the validation split): "
                                "none (not fitted yet)")


def fixed_selection_errors(monkeypatch, errors: list[float]) -> None:
    """Validation on the selection split reports ``errors[epoch]`` (the test split is untouched)."""
    real = idml.training.trainer.Trainer.validate

    def validate(self, epoch, ema=False, split="selection", keep=None):
        result = real(self, epoch, ema=ema, split=split, keep=keep)
        if split != "selection":
            return result
        return EpochResult(result.loss, errors[epoch], 0.0, result.images, result.seconds)

    monkeypatch.setattr(idml.training.trainer.Trainer, "validate", validate)


@pytest.mark.parametrize("val_split", [[], ["--val_split", "0.25"]])
def test_a_tie_goes_to_the_later_epoch_everywhere(data, tmp_path, monkeypatch, capsys, val_split) -> None:
    """Errors 50, 40, 40, 45: the trainer keeps epoch 2 (a tie: the later one), and so do the
    console, metrics.csv's best column, both checkpoints and idml plot."""
    fixed_selection_errors(monkeypatch, [50.0, 40.0, 40.0, 45.0])
    code, out, _ = run_cli(train_args(data, tmp_path, "run", "--epochs", "4", "--no-verbose", *val_split), capsys)
    assert code == 0
    rows = read_metrics(tmp_path / "run" / METRICS_NAME)
    assert [row["best"] for row in rows] == [1, 1, 1, 0]
    best, last = load_checkpoint(tmp_path / "run" / BEST_NAME), load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert best.best_epoch == last.best_epoch == 2 and best.epoch == 3
    if val_split:
        assert re.search(r"^Best: epoch 2, validation error 40\.00 %", out, flags=re.M)
    code, plotted, _ = run_idml(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "curves.png")], capsys)
    assert code == 0
    assert re.search(r"^run: best epoch 2, validation top-1 error 40\.00 % \(model_best\.pth\.tar\)$", plotted,
                     flags=re.M)


def test_the_moved_aside_note_gives_the_command_that_continues_the_old_run(data, tmp_path, capsys) -> None:
    args = train_args(data, tmp_path, "run", "--epochs", "1", "--no-verbose")
    assert run_cli(args, capsys)[0] == 0
    code, out, _ = run_cli(args, capsys)  # the same command again, without --resume
    assert code == 0
    moved = tmp_path / "run.1"
    note = re.search(rf"^=> .* held an earlier run: moved it to {re.escape(str(moved))} \(to continue that run: "
                     r"(idml train .*)\)$", out, flags=re.M)
    assert note, out
    command = shlex.split(note[1])
    assert command[-4:] == ["--expname", "run.1", "--resume", "auto"] and command.count("--expname") == 1
    code, out, _ = run_cli(command[2:], capsys)  # that exact command continues the moved run
    assert code == 0 and f"=> resuming {moved / CHECKPOINT_NAME} at epoch 1" in out
    assert "nothing to train" in out and not (tmp_path / "run.2").exists()


def test_save_every_steps_longer_than_an_epoch_is_refused(data, tmp_path, capsys) -> None:
    code, _, err = run_cli(train_args(data, tmp_path, "run", "--save_every_steps", "20"), capsys)  # 20 steps/epoch
    assert code == 2 and "--save_every_steps 20 does nothing here: an epoch has 20 steps" in err
    assert not (tmp_path / "run").exists()
