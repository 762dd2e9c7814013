"""CutMix and Mixup: pasted area, label pairing, per-batch probability, mixed loss."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from idml.config import setting_problem
from idml.mixing import MixConfig, MixedBatch, cutmix, mix_batch, mixed_cross_entropy, mixup

B, H, W = 8, 20, 28  # not square, so that height and width cannot be swapped unnoticed


def labelled_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i (all channels) and has label 10 + i: every pixel names its source."""
    images = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, H, W).contiguous()
    return images, torch.arange(B) + 10


def source_images(batch: MixedBatch) -> torch.Tensor:
    """For every image, which batch image each pixel came from (B x 3 x H x W of indices)."""
    return batch.images.round().long()


@pytest.mark.parametrize("seed", range(40))
def test_cutmix_pastes_one_box_from_the_paired_image(seed: int) -> None:
    images, targets = labelled_images()
    batch = cutmix(images, targets, beta=1.0, rng=np.random.default_rng(seed))
    assert torch.equal(batch.targets_a, targets)
    perm = batch.targets_b - 10
    assert sorted(perm.tolist()) == list(range(B)), "targets_b must be targets[perm] for a permutation"
    source = source_images(batch)
    own = torch.arange(B).view(B, 1, 1, 1)
    partner = perm.view(B, 1, 1, 1)
    # every pixel comes from the image itself or from its partner images[perm[i]], in every channel
    assert torch.all((source == own) | (source == partner))
    assert torch.all(source == source[:, :1])
    # the pasted pixels form the same axis-aligned box in every image whose partner is another image
    pasted = (source == partner) & (source != own)
    movers = (perm != torch.arange(B)).nonzero().flatten()
    assert len(movers) > 0
    box = pasted[movers[0], 0]
    for i in movers:
        assert torch.equal(pasted[i, 0], box)
    rows, cols = box.any(dim=1).nonzero().flatten(), box.any(dim=0).nonzero().flatten()
    area = int(box.sum())
    if area:
        assert area == len(rows) * len(cols), "the pasted region must be a rectangle"
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
    assert batch.lam == pytest.approx(1 - area / (H * W), abs=1e-12)


def test_cutmix_box_sizes_follow_beta() -> None:
    """lam is recomputed from the clipped box: its mean stays near Beta's mean (0.5) with some clipping."""
    images, targets = labelled_images()
    lams = [cutmix(images, targets, beta=1.0, rng=np.random.default_rng(s)).lam for s in range(400)]
    assert 0.5 < np.mean(lams) < 0.75  # clipping only ever shrinks the box
    assert min(lams) < 0.3 and max(lams) > 0.95  # the box is at most 18 x 26 here: lam >= 0.164


def test_cutmix_keeps_the_input_intact() -> None:
    images, targets = labelled_images()
    before = images.clone()
    cutmix(images, targets, beta=1.0, rng=np.random.default_rng(0))
    assert torch.equal(images, before)


def draws(cfg: MixConfig, n: int = 200) -> list[MixedBatch]:
    images, targets = labelled_images()
    return [mix_batch(images, targets, cfg, np.random.default_rng(seed)) for seed in range(n)]


def was_mixed(batch: MixedBatch) -> bool:
    return not torch.equal(batch.targets_b, batch.targets_a)


@pytest.mark.parametrize(
    ("cfg", "expected_share"),
    [
        (MixConfig(beta=1.0, cutmix_prob=0.0), 0.0),
        (MixConfig(beta=0.0, cutmix_prob=1.0), 0.0),
        (MixConfig(beta=1.0, cutmix_prob=1.0), 1.0),
        (MixConfig(), 0.0),
    ],
    ids=["prob0", "beta0", "prob1", "defaults"],
)
def test_cutmix_probability_extremes(cfg: MixConfig, expected_share: float) -> None:
    images, _ = labelled_images()
    batches = draws(cfg)
    assert np.mean([was_mixed(b) for b in batches]) == expected_share
    for b in batches:
        if not was_mixed(b):
            assert b.lam == 1.0 and torch.equal(b.images, images)


def test_cutmix_probability_is_per_batch() -> None:
    share = np.mean([was_mixed(b) for b in draws(MixConfig(beta=1.0, cutmix_prob=0.5), n=400)])
    assert 0.4 < share < 0.6


