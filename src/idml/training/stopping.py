"""Stopping cleanly on SIGTERM/SIGINT, and failing together, in step with every DDP rank.

A signal only sets a flag; the trainer looks at it between steps, so the step in flight finishes,
a checkpoint is written and the run exits with 128 + the signal's number (143 for SIGTERM, 130
for SIGINT): the conventional "stopped by a signal" codes, so that a job scheduler or a shell
``&&`` chain never mistakes an interrupted run for a finished one.

Under DDP every rank must stop at the same step, and an error on one rank (an unreadable image in
its shard) must stop all of them instead of leaving them waiting in a collective. So before each
step the ranks agree, in one small all-reduce over a CPU (Gloo) group, on "did anyone fail to get
its batch?" and "did anyone receive a stop signal?".
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist

from idml.errors import IdmlError
from idml.training.distributed import control_group, share_failure
from idml.training.runtime import Runtime

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: torchrun forwards the signal it receives to its workers, which may already have it from the
#: terminal: a repeat within this many seconds is the same request; a later one aborts at once.
REPEAT_GRACE_S = 2.0


class StopRequest(NamedTuple):
    """Yielded by :meth:`StopControl.batches` instead of a batch: some rank received ``signum``."""

    signum: int


class StopControl:
    """Signal handling plus the per-step agreement of all ranks."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.signum = 0  # received by this process
        self._first_signal_at = 0.0

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.signum and time.monotonic() - self._first_signal_at > REPEAT_GRACE_S:
            raise KeyboardInterrupt  # asked twice: stop now, without the checkpoint
        if not self.signum:
            self.signum, self._first_signal_at = signum, time.monotonic()

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Turn SIGTERM/SIGINT into a stop request while the block runs (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                if signal.getsignal(sig) == self._on_signal:  # not replaced meanwhile (see distributed)
                    signal.signal(sig, handler)

    def _agree(self, failed: bool) -> tuple[bool, int]:
        """(whether any rank failed; the stop signal any rank received, or 0)."""
        flags = torch.tensor([int(failed), self.signum])
        if self.rt.distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=control_group())
        return bool(flags[0]), int(flags[1])

    def stop_signal(self) -> int:
        """The signal that asked this run to stop (agreed over all ranks), or 0."""
        return self._agree(False)[1]

    def batches(self, loader: Iterable[T], stoppable: bool = True) -> Iterator[T | StopRequest]:
        """``loader``'s batches, agreed on by every rank before each one is used.

        An error while fetching a batch (a corrupt image) stops every rank with the same message.
        When some rank received a stop signal and ``stoppable``, a :class:`StopRequest` is yielded
        in place of the next batch and the stream ends: the caller checkpoints and stops.
        """
        iterator = iter(loader)
        while True:
            failure: IdmlError | None = None
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except IdmlError as exc:
                failure = exc
            failed, signum = self._agree(failure is not None)
            if failed:
                share_failure(failure, self.rt)
            if signum and stoppable:
                yield StopRequest(signum)
                return
            yield batch
