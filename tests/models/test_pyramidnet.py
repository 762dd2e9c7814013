"""PyramidNet's shortcut padding: the allocation-free add equals an explicit zero-pad + add."""

import pytest
import torch
import torch.nn.functional as F

from idml.models.pyramidnet import add_zero_padded
from idml.models.registry import build_model


def _reference(out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    return out + F.pad(shortcut, (0, 0, 0, 0, 0, out.shape[1] - shortcut.shape[1]))


def _values_and_grads(fn, out_src, sc_src, memory_format):
    out_leaf = out_src.clone().contiguous(memory_format=memory_format).requires_grad_()
    sc_leaf = sc_src.clone().contiguous(memory_format=memory_format).requires_grad_()
    result = fn(out_leaf * 1.0, sc_leaf)  # a non-leaf, like BatchNorm's output
    weights = torch.randn(result.shape, generator=torch.Generator().manual_seed(1))
    (result * weights).sum().backward()
    return result.detach(), out_leaf.grad, sc_leaf.grad


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("extra", [0, 3])
def test_padding_add_matches_explicit_zero_pad(memory_format, extra):
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(4, 5 + extra, 6, 6, generator=gen)
    shortcut = torch.randn(4, 5, 6, 6, generator=gen)
    got = _values_and_grads(add_zero_padded, out, shortcut, memory_format)
    want = _values_and_grads(_reference, out, shortcut, memory_format)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_pyramidnet_trains_and_compiles_with_the_padding():
    """Whole network: eager NCHW, eager channels_last and compiled (traced: the pad-and-add branch)
    give the same gradients."""
    torch.manual_seed(0)
    model = build_model("pyramidnet", "cifar10", depth=8, alpha=12, bottleneck=False)
    x = torch.randn(2, 3, 32, 32)

    def grads(net, images):
        net.zero_grad(set_to_none=True)
        net(images).train_logits.sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    eager = grads(model, x)
    last = grads(model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last))
    model.to(memory_format=torch.contiguous_format)
    try:
        compiled = grads(torch.compile(model, backend="aot_eager"), x)
    except Exception as exc:  # no C++ compiler or unsupported platform: nothing to compare
        pytest.skip(f"torch.compile unavailable: {type(exc).__name__}")
    for a, b, c in zip(eager, last, compiled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-5)