def test_mixup_lam_weights_the_original_image() -> None:
    images, targets = labelled_images()
    for seed in range(20):
        batch = mixup(images, targets, alpha=1.0, rng=np.random.default_rng(seed))
        assert 0.0 < batch.lam < 1.0
        partner = (batch.targets_b - 10).float().view(B, 1, 1, 1)
        expected = batch.lam * images + (1 - batch.lam) * partner
        torch.testing.assert_close(batch.images, expected.expand_as(images))
        assert torch.equal(batch.targets_a, targets)


def test_mixup_through_mix_batch_and_shares() -> None:
    only_mixup = draws(MixConfig(mixup_alpha=1.0, mixup_prob=1.0), n=50)
    assert all(was_mixed(b) and b.images.frac().abs().sum() > 0 for b in only_mixup)
    # CutMix takes the first share of the one draw, Mixup the next
    both = draws(MixConfig(beta=1.0, cutmix_prob=0.5, mixup_alpha=1.0, mixup_prob=0.5), n=200)
    is_mixup = [b.images.frac().abs().sum().item() > 0 for b in both]
    assert all(was_mixed(b) for b in both)
    assert 0.35 < np.mean(is_mixup) < 0.65


def manual_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    log_probs = logits.double() - logits.double().logsumexp(dim=1, keepdim=True)
    return -log_probs[torch.arange(len(targets)), targets].mean()


@pytest.mark.parametrize("lam", [1.0, 0.7, 0.25, 0.0])
def test_mixed_loss(lam: float) -> None:
    logits = torch.randn(B, 20, generator=torch.Generator().manual_seed(0))
    a = torch.arange(B) + 10
    b = a.flip(0)
    loss = mixed_cross_entropy(logits, MixedBatch(torch.empty(0), a, b, lam))
    expected = lam * manual_cross_entropy(logits, a) + (1 - lam) * manual_cross_entropy(logits, b)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_mixed_loss_in_float32_from_bf16_logits() -> None:
    logits = torch.randn(B, 20).to(torch.bfloat16)
    a = torch.arange(B)
    loss = mixed_cross_entropy(logits, MixedBatch(torch.empty(0), a, a.flip(0), 0.5))
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("cfg", [
    MixConfig(beta=1.0, cutmix_prob=0.3, mixup_alpha=1.0, mixup_prob=0.5),  # alternating
    MixConfig(mixup_alpha=0.4, mixup_prob=0.6),  # Mixup alone
    MixConfig(beta=1.0, cutmix_prob=0.0, mixup_alpha=1.0, mixup_prob=1.0),  # seed-style beta with Mixup only
])
def test_one_draw_per_batch_picks_cutmix_then_mixup_then_nothing(cfg):
    images, targets = labelled_images()
    kinds = []
    for seed in range(40):
        replay = np.random.default_rng(seed)
        r = replay.random()
        if r < cfg.cutmix_share:
            expected, kind = cutmix(images, targets, cfg.beta, replay), "cutmix"
        elif r < cfg.cutmix_share + cfg.mixup_share:
            expected, kind = mixup(images, targets, cfg.mixup_alpha, replay), "mixup"
        else:
            expected, kind = None, "none"
        out = mix_batch(images, targets, cfg, np.random.default_rng(seed))
        if expected is None:
            assert out.lam == 1.0 and out.images is images
        else:
            assert out.lam == expected.lam and torch.equal(out.images, expected.images)
        kinds.append(kind)
    assert ("mixup" in kinds) == (cfg.mixup_share > 0) and ("cutmix" in kinds) == (cfg.cutmix_share > 0)


@pytest.mark.parametrize("name", ["beta", "mixup_alpha"])
@pytest.mark.parametrize("value", [5e-324, 1e-300, 1e-6, 0.2, 1.0, 1e6, 1e300, sys.float_info.max])
def test_every_accepted_beta_shape_mixes_as_its_distribution_says(name: str, value: float) -> None:
    """A --beta or --mixup_alpha the settings accept mixes batches into finite images with weights
    in [0, 1] whose mean is about 1/2 (the mean of a symmetric Beta distribution). NumPy's Beta draws
    only 0 for a shape near the largest float: that shape must be refused, not train on one image."""
    if setting_problem(name, value) is not None:
        return
    images, targets = labelled_images()
    weights = []
    for seed in range(100):
        mixed = (cutmix if name == "beta" else mixup)(images, targets, value, np.random.default_rng(seed))
        assert 0.0 <= mixed.lam <= 1.0 and torch.isfinite(mixed.images).all(), (name, value, seed)
        weights.append(mixed.lam)
    if name == "mixup_alpha":  # Mixup's weight is the draw itself (CutMix's is the area a clipped box leaves)
        assert 0.3 <= np.mean(weights) <= 0.7, (name, value, np.mean(weights))
