"""What a training run records besides its console lines: metrics.csv, TensorBoard, progress bars.

:class:`RunLog` is the trainer's one entry point: ``progress`` wraps a loader in a tqdm progress
bar (with ETA) when the run is verbose and stdout is an interactive terminal, and ``epoch_end``
appends one row per epoch to ``<run>/metrics.csv`` (and TensorBoard scalars with
``--tensorboard``). Only the main process (rank 0) writes or shows anything. Files are opened on
the first epoch, so building a trainer creates nothing.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from idml.errors import IdmlError, one_line
from idml.extras import require
from idml.files import atomic_write, free_name, refuse_link, write_text

METRICS_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


class PhaseResult(Protocol):
    """What the trainer measured in one pass over a split (training.trainer.EpochResult)."""

    loss: float
    top1_err: float
    top5_err: float
    images: int
    seconds: float


@dataclass(frozen=True)
class EpochRecord:
    """One row of metrics.csv. Errors in percent; ``epoch`` counted from 0 like the console lines.

    ``train_loss`` is the training objective (cross-entropy on the introspective logits, mixed
    under CutMix/Mixup); ``val_loss`` is the cross-entropy of the plain logits. ``epoch_seconds``
    covers training and validation; ``images_per_s`` is the training throughput of all processes.
    ``val_*`` is the selection set: the test split under the official protocol, the held-out share
    of the training set with --val_split, whose runs also fill ``test_*`` (empty otherwise).
    ``best`` is 1 when the epoch's model was written as model_best.pth.tar (the trainer's choice,
    EMA included; a tie goes to the later epoch), else 0: the last row with 1 is the best model.
    """

    epoch: int
    lr: float
    train_loss: float
    train_top1_err: float
    train_top5_err: float
    val_loss: float
    val_top1_err: float
    val_top5_err: float
    epoch_seconds: float
    images_per_s: float
    test_loss: float | None = None
    test_top1_err: float | None = None
    test_top5_err: float | None = None
    best: int | None = None

    @classmethod
    def from_results(
        cls, epoch: int, lr: float, train: PhaseResult, val: PhaseResult, world_size: int = 1,
        test: PhaseResult | None = None, best: bool | None = None,
    ) -> EpochRecord:
        throughput = train.images * world_size / train.seconds if train.seconds > 0 else 0.0
        tested = (test.loss, test.top1_err, test.top5_err) if test is not None else (None, None, None)
        seconds = train.seconds + val.seconds + (test.seconds if test is not None else 0.0)
        return cls(epoch, lr, train.loss, train.top1_err, train.top5_err, val.loss, val.top1_err, val.top5_err,
                   seconds, throughput, *tested, None if best is None else int(best))


ALL_COLUMNS = [f.name for f in fields(EpochRecord)]
#: the test columns, which only runs with --val_split have
TEST_COLUMNS = ["test_loss", "test_top1_err", "test_top5_err"]
#: columns a metrics.csv may lack: the test columns, and ``best``, which older runs did not write
OPTIONAL_COLUMNS = [*TEST_COLUMNS, "best"]
#: the columns every metrics.csv has
COLUMNS = [c for c in ALL_COLUMNS if c not in OPTIONAL_COLUMNS]


def _value(key: str, text: str | None) -> float | int | None:
    if key == "epoch" or (key == "best" and text not in (None, "")):
        return int(text or "")
    return None if text in (None, "") else float(text)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The rows of a metrics.csv as floats (``epoch`` as int); one-line error if unreadable."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not set(COLUMNS) <= set(reader.fieldnames):
                raise IdmlError(f"{path} is not an idml metrics.csv (expected the columns {', '.join(COLUMNS)})")
            names = COLUMNS + [c for c in OPTIONAL_COLUMNS if c in reader.fieldnames]
            rows = [{k: _value(k, row[k]) for k in names} for row in reader]
            if any(row[k] is None for row in rows for k in COLUMNS):
                raise ValueError("an empty cell")
            return rows
    except OSError as exc:
        raise IdmlError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError, csv.Error) as exc:  # csv.Error: e.g. a field over csv's 128 KiB limit
        raise IdmlError(f"{path} holds a malformed row ({one_line(exc)[:200]})") from exc


def read_run(run_dir: Path) -> dict[str, list[float]]:
    """A run's metrics.csv as columns; one-line errors for a missing folder, file or rows."""
    path = run_dir / METRICS_NAME
    if not run_dir.is_dir():
        raise IdmlError(f"no run folder {run_dir}{_neighbours(run_dir)}: give a folder written by idml train "
                        "(<output_dir>/<expname>), or train that run first")
    if not path.is_file():
        raise IdmlError(f"{run_dir} has no {METRICS_NAME}: give a run folder written by idml train (runs/<expname>)")
    rows = read_metrics(path)
    if not rows:
        raise IdmlError(f"{path} holds no finished epoch yet")
    return {key: [row[key] for row in rows] for key in rows[0]}


