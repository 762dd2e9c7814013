"""Reading a few numbers back from the GPU without making the host wait for it.

A console line needs the meter's sums on the host. Reading them with ``.tolist()`` waits for every
kernel queued so far: with the official ``--print-freq 1``, one stall per step. Instead, a line's
numbers are copied into pinned host memory with ``non_blocking=True`` (the copy is queued behind
the step's kernels), a CUDA event marks its end, and the line is printed once the event has
passed, which is checked without blocking at every later step. Lines come out in order, with the
same content, a step or two late; :meth:`DeferredLines.flush` (at the end of an epoch, where the
run waits for the device anyway) prints the rest.

On the CPU there is nothing to wait for, and on Apple's MPS a read is cheap next to its step:
there the line is printed at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Emit = Callable[[list[float]], None]


class DeferredLines:
    """``add(values, emit)``: call ``emit(values.tolist())`` as soon as the values reached the host."""

    def __init__(self, device: torch.device) -> None:
        self.asynchronous = device.type == "cuda"
        self.pending: deque[tuple[Any, Tensor, Emit]] = deque()

    @staticmethod
    def _start_copy(values: Tensor) -> tuple[Any, Tensor]:
        """Queue the device-to-host copy; returns (an event marking its end, the host tensor)."""
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return event, host

    def add(self, values: Tensor, emit: Emit) -> None:
        if not self.asynchronous:
            emit(values.tolist())
            return
        event, host = self._start_copy(values.detach())
        self.pending.append((event, host, emit))
        self.poll()

    def poll(self) -> None:
        """Emit the lines whose copies have finished (never waits)."""
        while self.pending and self.pending[0][0].query():
            _, host, emit = self.pending.popleft()
            emit(host.tolist())

    def flush(self) -> None:
        """Emit every pending line, waiting for the copies."""
        while self.pending:
            event, host, emit = self.pending.popleft()
            event.synchronize()
            emit(host.tolist())
