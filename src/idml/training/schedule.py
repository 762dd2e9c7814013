"""The schedule of a run: the learning rate of every step, and which steps update the weights.

Everything here is a closed-form function of the position (epoch, step), so a resumed run needs
no scheduler state to continue exactly. docs/recipe.md states the definitions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple


def learning_rate(base_lr: float, dataset: str, epoch: int, epochs: int) -> float:
    """The official step schedules, for epoch ``epoch`` (counted from 0) of ``epochs``.

    CIFAR-style data: x0.1 from epoch E/2 and again from 3E/4. ImageNet: x0.1 every 75 epochs
    when E == 300, every 30 epochs otherwise.
    """
    if dataset == "imagenet":
        period = 75 if epochs == 300 else 30
        return base_lr * 0.1 ** (epoch // period)
    return base_lr * 0.1 ** (epoch >= epochs * 0.5) * 0.1 ** (epoch >= epochs * 0.75)


@dataclass(frozen=True)
class Schedule:
    """``--sched`` and ``--warmup_epochs`` for a run of ``epochs`` epochs from ``base_lr``.

    With S steps (batches) per epoch, batch ``b = epoch * S + step`` of the run, ``W =
    round(warmup_epochs * S)`` warmup steps and ``T = epochs * S`` steps in all:

    - ``b < W``: ``base_lr * (b + 1) / W`` (linear warmup, reaching ``base_lr`` at batch W - 1);
    - ``step``: the official value of the epoch (:func:`learning_rate`), constant within it;
    - ``cosine``: ``base_lr * (1 + cos(pi * (b - W) / (T - W))) / 2``.
    """

    base_lr: float
    dataset: str
    epochs: int
    sched: str = "step"
    warmup_epochs: float = 0.0

    @property
    def per_step(self) -> bool:
        """Whether the rate changes inside an epoch (else it is set once per epoch, as officially)."""
        return self.sched != "step" or self.warmup_epochs > 0

    def at(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """The learning rate of batch ``step`` of ``epoch`` (both counted from 0)."""
        batch = epoch * steps_per_epoch + step
        warmup = round(self.warmup_epochs * steps_per_epoch)
        if batch < warmup:
            return self.base_lr * (batch + 1) / warmup
        if self.sched == "step":
            return learning_rate(self.base_lr, self.dataset, epoch, self.epochs)
        span = max(self.epochs * steps_per_epoch - warmup, 1)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * (batch - warmup) / span))


class Accumulation(NamedTuple):
    """How batch ``step`` of an epoch takes part in gradient accumulation.

    ``first``: the gradients are zeroed before its backward pass; ``last``: the optimiser steps
    after it; ``weight``: its loss is multiplied by 1 / (batches in its group), so that the update
    uses the mean gradient of the group.
    """

    first: bool
    last: bool
    weight: float


def accumulation(step: int, steps: int, every: int) -> Accumulation:
    """Batches ``0..steps-1`` of an epoch form groups of ``every`` (the last one may be shorter:
    no gradient is carried over into the next epoch)."""
    start = step - step % every
    end = min(start + every, steps)
    return Accumulation(step == start, step + 1 >= end, 1.0 / max(end - start, 1))
