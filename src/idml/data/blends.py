"""Blended images with a known degree of ambiguity: the ground truth for uncertainty scores.

``x = a * x_i + (1 - a) * x_j`` mixes two test images of *different* classes with a known weight
``a``; ``min(a, 1 - a)`` (0 = one clean image, 0.5 = an even mix of two classes) is how ambiguous
the blend is by construction. A score that captures semantic ambiguity, as the paper says the
uncertainty embedding does, should rise with it (``idml eval --blends N`` reports Spearman's rho).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from idml.errors import DataError


@dataclass(frozen=True)
class Blends:
    """``n`` blends of pairs of the images ``source``: the pairs' indices and labels and the weights
    ``a``. The blended images themselves are made a batch at a time (:meth:`batches`), so that
    ``--blends 1000000`` costs the memory of one batch, not of a million images."""

    source: Tensor
    first_index: Tensor
    second_index: Tensor
    first: Tensor
    second: Tensor
    weight: np.ndarray

    @property
    def ambiguity(self) -> np.ndarray:
        """min(a, 1 - a): the ground-truth ambiguity of each blend, in [0, 0.5]."""
        return np.minimum(self.weight, 1.0 - self.weight)

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """The blends ``a * x_i + (1 - a) * x_j`` (float, pixel units like the uint8 originals), in order,
        ``batch_size`` at a time."""
        for start in range(0, len(self.weight), batch_size):
            part = slice(start, start + batch_size)
            a = torch.from_numpy(self.weight[part]).float().view(-1, 1, 1, 1).to(self.source.device)
            yield (a * self.source[self.first_index[part]].float()
                   + (1.0 - a) * self.source[self.second_index[part]].float())


def blend_pairs(images: Tensor, labels: Tensor, n: int, seed: int) -> Blends:
    """``n`` blends of random pairs of images of different classes, ``a`` uniform in [0, 1].

    Seeded by ``seed`` alone, so every model is scored on the very same blends.
    """
    labels_np = labels.cpu().numpy()
    if len(np.unique(labels_np)) < 2:
        raise DataError("--blends needs test images of at least two classes")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(labels_np), size=n)
    second = rng.integers(0, len(labels_np), size=n)
    same = labels_np[first] == labels_np[second]
    while same.any():  # redraw the partners of same-class pairs until every pair mixes two classes
        second[same] = rng.integers(0, len(labels_np), size=int(same.sum()))
        same = labels_np[first] == labels_np[second]
    weight = rng.uniform(0.0, 1.0, size=n)
    i, j = torch.from_numpy(first).to(images.device), torch.from_numpy(second).to(images.device)
    return Blends(images, i, j, labels[i], labels[j], weight)
