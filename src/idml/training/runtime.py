"""Where and how a run computes: device, mixed precision, memory format, process rank."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from idml.errors import ConfigError

CPUINFO = Path("/proc/cpuinfo")
#: CPU flags of native bfloat16 matrix instructions (Linux /proc/cpuinfo spelling)
FAST_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU executes bfloat16 matrix work natively (AVX-512 BF16 or AMX).

    Elsewhere (AVX2 machines, for instance) bfloat16 is emulated and slower than float32.
    """
    try:
        flags = set(CPUINFO.read_text(encoding="utf-8").split())
    except OSError:
        return False
    return bool(flags & FAST_BF16_FLAGS)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was given but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device`` (None = full float32)."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA GPU; use --amp bf16 or off on the CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A working scaler for fp16; a disabled one (a no-op) otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def describe(self) -> str:
        precision = {None: "float32", torch.bfloat16: "bfloat16 autocast", torch.float16: "float16 autocast"}
        memory = "channels_last" if self.channels_last else "NCHW"
        where = f"{self.device}" + (f", rank {self.rank}/{self.world_size}" if self.distributed else "")
        return f"{where}, {precision[self.amp_dtype]}, {memory}"


def build_runtime(device: str, amp: str, channels_last: bool | None) -> Runtime:
    dev = resolve_device(device)
    if dev.type == "cuda":
        # Inputs keep one shape for a whole run: let cuDNN time its convolution algorithms once.
        torch.backends.cudnn.benchmark = True
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    memory = dev.type == "cuda" if channels_last is None else channels_last
    return Runtime(dev, resolve_amp(amp, dev), memory, rank, world)
