"""``--model_ema DECAY``: an exponential moving average of the weights, kept beside the model.

Definition (docs/recipe.md): ``ema_0`` is a copy of the weights when training starts; after each
optimiser step ``k``, ``ema_k = DECAY * ema_(k-1) + (1 - DECAY) * weights_k``, for every parameter
and every floating-point buffer (BatchNorm's running statistics are averaged too, as timm's
ModelEmaV2 does); integer buffers (BatchNorm's batch counters) are copied.

The update is PyTorch's :func:`torch.optim.swa_utils.get_ema_multi_avg_fn` (one fused
``_foreach_lerp_`` per dtype). ``AveragedModel.update_parameters`` itself is not used: it reads
its update counter back to the host on every call, which would stall a GPU each step.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class ModelEMA:
    """The moving average of ``model``'s weights; ``module`` is a full model holding them."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        self._average = get_ema_multi_avg_fn(decay)
        self._groups, self._copies = self._pair_tensors(model)

    def _pair_tensors(self, model: nn.Module) -> tuple[list[tuple[list[Tensor], list[Tensor]]], list[tuple]]:
        """(EMA tensors, model tensors) grouped by device and dtype for the fused update, and the
        integer buffers that are copied instead."""
        groups: dict[Any, tuple[list[Tensor], list[Tensor]]] = defaultdict(lambda: ([], []))
        copies: list[tuple[Tensor, Tensor]] = []
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        for ema_t, model_t in zip(mine, theirs, strict=True):
            if ema_t.is_floating_point():
                group = groups[(ema_t.device, ema_t.dtype)]
                group[0].append(ema_t.detach())
                group[1].append(model_t.detach())
            else:
                copies.append((ema_t, model_t))
        return list(groups.values()), copies

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average, after an optimiser step (no host synchronisation)."""
        for ema_tensors, model_tensors in self._groups:
            self._average(ema_tensors, model_tensors, None)
        for ema_t, model_t in self._copies:
            ema_t.copy_(model_t)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds: the averaged weights (loadable into the model), decay, count."""
        return {"state_dict": self.module.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.updates = int(state.get("updates", 0))
