"""Watching the training loss for NaN/inf without a host sync on every step.

Each step records on the device the position of the first non-finite loss; the host reads it
(one sync, agreed over all DDP ranks) only before a checkpoint is written, at the end of an epoch
and every ``CHECK_EVERY`` steps, so that weights from a diverged step are never saved.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from idml.errors import NonFiniteLossError

CHECK_EVERY = 50
_NONE = torch.iinfo(torch.int64).max
_STEP_BITS = 32


class LossWatch:
    def __init__(self, device: torch.device, distributed: bool) -> None:
        self.first_bad = torch.full((), _NONE, dtype=torch.int64, device=device)
        self.distributed = distributed
        #: where the last good checkpoint is, for the error message
        self.last_saved = "nothing was saved yet"

    def observe(self, loss: Tensor, epoch: int, step: int) -> None:
        """Remember (epoch, step) if ``loss`` is not finite and no earlier step was."""
        position = torch.full_like(self.first_bad, (epoch << _STEP_BITS) + step)
        bad = torch.where(torch.isfinite(loss.detach()), self.first_bad, position)
        torch.minimum(self.first_bad, bad, out=self.first_bad)

    def check(self) -> None:
        """Raise :class:`NonFiniteLossError` (on every rank) if any step's loss was not finite."""
        first = self.first_bad.clone()
        if self.distributed:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        value = int(first.item())
        if value == _NONE:
            return
        epoch, step = value >> _STEP_BITS, value & ((1 << _STEP_BITS) - 1)
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite at epoch {epoch}, step {step} (counted from 0); "
            f"stopped without saving ({self.last_saved}): lower --lr (or try --amp off) "
            "and continue with --resume auto"
        )
