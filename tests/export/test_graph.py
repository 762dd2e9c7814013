"""The exported network's head: the score operations in torch equal idml.metrics' in NumPy (one
definition, two array libraries), and the probe images cover both ends of the pixel range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idml.export.graph import TORCH_OPS, largest_differences, probe_images
from idml.metrics import LOGIT_SCORES, uncertainty_scores


def logits_of_every_kind() -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=(20, 7)) * scale for scale in (0.01, 1.0, 10.0)]
    confident = np.zeros((3, 7))
    confident[:, 0] = (30.0, 60.0, 800.0)  # 1 - max softmax of 1e-13, 1e-26 and an underflow to 0
    ties = np.ones((2, 7))
    return np.concatenate([*rows, confident, ties])


@pytest.mark.parametrize("name", list(LOGIT_SCORES))
def test_torch_computes_the_numpy_score(name: str) -> None:
    logits = logits_of_every_kind()
    in_numpy = uncertainty_scores(logits, feature_sq=np.ones(len(logits)))[name]
    in_torch = LOGIT_SCORES[name](torch.from_numpy(logits), TORCH_OPS).numpy()
    assert in_torch.dtype == np.float64
    # equal to float64's rounding: 1e-15 absolute (scipy's entropy renormalises the probabilities first)
    np.testing.assert_allclose(in_torch, in_numpy, rtol=1e-12, atol=1e-15)
    if name == "msp":
        assert 0 < in_numpy[-5] < 1e-12  # a float32 computation would give 0 here


def test_probe_images_cover_black_white_noise_and_a_gradient() -> None:
    images = probe_images(24)
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 24, 24)
    assert images[2].max() == 0 and images[3].min() == 255
    assert len(torch.unique(images[0])) > 200 and len(torch.unique(images[1])) > 20
    assert torch.equal(probe_images(24), images)  # fixed: every export checks the same images


def test_the_tolerance_is_relative_plus_absolute() -> None:
    want = {"logits": np.array([[10.0, 0.0]]), "probabilities": np.array([[0.5, 1e-9]]),
            "uncertainty": np.array([0.5])}
    inside = {"logits": np.array([[10.0009, 0.00009]]), "probabilities": np.array([[0.50004, 9e-7]]),
              "uncertainty": np.array([0.49996])}
    ratios = largest_differences(want, inside, "msp")
    assert all(r <= 1 for r in ratios.values()), ratios
    assert largest_differences(want, inside | {"probabilities": np.array([[0.5001, 1e-9]])}, "msp")["probabilities"] > 1
    assert largest_differences(want, inside | {"uncertainty": np.array([0.5001])}, "msp")["uncertainty"] > 1
    assert largest_differences(want, inside | {"uncertainty": np.array([0.5001])}, "energy")["uncertainty"] < 1
    assert largest_differences(want, inside | {"logits": np.array([[np.nan, 0.0]])}, "msp")["logits"] == np.inf
