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


#: ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses them
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION = range(3)  # columns of the jitter factors


class ColorLighting:
    """ImageNet's colour augmentation for a batch of uint8 crops, on the device, then normalisation.

    Per image, as torchvision's ``ColorJitter(brightness=j, contrast=j, saturation=j)`` followed
    by AlexNet's PCA lighting noise: three factors drawn uniformly from [1 - j, 1 + j], applied in
    a random order (each a blend with black, the image's mean grey, or its grey image, clamped to
    [0, 1]), then ``eigvec @ (alpha * eigval)`` added with alpha ~ N(0, lighting), then
    ``(x - mean) / std``. The workers only decode, crop and flip, and ship uint8 (a quarter of
    float32's bytes through shared memory and the host-to-device copy); the draws come from the
    step's generator, so a resumed run repeats them exactly.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], eigval: Sequence[float],
                 eigvec: Sequence[Sequence[float]], device: torch.device, jitter: float = 0.4,
                 lighting: float = 0.1) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # rgb = eigvec @ (alpha * eigval) per image, i.e. alphas @ basis for a batch of alphas (B x 3)
        self.lighting_basis = (torch.tensor(eigvec, dtype=torch.float32) * torch.tensor(eigval)).t().to(device)
        self.jitter, self.lighting = jitter, lighting
        # the per-image CPU path's constants, made once
        self.cpu_gray = torch.tensor(GRAY_WEIGHTS)
        self.cpu_basis = self.lighting_basis.cpu().numpy()
        self.cpu_mean = self.mean.cpu().view(1, 3, 1, 1)
        self.cpu_scale = (1 / self.std).cpu().view(3, 1, 1)

    def draws(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """Per image: the 3 jitter factors, the order of the 3 operations, the 3 lighting alphas."""
        factors = rng.uniform(1 - self.jitter, 1 + self.jitter, size=(batch, 3))
        order = np.argsort(rng.random((batch, 3)), axis=1)  # a uniform random permutation per image
        alphas = rng.normal(0.0, self.lighting, size=(batch, 3))
        return np.concatenate([factors, order, alphas], axis=1).astype(np.float32)

    @staticmethod
    def grayscale(x: Tensor) -> Tensor:
        r, g, b = x.unbind(dim=1)
        return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(1)

    def jitter_step(self, x: Tensor, op: Tensor, factor: Tensor) -> Tensor:
        """Apply, to each image, the operation ``op`` (B x 1 x 1 x 1) with its ``factor``."""
        gray = self.grayscale(x)
        target = torch.where(op == CONTRAST, gray.mean(dim=(1, 2, 3), keepdim=True), gray)
        target = torch.where(op == BRIGHTNESS, torch.zeros_like(target), target)
        return (x * factor + target * (1 - factor)).clamp_(0, 1)

    def __call__(self, images: Tensor, rng: np.random.Generator) -> Tensor:
        """Float32 images, normalised; per image on a CPU, batched elsewhere (same draws, same results)."""
        draws = self.draws(images.shape[0], rng)
        return self.per_image(images, draws) if images.device.type == "cpu" else self.batched(images, draws)

    def batched(self, images: Tensor, draws: np.ndarray) -> Tensor:
        """The whole batch at once, in a few dozen kernels: for GPUs, where a kernel per image would
        be launch-bound."""
        b = images.shape[0]
        draws = draws_to_device(draws, images.device)
        factors, order, alphas = draws[:, 0:3], draws[:, 3:6].long(), draws[:, 6:9]
        x = images.to(torch.float32, memory_format=torch.contiguous_format) / 255
        for slot in range(3):
            op = order[:, slot]
            factor = factors.gather(1, op.unsqueeze(1))
            x = self.jitter_step(x, op.view(b, 1, 1, 1), factor.view(b, 1, 1, 1))
        x = x + (alphas @ self.lighting_basis).view(b, 3, 1, 1)
        return (x - self.mean) / self.std

    def per_image(self, images: Tensor, draws: np.ndarray) -> Tensor:
        """The same operations on a CPU, one image at a time, with the draws of :meth:`draws`.

        A batch of 64 224x224 float32 images is 38 MB, which no CPU cache holds, and the batched
        code passes over it about 30 times; one image (0.6 MB) stays in cache through its half a
        dozen in-place passes: the blends run on the 0-255 scale (each a ``lerp_``; the clamps at
        255), and the division by 255 joins the normalisation's one multiply and add. On one thread:
        these operations are too small to share, and threads that wait for each other on a busy
        machine made them 30x slower. Same results within float rounding.
        """
        out = torch.empty(images.shape, dtype=torch.float32)
        lighting = torch.from_numpy((draws[:, 6:9] @ self.cpu_basis).astype(np.float32)).view(-1, 3, 1, 1)
        shifts = (lighting - self.cpu_mean) * self.cpu_scale  # (x / 255 + lighting - mean) / std
        scale = self.cpu_scale / 255
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for i, x in enumerate(out):
                x.copy_(images[i])
                for op in draws[i, 3:6].astype(int):
                    self.jitter_one(x, int(op), float(draws[i, op]))
                x.mul_(scale).add_(shifts[i])
        finally:
            torch.set_num_threads(threads)
        return out

    def jitter_one(self, x: Tensor, op: int, factor: float) -> None:
        """One jitter operation on one 3 x H x W image in [0, 255], in place: torchvision's blend
        ``factor * x + (1 - factor) * target`` with black, the image's mean grey or its grey image,
        clamped. A factor below 1 blends two images in range and needs no clamp."""
        if op == CONTRAST:
            x.lerp_(self.cpu_gray @ x.mean(dim=(1, 2)), 1 - factor)
        elif op == SATURATION:
            x.lerp_((self.cpu_gray @ x.view(3, -1)).view(1, *x.shape[1:]).expand_as(x), 1 - factor)
        else:
            x.mul_(factor)
        if factor > 1:
            x.clamp_(0, 255)


class RandomResizedCropFlip:
    """torchvision's ``RandomResizedCrop(size)`` + ``RandomHorizontalFlip()`` for a whole batch.

    The crop boxes follow ``RandomResizedCrop.get_params`` (area share uniform in ``scale``, log
    aspect ratio uniform in ``log(ratio)``, up to 10 tries, else the whole image), drawn from the
    caller's NumPy generator; one :func:`torchvision.ops.roi_align` call then resamples every box
    bilinearly to ``size`` x ``size``, averaging ceil(box / size) points per output pixel a side
    (so that shrinking a large box does not alias). Returns float images in [0, 255].
    """

    ATTEMPTS = 10

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio

    def boxes(self, b: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """b x 4 boxes (x1, y1, x2, y2) in pixel edges."""
        area = height * width
        target = area * rng.uniform(*self.scale, size=(b, self.ATTEMPTS))
        aspect = np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1]), size=(b, self.ATTEMPTS)))
        w = np.round(np.sqrt(target * aspect))
        h = np.round(np.sqrt(target / aspect))
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        pick = fits.argmax(axis=1)
        rows = np.arange(b)
        w, h, ok = w[rows, pick], h[rows, pick], fits[rows, pick]
        w, h = np.where(ok, w, width), np.where(ok, h, height)
        top = np.floor(rng.random(b) * (height - h + 1))
        left = np.floor(rng.random(b) * (width - w + 1))
        return np.stack([left, top, left + w, top + h], axis=1)

    def __call__(self, images: Tensor, rng: np.random.Generator) -> Tensor:
        from torchvision.ops import roi_align

        b, _, h, w = images.shape
        device = images.device
        boxes = np.concatenate([np.arange(b)[:, None], self.boxes(b, h, w, rng)], axis=1)
        flip = rng.random(b) < 0.5
        draws = draws_to_device(np.concatenate([boxes, flip[:, None]], axis=1), device)
        out = roi_align(images.float(), draws[:, :5].float(), self.size, spatial_scale=1.0, sampling_ratio=-1,
                        aligned=True)
        return torch.where(draws[:, 5].bool().view(b, 1, 1, 1), out.flip(-1), out)


class ResizedTrainAugment:
    """The training transform of large in-memory images (user datasets with inputs over 64
    pixels): RandomResizedCrop to ``size``, horizontal flip, then normalisation."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.crop_flip = RandomResizedCropFlip(size)
        self.normalize = Normalize(mean, std, device)

    def __call__(self, images: Tensor, rng: np.random.Generator) -> Tensor:
        return self.normalize(self.crop_flip(images, rng))
