"""Where and how a run computes: device, mixed precision, memory format, process rank.

Training, ``idml eval``, ``idml predict`` and ``idml bench`` all build their :class:`Runtime`
here, so they run with the same device settings (autocast dtype, memory format, cuDNN autotuning).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from idml.errors import ConfigError

CPUINFO = Path("/proc/cpuinfo")
#: CPU flags of native bfloat16 matrix instructions (Linux /proc/cpuinfo spelling)
FAST_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: CUDA compute capability from which bfloat16 runs natively (Ampere); older GPUs emulate it slowly
BF16_CAPABILITY = (8, 0)
#: cuBLAS needs this workspace setting for reproducible results under --deterministic
CUBLAS_DETERMINISTIC = ":4096:8"
#: oneDNN's primitive cache holds 1024 convolution/reorder kernels by default; one training step of
#: PyramidNet-200 (bottleneck) needs about 1,400 in bfloat16 and re-created them every step
#: (counted with ONEDNN_VERBOSE=profile_create). Used unless the user set the variable.
ONEDNN_CACHE_CAPACITY = "8192"


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


def mps_available() -> bool:
    """True on Apple silicon with a PyTorch built for Metal (MPS)."""
    return torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """``--device``: auto = CUDA, else Apple's MPS, else the CPU; a named accelerator must be visible."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was given but no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not mps_available():
        raise ConfigError("--device mps was given but no Apple MPS device is available; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    if name == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def cuda_has_fast_bf16(device: torch.device) -> bool:
    """bfloat16 runs natively from compute capability 8.0 (Ampere) on.

    ``torch.cuda.is_bf16_supported()`` also counts emulation (True on a T4, where bfloat16
    convolutions fall back to slow kernels) and allocates on the current device: asking for the
    capability of ``device`` does neither.
    """
    return torch.cuda.get_device_capability(device) >= BF16_CAPABILITY


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device`` (None = full float32).

    auto: bfloat16 on CUDA GPUs from Ampere on, float16 on older ones and on Apple's MPS (its
    native half type), bfloat16 on CPUs with native bfloat16 instructions, else float32.
    """
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type not in ("cuda", "mps"):
            raise ConfigError("--amp fp16 needs a CUDA GPU or Apple's MPS; use --amp bf16 or off on the CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_fast_bf16(device) else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of running sums (losses, hits, image counts): float64, except on MPS, which has no
    float64 (float32 counts images exactly up to 2**24 per epoch and rank)."""
    return torch.float32 if device.type == "mps" else torch.float64


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (for timing); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


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

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass (a no-op in float32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on this device, in this run's memory format (converted, in place, if it was
        placed in the other one before)."""
        return model.to(self.device).to(memory_format=self.memory_format)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on this device, copied without waiting where it can be (pinned memory to a GPU)."""
        return tensor.to(self.device, non_blocking=True)

    def formatted(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images (N x C x H x W, on this device) in this run's memory format: what the
        network receives, after augmentation and normalisation."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    @property
    def fused_optimizer(self) -> bool:
        """Use the fused (one-kernel, and with fp16 sync-free) SGD: on CUDA, where it is well tested."""
        return self.device.type == "cuda"

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A working scaler for fp16; a disabled one (a no-op) otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def describe(self) -> str:
        precision = {None: "float32", torch.bfloat16: "bfloat16 autocast", torch.float16: "float16 autocast"}
        memory = "channels_last" if self.channels_last else "NCHW"
        where = f"{self.device}" + (f", rank {self.rank}/{self.world_size}" if self.distributed else "")
        return f"{where}, {precision[self.amp_dtype]}, {memory}"


def set_determinism(device: torch.device, deterministic: bool) -> None:
    """``--deterministic``: reproducible kernels (bit-exact resume on a GPU) at some speed cost.

    By default cuDNN times its convolution algorithms once (``cudnn.benchmark``): inputs keep one
    shape for a whole run, so this is faster, but the chosen algorithm, and so the last bits of
    the results, can differ between two runs. Operators without a deterministic kernel warn.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)  # before cuBLAS starts
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def default_channels_last(device: torch.device, amp_dtype: torch.dtype | None,
                          network_prefers_channels_last: Callable[[], bool] | None) -> bool:
    """``--channels_last`` when not given, before any timing (benchmarks/RESULTS.md).

    CUDA: channels_last. On the CPU a training run replaces this by timing both formats
    (:mod:`idml.training.format_trial`); this rule remains for what is not timed (checkpoints that
    record no format, ``IDML_MEMORY_FORMAT_TRIAL=off``, a run where no trial step could run). CPU
    in float32 (``--amp off``, or ``auto`` without fast bfloat16): channels_last (faster with
    AVX-512 code and with AVX2 code emulated, but 0.87-0.91x of NCHW on a real AVX2-only EPYC,
    issue 20: hence the timing). CPU under bfloat16: what ``network_prefers_channels_last()`` says
    (:func:`idml.models.layout.channels_last_under_bf16`), or channels_last when no network is
    given. Apple MPS: NCHW (not measured).
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return amp_dtype is None or network_prefers_channels_last is None or network_prefers_channels_last()


def build_runtime(device: str, amp: str, channels_last: bool | None, deterministic: bool = False,
                  network_prefers_channels_last: Callable[[], bool] | None = None) -> Runtime:
    """The runtime of this process. On CUDA the process's GPU is made current first, so that nothing
    (the precision check included) opens a context on GPU 0 from every rank of a multi-GPU job.

    ``network_prefers_channels_last`` decides the memory format under bfloat16 on the CPU when
    ``channels_last`` is None (see :func:`default_channels_last`); it is only called then."""
    dev = resolve_device(device)
    set_determinism(dev, deterministic)
    # read by oneDNN when it first builds a kernel, so it must be set before the model first runs
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    amp_dtype = resolve_amp(amp, dev)
    if channels_last is None:
        channels_last = default_channels_last(dev, amp_dtype, network_prefers_channels_last)
    return Runtime(dev, amp_dtype, channels_last, rank, world)
