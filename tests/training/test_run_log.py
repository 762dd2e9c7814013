"""metrics.csv, TensorBoard and the progress bar of idml.training.run_log, with made-up epoch results."""

import csv
import re
import sys
from dataclasses import dataclass

import pytest
from tqdm import tqdm

import idml.config
import idml.training.run_log
from idml.cli import main as cli_main
from idml.errors import ConfigError
from idml.extras import installed
from idml.training.preflight import preflight
from idml.training.run_log import COLUMNS, METRICS_NAME, RunLog, read_metrics


@dataclass
class Phase:
    loss: float
    top1_err: float
    top5_err: float
    images: int
    seconds: float


TRAIN = Phase(1.5, 40.0, 10.0, images=1000, seconds=4.0)
VAL = Phase(1.25, 35.0, 8.0, images=200, seconds=1.0)


def rows(run_dir):
    with (run_dir / METRICS_NAME).open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_metrics_csv_columns_and_values(tmp_path):
    log = RunLog(tmp_path, is_main=True, verbose=False, world_size=2)
    log.epoch_end(0, 0.1, TRAIN, VAL, best=True)
    log.epoch_end(1, 0.01, TRAIN, VAL, best=False)
    log.close()
    table = rows(tmp_path)
    assert list(table[0]) == [*COLUMNS, "best"] and COLUMNS == [
        "epoch", "lr", "train_loss", "train_top1_err", "train_top5_err", "val_loss", "val_top1_err",
        "val_top5_err", "epoch_seconds", "images_per_s",
    ]
    assert [r["epoch"] for r in table] == ["0", "1"] and table[1]["lr"] == "0.01"
    assert [r["best"] for r in table] == ["1", "0"]  # the trainer's choice of model_best, row by row
    first = read_metrics(tmp_path / METRICS_NAME)[0]
    assert first["train_loss"] == 1.5 and first["val_top1_err"] == 35.0 and first["val_top5_err"] == 8.0
    assert first["epoch_seconds"] == 5.0  # training + validation
    assert first["images_per_s"] == 500.0  # 1000 images on each of 2 processes in 4 s


def test_fresh_run_restarts_the_file_and_resumed_run_continues_it(tmp_path):
    log = RunLog(tmp_path, verbose=False)
    for epoch in range(3):
        log.epoch_end(epoch, 0.1, TRAIN, VAL)
    log.close()
    resumed = RunLog(tmp_path, verbose=False)  # resumed at epoch 2: epoch 2 is redone
    resumed.epoch_end(2, 0.05, TRAIN, VAL)
    resumed.close()
    assert [(r["epoch"], r["lr"]) for r in rows(tmp_path)] == [("0", "0.1"), ("1", "0.1"), ("2", "0.05")]
    fresh = RunLog(tmp_path, verbose=False)
    fresh.epoch_end(0, 0.2, TRAIN, VAL)
    fresh.close()
    assert [r["lr"] for r in rows(tmp_path)] == ["0.2"]


def test_only_rank_zero_writes(tmp_path):
    log = RunLog(tmp_path, is_main=False, tensorboard=True)
    log.epoch_end(0, 0.1, TRAIN, VAL)
    log.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not installed("tensorboard"), reason="tensorboard not installed")
def test_tensorboard_event_files(tmp_path):
    log = RunLog(tmp_path, verbose=False, tensorboard=True)
    log.epoch_end(0, 0.1, TRAIN, VAL)
    log.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_missing_tensorboard_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    cfg = idml.config.parse_train_args(["--tensorboard"])  # the settings alone are valid...
    with pytest.raises(ConfigError, match=re.escape("--tensorboard needs idml[tensorboard]")):
        preflight(cfg)  # ...but this machine cannot honour them
    assert cli_main(["train", "--tensorboard", "--dataset", "digits", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorboard" in err
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_only_on_an_interactive_verbose_terminal(monkeypatch, tmp_path):
    printed = []
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    plain = RunLog(tmp_path, printer=printed.append, verbose=True)
    loader = [1, 2, 3]
    assert plain.progress(loader, "Epoch 0", 3) is loader
    plain.step("Epoch: [0/1][0/3] ...", loss=1.0)
    assert printed == ["Epoch: [0/1][0/3] ..."]

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert RunLog(tmp_path, verbose=False).progress(loader, "Epoch 0", 3) is loader  # --no-verbose: no bar
    interactive = RunLog(tmp_path, printer=printed.append, verbose=True)
    bar = interactive.progress(iter(loader), "Epoch 0", 3)
    assert isinstance(bar, tqdm) and bar.total == 3
    assert list(bar) == loader
    interactive.step("Epoch: [0/1][1/3] ...", loss=0.5)
    assert len(printed) == 1  # the line went to the bar, not to the console
