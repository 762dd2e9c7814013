"""Batched on-device augmentation against torchvision's per-image crop and flip, and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

import fake_data
from idml.data.augment import ColorLighting, Normalize, RandomCropFlip
from idml.data.build import build_data
from idml.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC
from idml.data.types import DataRequest

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


def per_image_reference(images: torch.Tensor, seed: int, pad: int, flip: bool) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding=pad) then RandomHorizontalFlip, one image at a time,
    with the offsets and coin flips drawn in the order RandomCropFlip draws them."""
    b, _, h, w = images.shape
    rng = np.random.default_rng(seed)
    tops = rng.integers(0, 2 * pad + 1, size=(b, 1))[:, 0]
    lefts = rng.integers(0, 2 * pad + 1, size=(b, 1))[:, 0]
    flips = rng.random((b, 1))[:, 0] < 0.5 if flip else np.zeros(b, dtype=bool)
    out = []
    for image, top, left, flipped in zip(images, tops, lefts, flips, strict=True):
        crop = TF.crop(TF.pad(image, [pad], fill=0), int(top), int(left), h, w)
        out.append(TF.horizontal_flip(crop) if flipped else crop)
    return torch.stack(out)


@pytest.mark.parametrize("flip", [True, False], ids=["crop_flip", "crop_only"])
@pytest.mark.parametrize("seed", range(3))
def test_random_crop_flip_equals_torchvision_per_image(seed: int, flip: bool) -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    out = RandomCropFlip(pad=4, flip=flip)(images, np.random.default_rng(seed))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, per_image_reference(images, seed, pad=4, flip=flip))


def test_random_crop_flip_non_square_and_draws_vary() -> None:
    images = torch.randint(0, 256, (32, 3, 20, 28), dtype=torch.uint8)
    out = RandomCropFlip(pad=3)(images, np.random.default_rng(5))
    assert torch.equal(out, per_image_reference(images, 5, pad=3, flip=True))
    # some images are shifted or flipped, and zero padding shows up at the borders of shifted ones
    assert not torch.equal(out, images)
    assert (out == 0).sum() > (images == 0).sum()


def test_zero_padding_only() -> None:
    images = torch.full((8, 3, 32, 32), 7, dtype=torch.uint8)
    out = RandomCropFlip(pad=4)(images, np.random.default_rng(0))
    assert set(out.unique().tolist()) <= {0, 7}
    assert torch.equal(RandomCropFlip(pad=0, flip=False)(images, np.random.default_rng(0)), images)


def test_normalize_formula() -> None:
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    out = Normalize(CIFAR_MEAN, CIFAR_STD, torch.device("cpu"))(images)
    mean = torch.tensor(CIFAR_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, dtype=torch.float64).view(1, 3, 1, 1)
    expected = (images.double() / 255 - mean) / std
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)


def test_cifar_bundle_uses_official_constants_and_flip(tmp_path) -> None:
    fake_data.make_cifar10(tmp_path, n_train=10, n_test=5)
    data = build_data(DataRequest("cifar10", tmp_path, batch_size=10), torch.device("cpu"))
    assert data.mean == pytest.approx(CIFAR_MEAN) and data.std == pytest.approx(CIFAR_STD)
    images, _ = next(iter(data.test))
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(data.eval_transform(images), (images.float() / 255 - mean) / std)
    train_images, _ = next(iter(data.train))
    rng_seed = 3
    augmented = data.train_transform(train_images, np.random.default_rng(rng_seed))
    reference = per_image_reference(train_images, rng_seed, pad=4, flip=True)
    torch.testing.assert_close(augmented, (reference.float() / 255 - mean) / std)


@pytest.mark.parametrize("batch", [1, 2, 7, 64])
def test_colour_step_per_image_on_a_cpu_equals_the_batched_code(batch: int) -> None:
    """The CPU's per-image colour step and the GPU's batched one give the same images from the same
    draws, within float rounding, at every batch size (and with images that hit the clamps)."""
    colour = ColorLighting(IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC, torch.device("cpu"))
    images = torch.randint(0, 256, (batch, 3, 24, 20), generator=torch.Generator().manual_seed(batch),
                           dtype=torch.uint8)
    images[0, :, :4] = 255  # saturated pixels: brightness and contrast above 1 must clamp them
    draws = colour.draws(batch, np.random.default_rng(batch))
    per_image, batched = colour.per_image(images, draws), colour.batched(images, draws)
    assert per_image.dtype == batched.dtype == torch.float32 and per_image.is_contiguous()
    torch.testing.assert_close(per_image, batched, atol=1e-5, rtol=0)
    assert torch.equal(colour(images, np.random.default_rng(batch)), per_image)  # the CPU takes the per-image path
