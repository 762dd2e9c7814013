"""The augmentation idml's ImageNet pipeline draws follows the official code's distribution.

The crop boxes the training workers actually use (recorded from the real dataset, seeded per
sample as in training) are compared with boxes drawn by torchvision's own
``RandomResizedCrop.get_params`` (what the official code calls) on the same image sizes:
two-sample Kolmogorov-Smirnov tests of the area share, the log aspect ratio and the box centre's
position, and a binomial test of the flips. The colour draws are compared with the official
distributions: jitter factors 1 + U(-0.4, 0.4), the order of the three operations uniform over
its 6 permutations (chi-square), lighting alphas N(0, 0.1). Each test must also *fail* when the
augmentation is changed: a crop scale of 0.2-1 instead of 0.08-1, a jitter of 0.2.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms

from idml.data import crops, gpu_decode
from idml.data.augment import ColorLighting
from idml.data.crops import DecodeCropFlip
from idml.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC, load_imagenet
from idml.data.loaders import SeededImages

SAMPLES = 3000
#: a p-value below this rejects "same distribution"; the draws are seeded, so each test's outcome is fixed
ALPHA = 1e-3
SIZES = ((500, 375), (375, 500), (640, 427), (500, 500))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageNet-layout folder of four flat JPEGs of ImageNet-like sizes (only their size matters)."""
    root = tmp_path_factory.mktemp("sizes")
    for split in ("train", "val"):
        folder = root / "imagenet-1k" / split / "n00000001"
        folder.mkdir(parents=True)
        for i, size in enumerate(SIZES):
            Image.new("RGB", size, (90, 120, 150)).save(folder / f"{i}.JPEG", quality=75)
    return root


def pipeline_draws(root: Path, monkeypatch: pytest.MonkeyPatch, decode: str = "cpu",
                   scale: tuple[float, float] = crops.SCALE) -> list[tuple[crops.CropDraw, int, int]]:
    """(draw, width, height) of SAMPLES training samples of the real dataset, keyed (epoch, index)."""
    recorded: list[tuple[crops.CropDraw, int, int]] = []
    real = crops.draw_crop

    def spy(width: int, height: int, *args) -> crops.CropDraw:
        draw = real(width, height, *args)
        recorded.append((draw, width, height))
        return draw

    monkeypatch.setattr(crops, "draw_crop", spy)
    monkeypatch.setattr(gpu_decode, "draw_crop", spy)
    folder = load_imagenet(root, decode)["train"]
    if scale != crops.SCALE:
        folder.transform = DecodeCropFlip(224, scale=scale)
    images = SeededImages(folder, seed=0, skip_bad=False)
    for k in range(SAMPLES):
        images[(k // len(images), k % len(images))]
    return recorded


def reference_draws(sizes: list[tuple[int, int]]) -> list[tuple[int, int, int, int, bool]]:
    """torchvision's RandomResizedCrop(224) + RandomHorizontalFlip() draws (top, left, h, w, flip)."""
    torch.manual_seed(12345)
    out = []
    for width, height in sizes:
        box = transforms.RandomResizedCrop.get_params(torch.empty(0, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
        out.append((*box, bool(torch.rand(1) < 0.5)))
    return out


def box_statistics(boxes: list[tuple[int, int, int, int]], sizes: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Area share, log aspect ratio and the centre's relative position of (top, left, h, w) boxes."""
    b = np.array(boxes, dtype=float)
    s = np.array(sizes, dtype=float)
    top, left, h, w = b.T
    width, height = s.T
    return {"area share": h * w / (width * height), "log aspect ratio": np.log(w / h),
            "centre x": (left + w / 2) / width, "centre y": (top + h / 2) / height}


def crop_p_values(recorded: list[tuple[crops.CropDraw, int, int]]) -> dict[str, float]:
    sizes = [(w, h) for _, w, h in recorded]
    ours = box_statistics([(d.top, d.left, d.height, d.width) for d, _, _ in recorded], sizes)
    reference = reference_draws(sizes)
    theirs = box_statistics([r[:4] for r in reference], sizes)
    p = {name: stats.ks_2samp(ours[name], theirs[name]).pvalue for name in ours}
    p["flip"] = stats.binomtest(sum(d.flip for d, _, _ in recorded), len(recorded), 0.5).pvalue
    return p


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_crop_boxes_and_flips_follow_torchvisions_distribution(photos: Path, monkeypatch, decode: str) -> None:
    recorded = pipeline_draws(photos, monkeypatch, decode)
    assert len(recorded) == SAMPLES
    p = crop_p_values(recorded)
    assert min(p.values()) > ALPHA, p


def test_the_crop_test_fails_for_a_scale_of_0_2_to_1(photos: Path, monkeypatch) -> None:
    """The negative control: a crop that never takes less than 20% of the image is caught."""
    p = crop_p_values(pipeline_draws(photos, monkeypatch, scale=(0.2, 1.0)))
    assert p["area share"] < 1e-6, p


def colour_p_values(colour: ColorLighting) -> dict[str, float]:
    draws = colour.draws(SAMPLES, np.random.default_rng(7))
    factors, order, alphas = draws[:, :3], draws[:, 3:6].astype(int), draws[:, 6:]
    permutations = [tuple(o) for o in order]
    counts = [permutations.count(p) for p in sorted(set(permutations) | {(0, 1, 2)})]
    p = {f"factor {name}": stats.kstest(factors[:, i], stats.uniform(loc=0.6, scale=0.8).cdf).pvalue
         for i, name in enumerate(("brightness", "contrast", "saturation"))}
    p["order"] = stats.chisquare(counts).pvalue if len(counts) == math.factorial(3) else 0.0
    p |= {f"lighting alpha {i}": stats.kstest(alphas[:, i], stats.norm(0, 0.1).cdf).pvalue for i in range(3)}
    return p


def test_colour_draws_follow_the_official_distribution() -> None:
    colour = ColorLighting(IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC, torch.device("cpu"), 0.4, 0.1)
    p = colour_p_values(colour)
    assert min(p.values()) > ALPHA, p


def test_the_colour_test_fails_for_a_jitter_of_0_2() -> None:
    colour = ColorLighting(IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC, torch.device("cpu"), 0.2, 0.1)
    p = colour_p_values(colour)
    assert min(p[f"factor {name}"] for name in ("brightness", "contrast", "saturation")) < 1e-6, p
