"""CutMix and Mixup on a batch, with the official per-batch semantics, and the mixed loss.

torchvision's ``v2.CutMix``/``v2.MixUp`` pair each image with its neighbour (``roll``) and return
soft labels; the official code pairs with a random permutation, decides once per batch with
probability ``cutmix_prob`` and recomputes lam from the clipped box. We keep those semantics.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from idml.config import MixConfig
from idml.data.augment import draws_to_device


class MixedBatch(NamedTuple):
    """Images after mixing, both label sets and the weight of the first (1.0 = not mixed)."""

    images: Tensor
    targets_a: Tensor
    targets_b: Tensor
    lam: float


def random_permutation(n: int, rng: np.random.Generator, device: torch.device) -> Tensor:
    """A permutation drawn from ``rng``, copied without synchronising a GPU stream."""
    return draws_to_device(rng.permutation(n), device)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of side ratio sqrt(1 - lam) centred on a uniform pixel, clipped to the image."""
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = rng.integers(height), rng.integers(width)
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    return int(top), int(bottom), int(left), int(right)


def cutmix(images: Tensor, targets: Tensor, beta: float, rng: np.random.Generator) -> MixedBatch:
    """Paste one box from a shuffled copy of the batch; lam = 1 - pasted area / image area."""
    h, w = images.shape[-2:]
    perm = random_permutation(len(targets), rng, targets.device)
    top, bottom, left, right = cutmix_box(h, w, rng.beta(beta, beta), rng)
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[perm, :, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    return MixedBatch(mixed, targets, targets[perm], lam)


def mixup(images: Tensor, targets: Tensor, alpha: float, rng: np.random.Generator) -> MixedBatch:
    """x = lam * x + (1 - lam) * x[perm] with lam ~ Beta(alpha, alpha)."""
    perm = random_permutation(len(targets), rng, targets.device)
    lam = float(rng.beta(alpha, alpha))
    mixed = torch.lerp(images[perm], images, lam)
    return MixedBatch(mixed, targets, targets[perm], lam)


def mix_batch(images: Tensor, targets: Tensor, cfg: MixConfig, rng: np.random.Generator) -> MixedBatch:
    """Apply CutMix, Mixup or nothing to the batch: one uniform draw decides, as in the official code."""
    if not cfg.active:
        return MixedBatch(images, targets, targets, 1.0)
    r = rng.random()
    if r < cfg.cutmix_share:
        return cutmix(images, targets, cfg.beta, rng)
    if r < cfg.cutmix_share + cfg.mixup_share:
        return mixup(images, targets, cfg.mixup_alpha, rng)
    return MixedBatch(images, targets, targets, 1.0)


def mixed_cross_entropy(logits: Tensor, batch: MixedBatch, label_smoothing: float = 0.0) -> Tensor:
    """lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b), in float32.

    With ``label_smoothing`` eps (``--label_smoothing``), both terms use smoothed targets
    ``(1 - eps) * onehot(y) + eps / C`` (PyTorch's ``cross_entropy(label_smoothing=eps)``).
    """
    logits = logits.float()
    loss = F.cross_entropy(logits, batch.targets_a, label_smoothing=label_smoothing)
    if batch.lam < 1.0:
        loss_b = F.cross_entropy(logits, batch.targets_b, label_smoothing=label_smoothing)
        loss = batch.lam * loss + (1.0 - batch.lam) * loss_b
    return loss
