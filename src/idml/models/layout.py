"""Whether a network trains faster in channels_last under bfloat16 on the CPU: its BatchNorm widths decide.

Under bfloat16 autocast on an AVX-512 BF16 CPU, oneDNN's convolutions run faster in channels_last
(nothing is reordered between NCHW and oneDNN's blocked layouts), while PyTorch's channels-last
BatchNorm kernel is slower than its NCHW one: by 1.2-1.7x when the channel count is a multiple of
16, and by 5-11x at 17, 20, 24, 31 and 33 channels, 2-2.5x at 40 and 65
(``benchmarks/batchnorm_widths.py``). Wider layers also do more convolution
work per BatchNorm element, so there the faster convolutions win. Measured on whole networks
(``benchmarks/RESULTS.md``, one CPU, PyTorch 2.14): networks whose BatchNorm work lies mostly on
layers narrower than 32 channels with widths that are not multiples of 16 (PyramidNet-110 with alpha
48, PyramidNet-56 with alpha 24) train faster in NCHW; ResNets, PyramidNet-200 and wider
PyramidNet-110s in channels_last or equally fast. The width limit (32) and the share limit (one
half) are fitted to those networks: the crossover lay between the shares 0.23 (a tie) and 0.59.
"""

from __future__ import annotations

import torch
from torch import nn

from idml.data.catalog import dataset_info
from idml.models.registry import build_backbone
from idml.models.spec import ModelSpec

#: BatchNorm layers narrower than this, with a channel count that is not a multiple of 16, count as slow
NARROW_CHANNELS = 32
#: NCHW under bfloat16 when at least this share of the BatchNorm work is on slow widths
SLOW_SHARE_LIMIT = 0.5


def is_slow_width(channels: int) -> bool:
    """The BatchNorm widths the rule counts against channels_last (see the module docstring)."""
    return channels < NARROW_CHANNELS and channels % 16 != 0


def batchnorm_work(spec: ModelSpec) -> list[tuple[int, int]]:
    """(channels, elements per image) of every BatchNorm call of the backbone on one input of the
    dataset's size, traced on the meta device: shapes only, no memory and no arithmetic."""
    size = dataset_info(spec.dataset, spec.input_size).input_size
    work: list[tuple[int, int]] = []

    def record(_module: nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        work.append((x.shape[1], x[0].numel()))

    with torch.device("meta"):
        backbone = build_backbone(spec).eval()
        for module in backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.register_forward_pre_hook(record)
        with torch.no_grad():
            backbone(torch.empty(1, 3, size, size))
    return work


def slow_batchnorm_share(spec: ModelSpec) -> float | None:
    """The share of BatchNorm work on :func:`is_slow_width` layers (0.0 without BatchNorm), or
    None when the network cannot be traced on the meta device.

    Only a speed setting depends on it, so any failure of the trace gives None instead of an
    error: whatever stops the trace (impossible settings, an unknown backbone) stops the real build
    of the network too, a moment later, with its proper one-line message.
    """
    try:
        work = batchnorm_work(spec)
    except Exception:  # see the docstring: the real build of the network reports the problem
        return None
    total = sum(n for _, n in work)
    return sum(n for c, n in work if is_slow_width(c)) / total if total else 0.0


def channels_last_under_bf16(spec: ModelSpec) -> bool:
    """True unless at least :data:`SLOW_SHARE_LIMIT` of the network's BatchNorm work is on slow
    widths; True too for a network that cannot be traced (channels_last won everywhere else)."""
    share = slow_batchnorm_share(spec)
    return share is None or share < SLOW_SHARE_LIMIT
