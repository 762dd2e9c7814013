"""The introspective similarity metric against the paper's formula (Wang et al., TPAMI 2023), restated here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import idml
from idml.data.loaders import InMemoryLoader
from idml.ism import HeadOutput, ISMHead
from idml.training.trainer import Trainer

B, C, D, K = 6, 5, 16, 4


def reference_logits(s, f, p, u, pu=None, lam=5.0):
    """z = 1 - (1 - s) exp(-d_u / (lam d_s)) with distances by direct broadcasting (no matmul trick)."""
    d_s = (f[:, None, :] - p[None, :, :]).pow(2).sum(-1)
    pu = torch.zeros(p.shape[0], u.shape[1], dtype=u.dtype) if pu is None else pu
    d_u = (u[:, None, :] - pu[None, :, :]).pow(2).sum(-1)
    return 1 - (1 - s) * torch.exp(-d_u / (lam * d_s))


def random_inputs(seed: int, with_pu: bool, dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, generator=g, dtype=dtype) * 3
    f = torch.randn(B, D, generator=g, dtype=dtype)
    p = torch.randn(C, D, generator=g, dtype=dtype)
    u = torch.rand(B, K, generator=g, dtype=dtype) * 4  # ReLU output: non-negative, d_u comparable to d_s
    pu = torch.rand(C, K, generator=g, dtype=dtype) * 4 if with_pu else None
    return [s, f, p, u, pu]


def float_inputs(seed: int) -> list[torch.Tensor]:
    """s, f, p, u in float32 (zero prototype uncertainty)."""
    return [t.float() for t in random_inputs(seed, False)[:4]]


def max_relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs() / ref.abs()).max().item()


@pytest.mark.parametrize("with_pu", [False, True], ids=["zero_prototype_uncertainty", "prototype_uncertainty"])
@pytest.mark.parametrize("seed", range(5))
def test_values_match_formula(seed: int, with_pu: bool) -> None:
    inputs = random_inputs(seed, with_pu)
    ref = reference_logits(*inputs)
    # the exponent must matter: the ISM is far from the identity on these inputs
    assert (ref - inputs[0]).abs().max() > 0.1
    out = idml.introspective_logits(*(t.float() if t is not None else None for t in inputs))
    assert out.dtype == torch.float32 and out.shape == (B, C)
    assert max_relative_error(out, ref) < 1e-5


def test_lambda_is_used() -> None:
    s, f, p, u, _ = random_inputs(7, False)
    for lam in (0.5, 5.0, 50.0):
        out = idml.introspective_logits(s.float(), f.float(), p.float(), u.float(), lam=lam)
        assert max_relative_error(out, reference_logits(s, f, p, u, lam=lam)) < 1e-5


@pytest.mark.parametrize("with_pu", [False, True], ids=["zero_prototype_uncertainty", "prototype_uncertainty"])
def test_gradient_matches_formula(with_pu: bool) -> None:
    ref_inputs = [t.requires_grad_() if t is not None else None for t in random_inputs(11, with_pu)]
    inputs = [t.detach().float().requires_grad_() if t is not None else None for t in ref_inputs]
    upstream = torch.randn(B, C, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (reference_logits(*ref_inputs) * upstream).sum().backward()
    (idml.introspective_logits(*inputs) * upstream.float()).sum().backward()
    for name, ours, ref in zip(["s", "f", "p", "u", "pu"], inputs, ref_inputs, strict=True):
        if ref is None:
            continue
        assert ours.grad is not None, f"no gradient reaches {name}"
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_gradcheck_in_float32() -> None:
    """Finite differences of the float32 function itself (gradcheck needs float64 inputs; the
    function computes in float32 whatever it gets, hence the coarse step and tolerances)."""
    s, f, p, u, pu = (t.requires_grad_() for t in random_inputs(5, True))

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return idml.introspective_logits(*args).double()

    assert torch.autograd.gradcheck(fn, (s, f, p, u, pu), eps=1e-3, atol=2e-3, rtol=1e-2)


def test_reference_gradcheck() -> None:
    """The reference's own autograd is checked in float64, so the comparison above is meaningful."""
    inputs = tuple(t.requires_grad_() for t in random_inputs(6, True))
    assert torch.autograd.gradcheck(reference_logits, inputs)


