"""Symmetric label noise for robustness experiments on the in-memory datasets."""

from __future__ import annotations

import torch
from torch import Tensor


def symmetric_label_noise(labels: Tensor, rate: float, num_classes: int, seed: int) -> Tensor:
    """A copy of ``labels`` in which exactly ``round(rate * n)`` labels, chosen uniformly at random,
    are each moved to a different class drawn uniformly from the other ``num_classes - 1``.

    The corruption depends on ``seed`` alone, so runs that share a seed (e.g. a model with and one
    without ISM) see the very same noisy labels.
    """
    generator = torch.Generator().manual_seed(seed)
    n = labels.shape[0]
    chosen = torch.randperm(n, generator=generator)[: round(rate * n)]
    shift = torch.randint(1, num_classes, (chosen.shape[0],), generator=generator)
    noisy = labels.clone()
    noisy[chosen] = (labels[chosen].cpu() + shift).remainder(num_classes).to(labels.device)
    return noisy