def _neighbours(run_dir: Path, shown: int = 8) -> str:
    """The run folders beside a missing one (for its message), e.g. " (runs/ holds: a, b)"."""
    parent = run_dir.parent
    try:
        runs = sorted(d.name for d in parent.iterdir() if (d / METRICS_NAME).is_file())
    except OSError:
        return ""
    if not runs:
        return f" ({parent}/ holds no run)" if parent.is_dir() else ""
    more = f", ... ({len(runs)} in all)" if len(runs) > shown else ""
    return f" ({parent}/ holds: {', '.join(runs[:shown])}{more})"


def best_row(table: dict[str, list[float]]) -> tuple[int, bool]:
    """The row of the run's best model (model_best.pth.tar), and whether metrics.csv records it.

    The ``best`` column is the trainer's own choice (EMA weights included). A metrics.csv written
    before it existed gives the trainer's rule applied to ``val_top1_err`` instead: the lowest,
    the later epoch on a tie (``False``: derived, and blind to an EMA that scored best).
    """
    marked = [i for i, flag in enumerate(table.get("best", [])) if flag == 1]
    if marked:
        return marked[-1], True
    errors = table["val_top1_err"]
    return max(i for i, err in enumerate(errors) if err == min(errors)), False


def _formatted(row: dict) -> dict[str, str]:
    """A row as text: the epoch (and ``best``) as an integer, other numbers to 6 significant digits,
    None empty."""
    return {k: "" if v is None else str(v) if k in ("epoch", "best") else f"{v:.6g}" for k, v in row.items()}


def metrics_history(path: Path, first_epoch: int) -> tuple[list[dict], str | None]:
    """The rows of the run's ``metrics.csv`` that a run starting at ``first_epoch`` continues, and a
    note when the file was set aside.

    Nothing that was there is lost: a file idml cannot read (a comment line, a field over csv's
    128 KiB limit, a foreign file) is renamed to ``metrics.csv.bad-<n>``; a file that holds rows of
    the epochs this run trains again (it resumes from an earlier checkpoint) is renamed to
    ``metrics.csv.old-<n>`` and the rows before ``first_epoch`` are written back at once. Either way
    the note says so. Called once, before the run writes anything else (``config.yaml`` included).
    """
    if not os.path.lexists(path):
        return [], None
    refuse_link(path)
    try:
        rows = read_metrics(path)
    except IdmlError as exc:
        aside = free_name(path, "bad-")
        path.rename(aside)
        return [], f"{path} could not be read ({exc}): kept as {aside}; a new {path.name} starts now"
    kept = [row for row in rows if row["epoch"] < first_epoch]
    if len(kept) == len(rows):
        return kept, None
    aside = free_name(path, "old-")
    if kept:  # a second name for the file first: a kill before the rewrite below leaves it whole
        keep_copy(path, aside)
        _write_rows(path, kept, [c for c in ALL_COLUMNS if c in kept[0]])
    else:
        path.rename(aside)
    redone = sorted({row["epoch"] for row in rows} - {row["epoch"] for row in kept})
    return kept, (f"{path} held epoch(s) {_epochs(redone)} that this run trains again from epoch {first_epoch}: "
                  f"the whole file is kept as {aside}")


def keep_copy(path: Path, copy: Path) -> None:
    """``copy`` becomes another name of the file ``path`` (a hard link), or a copy of it where the
    file system has no hard links."""
    try:
        os.link(path, copy)
    except OSError:
        data = path.read_bytes()
        atomic_write(copy, lambda fh: fh.write(data))


def _epochs(epochs: list[int]) -> str:
    return f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 2 else ", ".join(map(str, epochs))


