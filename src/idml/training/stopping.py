"""Stopping cleanly on a signal or at a set time, and failing together, in step with every DDP rank.

A signal only sets a flag; the trainer looks at it between steps, so the step in flight finishes,
a checkpoint is written and the run exits with 128 + the signal's number (143 for SIGTERM, 130
for SIGINT, 138 for SIGUSR1): the conventional "stopped by a signal" codes, so that a job scheduler
or a shell ``&&`` chain never mistakes an interrupted run for a finished one. Besides SIGTERM and
SIGINT, ``--stop_signal`` (SIGUSR1 by default: what ``sbatch --signal=B:USR1@120`` sends before a
time limit) stops a run the same way. ``--stop_after HOURS`` is a clock for schedulers that warn
with no signal: past it, the run stops as if ``--stop_signal`` had arrived, with its exit status.

Under DDP every rank must stop at the same step, and an error on one rank (an unreadable image in
its shard) must stop all of them instead of leaving them waiting in a collective. So before each
step the ranks agree, in one small all-reduce over a CPU (Gloo) group, on "did anyone fail to get
its batch?", "did anyone receive a stop signal?" and "has anyone a batch left?".

The last question keeps the ranks in step when their shards differ in length (validation shards
are ``range(rank, n, world)``: one rank can have one batch more): a rank whose loader is done
keeps taking part in the agreement, without a batch, until every rank is done, so no rank waits
for an agreement that another rank never joins.

The agreement is off the critical path: the all-reduce for the next batch is started (``async_op``)
before the current batch is handed to the step and waited for after it, so its network round trip
overlaps the step's work instead of adding to it. So under DDP a stop signal that arrives during
a step is acted on after the *next* step (its agreement was already under way); a single process
stops right after the step in flight.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from idml.device.runtime import Runtime
from idml.errors import IdmlError
from idml.training.distributed import control_group, share_failure

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: torchrun forwards the signal it receives to its workers, which may already have it from the
#: terminal: a repeat within this many seconds is the same request; a later one aborts at once.
REPEAT_GRACE_S = 2.0
#: when this module was first imported: early in ``idml train``, the start ``--stop_after`` counts from
STARTED = time.monotonic()


class StopRequest(NamedTuple):
    """Yielded by :meth:`StopControl.batches` instead of a batch: some rank received ``signum``, or
    ``--stop_after`` ran out (``clock``; then ``signum`` is the ``--stop_signal`` whose exit status it takes)."""

    signum: int
    clock: bool = False


class StopControl:
    """Signal handling plus the per-step agreement of all ranks.

    ``stop_signal`` is the scheduler's warning signal (``--stop_signal``), handled besides SIGTERM
    and SIGINT; ``stop_after_h`` (``--stop_after``, 0 = never) the hours after which the run stops by itself.
    """

    def __init__(self, rt: Runtime, stop_signal: str = "USR1", stop_after_h: float = 0.0) -> None:
        self.rt = rt
        self.scheduler_signal = int(getattr(signal, f"SIG{stop_signal}"))
        self.stop_after_s = stop_after_h * 3600 if stop_after_h > 0 else math.inf
        self.signum = 0  # received by this process
        self._first_signal_at = 0.0

    def _on_signal(self, signum: int, _frame: object) -> None:
        """Note the first stop request. A repeat of SIGINT or SIGTERM more than REPEAT_GRACE_S later
        aborts at once (someone insists); the scheduler's signal never does: launchers forward it to
        workers that already have it, and a scheduler escalates with SIGKILL by itself."""
        repeat = self.signum and time.monotonic() - self._first_signal_at > REPEAT_GRACE_S
        if repeat and signum != self.scheduler_signal:
            raise KeyboardInterrupt  # asked twice: stop now, without the checkpoint
        if not self.signum:
            self.signum, self._first_signal_at = signum, time.monotonic()

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Turn SIGTERM, SIGINT and the scheduler's signal into a stop request while the block runs
        (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = dict.fromkeys([*STOP_SIGNALS, signal.Signals(self.scheduler_signal)])
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                if signal.getsignal(sig) == self._on_signal:  # not replaced meanwhile (see distributed)
                    signal.signal(sig, handler)

    def _clock_ran_out(self) -> bool:
        return time.monotonic() - STARTED >= self.stop_after_s

    def _flags(self, failed: bool, has_batch: bool = False) -> Tensor:
        return torch.tensor([int(failed), self.signum, int(has_batch), int(self._clock_ran_out())])

    def _start_agreement(self, flags: Tensor) -> dist.Work | None:
        """Start the all-ranks MAX of ``flags`` (in place); None when there is nothing to wait for."""
        if not self.rt.distributed:
            return None
        return dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=control_group(), async_op=True)

    def _agreed(self, flags: Tensor, work: dist.Work | None) -> tuple[bool, StopRequest | None, bool]:
        """(whether any rank failed; the stop any rank asked for, or None; whether any rank has a batch)."""
        if work is not None:
            work.wait()
        else:  # one process: no round trip to hide, so a stop asked for during the step counts now
            flags[1] = max(int(flags[1]), self.signum)
            flags[3] = max(int(flags[3]), int(self._clock_ran_out()))
        signum, clock = int(flags[1]), bool(flags[3])
        stop = StopRequest(signum) if signum else StopRequest(self.scheduler_signal, clock=True) if clock else None
        return bool(flags[0]), stop, bool(flags[2])

    def stop_requested(self) -> StopRequest | None:
        """The stop some rank asked for (a signal, or the clock), agreed over all ranks; None to go on."""
        flags = self._flags(False)
        return self._agreed(flags, self._start_agreement(flags))[1]

    def batches(self, loader: Iterable[T], stoppable: bool = True) -> Iterator[T | StopRequest]:
        """``loader``'s batches, agreed on by every rank before each one is used.

        An error while fetching a batch (a corrupt image) stops every rank with the same message.
        When some rank received a stop signal (or its clock ran out) and ``stoppable``, a
        :class:`StopRequest` is yielded in place of the next batch and the stream ends: the caller
        checkpoints and stops. Every
        rank takes part in as many agreements as the rank with the most batches, so shards of
        unequal length end together (a rank with fewer batches yields fewer).
        """
        iterator = iter(loader)
        pending = self._fetch(iterator)
        while True:
            batch, failure, flags, work = pending
            failed, stop, anyone_has_batch = self._agreed(flags, work)
            if failed:
                share_failure(failure, self.rt)
            if stop is not None and stoppable:
                yield stop
                return
            if not anyone_has_batch:
                return
            # the next agreement travels while the caller runs its step on this batch
            pending = self._fetch(iterator) if batch is not _DONE else self._done_round()
            if batch is not _DONE:
                yield batch

    def _fetch(self, iterator: Iterator[T]) -> _Round:
        """Fetch the next batch (or note its failure or the end) and start agreeing on it."""
        failure: IdmlError | None = None
        batch: object = _DONE
        try:
            batch = next(iterator)
        except StopIteration:
            return self._done_round()
        except IdmlError as exc:
            failure = exc
        flags = self._flags(failure is not None, has_batch=failure is None)
        return _Round(batch, failure, flags, self._start_agreement(flags))

    def _done_round(self) -> _Round:
        """This rank's loader is done: it still joins the agreement until every rank is done."""
        flags = self._flags(False)
        return _Round(_DONE, None, flags, self._start_agreement(flags))


#: stands for "no batch" in a round of :meth:`StopControl.batches` (this rank's loader is done)
_DONE = object()


class _Round(NamedTuple):
    """One batch (or ``_DONE``), its fetch error, and the agreement on it in flight."""

    batch: object
    failure: IdmlError | None
    flags: Tensor
    work: dist.Work | None
