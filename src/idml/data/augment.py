"""Batched, on-device augmentation for in-memory uint8 datasets (CIFAR, digits).

Instead of per-image PIL transforms in worker processes, a whole batch is cropped, flipped and
normalised with one gather on the training device. Random draws come from the NumPy generator
the caller passes, so a batch's augmentation is reproducible from (seed, epoch, step); they reach
the device in one small copy per batch (:func:`draws_to_device`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def draws_to_device(draws: np.ndarray, device: torch.device) -> Tensor:
    """A batch's random draws on ``device`` without synchronising a GPU stream.

    A copy from pageable (ordinary) memory makes CUDA wait for the stream, ``non_blocking`` or
    not; from pinned memory it is queued like a kernel. ``pin_memory()`` takes the small buffer
    from PyTorch's caching host allocator, which reuses it only once the copy has finished.
    """
    host = torch.from_numpy(np.ascontiguousarray(draws))
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


class Normalize:
    """uint8 [0, 255] -> float (x / 255 - mean) / std, as one fused multiply-add."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, images: Tensor) -> Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)


class RandomCropFlip:
    """Random crop of the original size from a zero-padded image, and a random horizontal flip.

    Matches torchvision's ``RandomCrop(size, padding=pad)`` + ``RandomHorizontalFlip()`` per image.
    """

    def __init__(self, pad: int = 4, flip: bool = True) -> None:
        self.pad = pad
        self.flip = flip

    def __call__(self, images: Tensor, rng: np.random.Generator) -> Tensor:
        b, c, h, w = images.shape
        device = images.device
        padded = F.pad(images, (self.pad,) * 4) if self.pad else images
        draws = [rng.integers(0, 2 * self.pad + 1, size=(b, 1)), rng.integers(0, 2 * self.pad + 1, size=(b, 1))]
        if self.flip:
            draws.append((rng.random((b, 1)) < 0.5).astype(np.int64))
        top, left, *flipped = draws_to_device(np.concatenate(draws, axis=1), device).unbind(1)
        rows = top.unsqueeze(1) + torch.arange(h, device=device)
        cols = torch.arange(w, device=device).expand(b, w)
        if flipped:
            cols = torch.where(flipped[0].unsqueeze(1).bool(), w - 1 - cols, cols)
        cols = cols + left.unsqueeze(1)
        batch_index = torch.arange(b, device=device).view(b, 1, 1, 1)
        channel_index = torch.arange(c, device=device).view(1, c, 1, 1)
        return padded[batch_index, channel_index, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class TrainAugment:
    """The training transform of the in-memory datasets, on a uint8 batch on the device: random
    crop from the zero-padded image, horizontal flip (when ``flip``), then normalisation."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, pad: int = 4,
                 flip: bool = True) -> None:
        self.crop_flip = RandomCropFlip(pad, flip)
        self.normalize = Normalize(mean, std, device)

    def __call__(self, images: Tensor, rng: np.random.Generator) -> Tensor:
        return self.normalize(self.crop_flip(images, rng))