def test_zero_uncertainty_is_identity() -> None:
    s, f, p, u = float_inputs(1)
    out = idml.introspective_logits(s, f, p, torch.zeros_like(u))
    torch.testing.assert_close(out, s, rtol=1e-6, atol=1e-6)  # 1 - (1 - s) rounds


def adversarial_cases() -> dict[str, list[torch.Tensor]]:
    s, f, p, u = float_inputs(2)
    on_prototype = p[torch.arange(B) % C].clone()
    zeros = torch.zeros
    return {
        "embedding_on_prototype": [s, on_prototype, p, u],
        "embedding_on_prototype_huge_uncertainty": [s, on_prototype, p, u * 1e30],
        "embedding_on_prototype_zero_uncertainty": [s, on_prototype, p, zeros(B, K)],
        "all_zero": [zeros(B, C), zeros(B, D), zeros(C, D), zeros(B, K)],
        "all_zero_with_uncertainty": [s, zeros(B, D), zeros(C, D), u],
        "zero_uncertainty": [s, f, p, zeros(B, K)],
        "huge_uncertainty": [s, f, p, u * 1e30],
        "huge_embedding": [s, f * 1e30, p * 1e30, u],
        "large_everything": [s * 1e30, f * 1e25, p * 1e25, u * 1e25],
        "tiny_everything": [s * 1e-30, f * 1e-30, p * 1e-30, u * 1e-30],
        "largest_float32": [s.sign() * 3e38, f.sign() * 3e38, -p.sign() * 3e38, u.sign() * 3e38],
    }


@pytest.mark.parametrize("case", list(adversarial_cases()))
def test_finite_values_and_gradients(case: str) -> None:
    inputs = [t.clone().requires_grad_() for t in adversarial_cases()[case]]
    out = idml.introspective_logits(*inputs)
    assert torch.isfinite(out).all(), f"non-finite values: {out}"
    out.sum().backward()
    for name, t in zip(["s", "f", "p", "u"], inputs, strict=True):
        assert torch.isfinite(t.grad).all(), f"non-finite gradient of {name}"


@pytest.mark.parametrize("case", ["huge_embedding", "large_everything", "tiny_everything", "huge_uncertainty"])
def test_extreme_scales_keep_official_values(case: str) -> None:
    """Wherever the float64 formula is finite, extreme magnitudes still give its value."""
    inputs = adversarial_cases()[case]
    ref = reference_logits(*(t.double() for t in inputs))
    assert torch.isfinite(ref).all()
    out = idml.introspective_logits(*inputs)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-20, 1e-5, 1e5, 1e20])
def test_invariant_to_a_common_scale_of_the_embeddings(scale: float) -> None:
    """d_u / d_s does not change when f, P and u are scaled together."""
    s, f, p, u = float_inputs(3)
    expected = idml.introspective_logits(s, f, p, u)
    torch.testing.assert_close(idml.introspective_logits(s, f * scale, p * scale, u * scale), expected,
                               rtol=1e-5, atol=1e-6)


