"""CutMix / Mixup semantics: what lam means, which mix a batch gets, and the mixed loss."""

import math

import numpy as np
import pytest
import torch

from idml.mixing import MixConfig, MixedBatch, cutmix, cutmix_box, mix_batch, mixed_cross_entropy, mixup


def batch(n=6, size=8):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=gen), torch.arange(n) % 3


def test_mixup_lam_weights_the_original_images():
    images, targets = batch()
    out = mixup(images, targets, 1.0, np.random.default_rng(3))
    replay = np.random.default_rng(3)
    perm = torch.from_numpy(replay.permutation(len(targets)))
    lam = replay.beta(1.0, 1.0)
    assert out.lam == pytest.approx(lam) and 0 < out.lam < 1
    torch.testing.assert_close(out.images, lam * images + (1 - lam) * images[perm])
    assert torch.equal(out.targets_a, targets) and torch.equal(out.targets_b, targets[perm])


def test_cutmix_lam_is_the_share_of_original_pixels():
    images, targets = batch(size=16)
    out = cutmix(images, targets, 1.0, np.random.default_rng(5))
    replay = np.random.default_rng(5)
    perm = torch.from_numpy(replay.permutation(len(targets)))
    top, bottom, left, right = cutmix_box(16, 16, replay.beta(1.0, 1.0), replay)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert out.lam == pytest.approx(1 - inside.float().mean().item())
    assert torch.equal(out.images[:, :, ~inside], images[:, :, ~inside])
    assert torch.equal(out.images[:, :, inside], images[perm][:, :, inside])
    assert torch.equal(out.targets_b, targets[perm])


@pytest.mark.parametrize("cfg", [
    MixConfig(beta=1.0, cutmix_prob=0.3, mixup_alpha=1.0, mixup_prob=0.5),  # alternating
    MixConfig(mixup_alpha=0.4, mixup_prob=0.6),  # Mixup alone
    MixConfig(beta=1.0, cutmix_prob=0.0, mixup_alpha=1.0, mixup_prob=1.0),  # seed-style beta with Mixup only
])
def test_one_draw_per_batch_picks_cutmix_then_mixup_then_nothing(cfg):
    images, targets = batch()
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


def test_mixed_loss_by_hand():
    logits = torch.tensor([[math.log(3.0), 0.0]])  # softmax (0.75, 0.25)
    images, _ = batch(1)
    mixed = MixedBatch(images, torch.tensor([0]), torch.tensor([1]), 0.3)
    expected = 0.3 * -math.log(0.75) + 0.7 * -math.log(0.25)
    assert mixed_cross_entropy(logits, mixed).item() == pytest.approx(expected, rel=1e-6)
    unmixed = MixedBatch(images, torch.tensor([0]), torch.tensor([0]), 1.0)
    assert mixed_cross_entropy(logits, unmixed).item() == pytest.approx(-math.log(0.75), rel=1e-6)
