"""Is a model worth saving? Finite weights of a sane size, checked on the device before each save.

The loss guard (``Trainer.check_loss``) sees a NaN loss, but not every divergence makes the loss
NaN first: a convolution followed by BatchNorm gives the same output whatever its weights' scale,
so under a huge ``--lr`` those weights can grow to ~1e37 while the loss stays finite, and the next
step overflows. A checkpoint of such weights cannot be continued, even with a lower ``--lr``. So
before every save the weights themselves are checked: all finite, and none larger in magnitude
than :data:`DIVERGED_WEIGHT`. Trained networks keep their weights within a few units (Kaiming
initialisation starts below 1, weight decay pulls them back); 1e4 leaves a margin of a thousand.

The check is one fused max-abs reduction per tensor on the device and one read to the host, made
only when a checkpoint is about to be written (which copies every weight to the host anyway).
"""

from __future__ import annotations

import math

import torch

#: A parameter entry larger than this in magnitude means the run has diverged.
DIVERGED_WEIGHT = 1e4


def weights_problem(state_dict: dict[str, torch.Tensor], limit: float = DIVERGED_WEIGHT) -> str | None:
    """What makes these weights unsaveable (naming the first bad tensor), or None if they are fine.

    Every floating-point entry must be finite; all but BatchNorm's running statistics must also
    be at most ``limit`` in magnitude.
    """
    named = [(name, t.detach()) for name, t in state_dict.items()
             if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 0]
    if not named:
        return None
    peaks = torch.stack([p.float() for p in torch._foreach_norm([t for _, t in named], math.inf)])
    values = peaks.cpu().tolist()  # the one sync
    for (name, _), peak in zip(named, values, strict=True):
        if not math.isfinite(peak):
            return f"{name} holds NaN or infinite values"
        if peak > limit and not _is_statistic(name):
            return f"{name} holds a weight of magnitude {peak:.3g} (more than {limit:g})"
    return None


def _is_statistic(name: str) -> bool:
    """A BatchNorm running statistic (may legitimately be large, but must be finite)."""
    return name.rsplit(".", 1)[-1] in ("running_mean", "running_var")