def _write_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    """``rows`` under ``columns`` as ``path``, whole and atomically (see :func:`idml.files.atomic_write`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(_formatted(row) for row in rows)
    write_text(path, out.getvalue())


class MetricsCSV:
    """``metrics.csv``: the rows a run continues (:func:`metrics_history`), then one row per epoch.

    The file is small (one row per epoch) and rewritten whole, atomically, for each new row: a
    kill while it is written leaves the previous version, never a truncated or emptied file.
    """

    def __init__(self, path: Path, history: list[dict], with_test: bool = False) -> None:
        self.path = path
        self.columns = ALL_COLUMNS if with_test else [c for c in ALL_COLUMNS if c not in TEST_COLUMNS]
        self.rows = list(history)

    def write(self, record: EpochRecord) -> None:
        self.rows.append(asdict(record))
        _write_rows(self.path, self.rows, self.columns)

    def close(self) -> None:
        """Nothing is held open between rows."""


class TensorBoardLog:
    """The same numbers as TensorBoard scalars, under ``<run>/tensorboard``."""

    def __init__(self, log_dir: Path) -> None:
        require("tensorboard", "--tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        refuse_link(log_dir)
        if os.path.lexists(log_dir) and not log_dir.is_dir():
            raise IdmlError(f"cannot write TensorBoard events to {log_dir}: it is not a folder; remove it")
        # TensorBoard opens its event file with a plain open(), which follows links: a random part in
        # the name makes it one that nobody can have planted a link under in advance
        self.writer = SummaryWriter(log_dir=str(log_dir), filename_suffix=f".{secrets.token_hex(8)}")

    def write(self, record: EpochRecord) -> None:
        for name, value in asdict(record).items():
            if name not in ("epoch", "best") and value is not None:
                split, _, metric = name.partition("_")
                tag = f"{split}/{metric}" if split in ("train", "val", "test") else f"run/{name}"
                self.writer.add_scalar(tag, value, record.epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class RunLog:
    """Per-run logging for :class:`idml.training.trainer.Trainer` (a no-op on processes other than rank 0)."""

    def __init__(self, run_dir: str | Path, printer: Callable[[str], None] = print, *, is_main: bool = True,
                 verbose: bool = True, tensorboard: bool = False, world_size: int = 1) -> None:
        self.run_dir = Path(run_dir)
        self.printer = printer
        self.is_main = is_main
        self.world_size = world_size
        self.tensorboard = tensorboard
        #: progress bars replace the per-step lines on an interactive terminal
        self.interactive = is_main and verbose and sys.stdout.isatty()
        self._bar: tqdm | None = None
        self._sinks: list[MetricsCSV | TensorBoardLog] | None = None
        #: the rows of metrics.csv this run continues (None: not read yet)
        self.history: list[dict] | None = None

    def take_history(self, first_epoch: int) -> None:
        """Read the run folder's metrics.csv for a run starting at ``first_epoch`` (rank 0 only), setting
        aside what it cannot continue and saying so (:func:`metrics_history`). Called before the run
        writes anything, and at the latest when the first epoch ends."""
        if not self.is_main:
            return
        self.history, note = metrics_history(self.run_dir / METRICS_NAME, first_epoch)
        if note:
            self.printer(f"=> note: {note}")

    def progress(self, loader: Iterable, description: str, total: int, initial: int = 0) -> Iterable:
        """``loader`` itself, or wrapped in a tqdm progress bar (steps/s and ETA) when interactive.

        ``total`` is the number of steps of the whole pass, ``initial`` how many were done before
        (a run resumed inside an epoch).
        """
        if not self.interactive:
            return loader
        self._bar = tqdm(loader, desc=description, total=total, initial=initial, leave=False, file=sys.stdout,
                         dynamic_ncols=True, unit="batch")
        return self._bar

    def end_progress(self) -> None:
        """Close the progress bar of a pass that stops early (a stop signal)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def step(self, line: str, **running: float) -> None:
        """A verbose per-step report: the full line, or the running averages on the progress bar."""
        if self._bar is None:
            self.printer(line)
        else:
            self._bar.set_postfix({name: f"{value:.4g}" for name, value in running.items()}, refresh=False)

    def _open(self, first_epoch: int, with_test: bool) -> list[MetricsCSV | TensorBoardLog]:
        if self.history is None:
            self.take_history(first_epoch)
        sinks: list[MetricsCSV | TensorBoardLog] = [MetricsCSV(self.run_dir / METRICS_NAME, self.history or [],
                                                               with_test)]
        if self.tensorboard:
            sinks.append(TensorBoardLog(self.run_dir / TENSORBOARD_DIR))
        return sinks

    def epoch_end(self, epoch: int, lr: float, train: PhaseResult, val: PhaseResult,
                  test: PhaseResult | None = None, best: bool | None = None) -> None:
        """Record one finished epoch (called once per epoch by the trainer; ``test`` with --val_split;
        ``best``: whether its model became model_best.pth.tar)."""
        if not self.is_main:
            return
        if self._sinks is None:
            self._sinks = self._open(epoch, test is not None)
        record = EpochRecord.from_results(epoch, lr, train, val, self.world_size, test, best)
        for sink in self._sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self._sinks or []:
            sink.close()
        self._sinks = None
