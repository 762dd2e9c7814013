"""--compile falls back to eager execution, with one warning line, wherever compilation fails."""

import copy

import torch
from torch import nn

from idml.training.compiling import CompiledWithFallback, maybe_compile


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("simulated: the backward graph does not compile\nsecond line")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def _raise_at_compile(module):
    raise RuntimeError("simulated: torch.compile is not supported here")


def _raise_at_first_call(module):
    def call(*args):
        raise RuntimeError("simulated: no C++ compiler found")
    return call


def _raise_in_backward(module):
    return lambda x: _FailingBackward.apply(module(x))


def _check_fallback(compiler, capsys):
    reference, net = _net(), _net()
    wrapped = maybe_compile(net, True, compiler)
    x = torch.randn(3, 3, 6, 6)
    wrapped(x).sum().backward()
    reference(x).sum().backward()
    assert isinstance(wrapped, CompiledWithFallback) and not wrapped.is_compiled
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--compile failed" in err and "running eagerly" in err
    # the failed trial left no trace: same gradients and BatchNorm statistics as plain eager
    for got, want in zip(net.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad)
    wrapped(x)  # later calls stay eager and silent
    assert capsys.readouterr().err == ""


def test_fallback_when_torch_compile_raises(capsys):
    _check_fallback(_raise_at_compile, capsys)


def test_fallback_when_the_first_call_fails(capsys):
    _check_fallback(_raise_at_first_call, capsys)


def test_fallback_when_the_backward_fails_to_compile(capsys):
    _check_fallback(_raise_in_backward, capsys)


def test_working_compiler_is_used_and_state_follows_the_module(capsys):
    net = _net()
    calls = []

    def counting(module):
        def call(x):
            calls.append(module.training)
            return module(x)
        return call

    wrapped = maybe_compile(net, True, counting)
    before = copy.deepcopy(net.state_dict())
    wrapped(torch.randn(2, 3, 6, 6)).sum().backward()
    assert wrapped.is_compiled and calls == [True, True]  # the trial step, then the real one
    assert int(net[1].num_batches_tracked) == before["1.num_batches_tracked"] + 1  # trial undone
    wrapped.eval()
    assert not net.training
    assert maybe_compile(net, False) is net
    assert capsys.readouterr().err == ""
