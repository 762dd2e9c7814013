"""No host read per training step: the printed lines are the only reads, built on rank 0 only, and on a
GPU they wait for no kernel (their numbers arrive by an asynchronous copy)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from idml.config import parse_train_args
from idml.device.runtime import Runtime
from idml.training.host_reads import DeferredLines
from idml.training.setup import build_trainer
from runs import STEPS_PER_EPOCH, one_thread, tiny_cifar, train_args  # noqa: F401 - autouse fixture

CPU = torch.device("cpu")


@pytest.fixture
def reads(monkeypatch) -> Counter:
    """Counts Tensor.item() and Tensor.tolist() calls (what reads a device's values on the host)."""
    counts: Counter = Counter()
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts


def epoch_reads(tmp_path: Path, reads: Counter, rank: int, print_freq: int, capsys) -> tuple[int, int]:
    """(host reads, printed step lines) of one training epoch of 20 steps on a process of this rank."""
    cfg = parse_train_args(train_args(tiny_cifar(tmp_path / "data"), tmp_path, f"r{rank}", "--epochs", "1",
                                      "--print-freq", str(print_freq)))
    trainer = build_trainer(cfg, Runtime(CPU, None, False, rank=rank))
    capsys.readouterr()
    reads.clear()
    trainer.train_epoch(0)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch: [0/1]")]
    return sum(reads.values()), len(lines)


EPOCH_END_READS = 2  # the non-finite-loss check and the epoch's averages, once per epoch


def test_other_ranks_read_nothing_per_step(tmp_path: Path, reads: Counter, capsys) -> None:
    total, lines = epoch_reads(tmp_path, reads, rank=1, print_freq=1, capsys=capsys)
    assert lines == 0 and total == EPOCH_END_READS  # 20 steps, none of them read anything


@pytest.mark.parametrize(("print_freq", "expected_lines"), [(1, STEPS_PER_EPOCH), (5, 4)])
def test_rank_0_reads_once_per_printed_line_only(tmp_path: Path, reads: Counter, capsys, print_freq: int,
                                                 expected_lines: int) -> None:
    total, lines = epoch_reads(tmp_path, reads, rank=0, print_freq=print_freq, capsys=capsys)
    assert lines == expected_lines and total == lines + EPOCH_END_READS


class FakeEvent:
    def __init__(self) -> None:
        self.done = False
        self.waited = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = self.done = True


def test_lines_wait_for_their_copies_without_blocking_and_keep_their_order(monkeypatch) -> None:
    events: list[FakeEvent] = []

    def start_copy(values: torch.Tensor) -> tuple[FakeEvent, torch.Tensor]:
        events.append(FakeEvent())
        return events[-1], values.clone()
    monkeypatch.setattr(DeferredLines, "_start_copy", staticmethod(start_copy))
    lines = DeferredLines(torch.device("cuda", 0))
    printed: list[list[float]] = []
    for k in range(3):
        lines.add(torch.tensor([float(k)]), printed.append)
    assert printed == []  # no copy has finished: nothing printed, nothing waited for
    events[1].done = True
    lines.poll()
    assert printed == []  # the second is ready, but the first is not: order is kept
    events[0].done = True
    lines.poll()
    assert printed == [[0.0], [1.0]] and not any(e.waited for e in events)
    lines.flush()
    assert printed == [[0.0], [1.0], [2.0]] and events[2].waited and not lines.pending


def test_on_the_cpu_a_line_is_printed_at_once() -> None:
    printed: list[list[float]] = []
    DeferredLines(CPU).add(torch.tensor([1.0, 2.0]), printed.append)
    assert printed == [[1.0, 2.0]]