def test_float32_under_bf16_autocast() -> None:
    s, f, p, u, pu = (t.to(torch.bfloat16) for t in random_inputs(4, True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = idml.introspective_logits(s, f, p, u, pu)
    assert out.dtype == torch.float32
    ref = reference_logits(*(t.double() for t in (s, f, p, u, pu)))
    assert max_relative_error(out, ref) < 1e-5  # the bf16 inputs themselves are used in full float32


# -- the head -------------------------------------------------------------------------------------

def test_head_prototypes_are_fc_of_identity() -> None:
    torch.manual_seed(0)
    head = ISMHead(D, C, uncertainty_dim=K)
    official = head.fc(torch.eye(D)).t()
    torch.testing.assert_close(head.prototypes(), official)


def official_head_logits(head: ISMHead, features: torch.Tensor) -> torch.Tensor:
    """The official wiring, in float64: prototypes from fc(eye(D)).T, u = ReLU(U f + c)."""
    fc = head.fc.double()
    s = fc(features)
    prototypes = fc(torch.eye(features.shape[1], dtype=torch.float64)).t()
    u = torch.relu(head.uncertainty.double()(features))
    return reference_logits(s, features, prototypes, u, lam=head.lam)


def test_head_matches_official_wiring_including_gradients() -> None:
    torch.manual_seed(1)
    head = ISMHead(D, C, uncertainty_dim=K)
    reference = ISMHead(D, C, uncertainty_dim=K)
    reference.load_state_dict(head.state_dict())
    features = torch.randn(B, D, dtype=torch.float64)
    targets = torch.arange(B) % C

    out = head(features.float().requires_grad_())
    torch.testing.assert_close(out.logits, head.fc(features.float()))
    torch.testing.assert_close(out.uncertainty, torch.relu(head.uncertainty(features.float())))
    nn.functional.cross_entropy(out.train_logits, targets).backward()

    ref_z = official_head_logits(reference, features)
    torch.testing.assert_close(out.train_logits.double(), ref_z, rtol=1e-5, atol=1e-6)
    nn.functional.cross_entropy(ref_z, targets).backward()
    for name in ("fc.weight", "fc.bias", "uncertainty.weight", "uncertainty.bias"):
        ours = head.get_parameter(name).grad
        ref = reference.get_parameter(name).grad
        assert ours is not None and ours.abs().sum() > 0, f"no gradient reaches {name}"
        torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")


def test_prototype_gradient_reaches_bias_through_every_coordinate() -> None:
    """P_c = w_c + b_c * 1: d(sum P)/d b_c = D."""
    head = ISMHead(D, C, uncertainty_dim=K)
    head.prototypes().sum().backward()
    torch.testing.assert_close(head.fc.bias.grad, torch.full((C,), float(D)))
    torch.testing.assert_close(head.fc.weight.grad, torch.ones(C, D))


def test_without_ism_train_logits_are_the_logits() -> None:
    head = ISMHead(D, C, uncertainty_dim=None)
    assert not head.ism and head.uncertainty is None
    out = head(torch.randn(B, D))
    assert out.uncertainty is None
    assert out.train_logits is out.logits
    model = idml.build_model("resnet", "cifar10", depth=8, bottleneck=False, ism=False)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.uncertainty is None and torch.equal(out.train_logits, out.logits)


def test_with_ism_train_logits_differ_and_uncertainty_is_non_negative() -> None:
    torch.manual_seed(0)
    model = idml.build_model("resnet", "cifar10", depth=8, bottleneck=False)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.uncertainty.shape == (2, 128) and (out.uncertainty >= 0).all()
    assert not torch.equal(out.train_logits, out.logits)


# -- which logits the trainer reads ---------------------------------------------------------------

class TwoHeaded(nn.Module):
    """Plain logits from one parameter (always right), training logits from another (always wrong)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.plain = nn.Parameter(torch.zeros(()))
        self.train_only = nn.Parameter(torch.zeros(()))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> HeadOutput:
        labels = x[:, 0, 0, 0].round().long()
        right = nn.functional.one_hot(labels, self.num_classes).float() * 10
        wrong = nn.functional.one_hot((labels + 1) % self.num_classes, self.num_classes).float() * 10
        return HeadOutput(right + self.plain, wrong * (1 + self.train_only), None)


def tiny_trainer(tmp_path, model: nn.Module, num_classes: int = 4) -> Trainer:
    from idml.config import TrainConfig
    from idml.data.types import DataBundle
    from idml.device.runtime import Runtime

    labels = torch.arange(8) % num_classes
    images = labels.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).float()
    loader = InMemoryLoader(images, labels, batch_size=8, train=True)  # one step
    val = InMemoryLoader(images, labels, batch_size=4, train=False)
    data = DataBundle(loader, val, val, [str(i) for i in range(num_classes)], (0.0,) * 3, (1.0,) * 3, 4,
                      train_transform=lambda x, rng: x, eval_transform=lambda x: x)
    cfg = TrainConfig(dataset="cifar10", epochs=1, verbose=False, output_dir=str(tmp_path), lr=0.1)
    return Trainer(cfg, model, data, Runtime(torch.device("cpu"), None, False), printer=lambda _m: None)


def test_validation_reads_plain_logits(tmp_path) -> None:
    trainer = tiny_trainer(tmp_path, TwoHeaded(4))
    result = trainer.validate(0)
    assert result.top1_err == 0.0 and result.images == 8


def test_training_reads_introspective_logits(tmp_path) -> None:
    model = TwoHeaded(4)
    trainer = tiny_trainer(tmp_path, model)
    result = trainer.train_epoch(0)
    assert result.top1_err == 100.0  # the training meter saw the (wrong) training logits
    assert model.plain.grad is None  # the loss never read the plain logits
    assert model.train_only.grad is not None and model.train_only.item() != 0.0
    assert np.isfinite(result.loss)
