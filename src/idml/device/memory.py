"""Peak memory of one block of work (a training step), on a CUDA device, Apple's MPS or the CPU.

CUDA: ``torch.cuda.max_memory_allocated`` above the level at the start. MPS keeps no peak
statistic: what is reported there is ``torch.mps.current_allocated_memory`` after the step minus
before it, labelled as such (not a peak). CPU: PyTorch keeps no
allocation statistics there, so the process's resident set is used: freed heap memory is first
handed back to the system (glibc ``malloc_trim``) and the peak-RSS mark (``VmHWM``) is reset
through ``/proc/self/clear_refs``; the step's peak is ``VmHWM`` minus the RSS at the start.
Where either is unavailable the result is labelled as the lifetime peak (``ru_maxrss``) instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} missing from {_STATUS}")


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    function = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return function


def _can_reset_cpu_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5", encoding="ascii")
        _status_kib("VmHWM")
    except OSError:
        return False
    return _malloc_trim() is not None


class PeakMemory:
    """``start()`` ... ``stop()`` -> bytes allocated at the peak above the level at ``start()``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.precise_cpu = device.type == "cpu" and _can_reset_cpu_peak()
        self._base = 0

    @property
    def source(self) -> str:
        if self.device.type == "cuda":
            return "CUDA max_memory_allocated during the step"
        if self.device.type == "mps":
            return ("MPS current_allocated_memory after the step minus before it (MPS keeps no peak statistic: "
                    "not a peak, a lower bound)")
        if self.precise_cpu:
            return "CPU peak RSS growth during the step (VmHWM reset via /proc/self/clear_refs after malloc_trim)"
        return "CPU lifetime peak RSS (ru_maxrss) minus RSS at the start of the step: a lower bound"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return
        if self.device.type == "mps":
            torch.mps.synchronize()
            self._base = torch.mps.current_allocated_memory()
            return
        if self.precise_cpu:
            _malloc_trim()(0)
            _CLEAR_REFS.write_text("5", encoding="ascii")
        self._base = _status_kib("VmRSS") * 1024 if _STATUS.exists() else 0

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._base
        if self.device.type == "mps":
            torch.mps.synchronize()
            return max(torch.mps.current_allocated_memory() - self._base, 0)
        if self.precise_cpu:
            peak = _status_kib("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(peak - self._base, 0)


def tensor_bytes(tensors: Iterable[Tensor | None]) -> int:
    """Bytes held by distinct tensors (``None`` entries ignored)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, Tensor):
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def training_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters, gradients, buffers and optimiser state: what a training run keeps between steps."""
    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values()]
    return tensor_bytes([*params, *(p.grad for p in params), *model.buffers(), *state])


def device_memory_bytes(device: torch.device) -> int | None:
    """The memory of ``device``: the GPU's, or this machine's RAM (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
