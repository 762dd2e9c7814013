"""The digits quick-start set: scikit-learn's 8x8 digits as a fixed 32x32 RGB split."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from idml.data.digits import DIGITS_MEAN, DIGITS_STD, load_digits_data


def test_split_sizes_and_format() -> None:
    data = load_digits_data()
    train_images, train_labels = data["train"]
    val_images, val_labels = data["test"]
    assert train_images.shape == (1437, 3, 32, 32) and val_images.shape == (360, 3, 32, 32)
    assert train_images.dtype == val_images.dtype == torch.uint8
    assert train_labels.dtype == torch.int64 and train_labels.shape == (1437,) and val_labels.shape == (360,)
    assert data["class_names"] == [str(d) for d in range(10)]
    assert int(train_images.max()) == 255 and int(train_images.min()) == 0
    assert torch.equal(train_images[:, 0], train_images[:, 1]) and torch.equal(train_images[:, 0], train_images[:, 2])


def test_split_rule_is_every_fifth_image() -> None:
    bunch = load_digits()
    data = load_digits_data()
    is_test = np.arange(len(bunch.target)) % 5 == 0
    assert data["test"][1].tolist() == bunch.target[is_test].tolist()
    assert data["train"][1].tolist() == bunch.target[~is_test].tolist()
    # the upsampled image keeps the digit: its 8x8 average pooling follows the original closely
    pooled = torch.nn.functional.avg_pool2d(data["test"][0][:, :1].float(), 4).squeeze(1)
    original = torch.from_numpy(bunch.images[is_test]).float() * 255 / 16
    assert (pooled - original).abs().mean() < 20
    correlation = np.corrcoef(pooled.flatten().numpy(), original.flatten().numpy())[0, 1]
    assert correlation > 0.95


def test_split_is_fixed() -> None:
    first, second = load_digits_data(), load_digits_data()
    for split in ("train", "test"):
        assert all(torch.equal(a, b) for a, b in zip(first[split], second[split], strict=True))


def test_normalisation_constants_match_the_training_images() -> None:
    images = load_digits_data()["train"][0].float() / 255
    assert abs(images.mean().item() - DIGITS_MEAN[0]) < 1e-3
    assert abs(images.std().item() - DIGITS_STD[0]) < 1e-3
