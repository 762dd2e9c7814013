"""--compile falls back to eager execution, with one warning line, wherever compilation fails, and
only then: out-of-memory, distributed and other runtime errors propagate. Partial batches run eagerly."""

import copy

import pytest
import torch
import torch._inductor.exc
import torch.distributed as dist
from torch import nn

from idml.training.compiling import CompiledWithFallback, is_compile_failure, maybe_compile


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise torch._inductor.exc.InductorError(RuntimeError("simulated: the backward graph does not compile\n"
                                                             "second line"), None)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def _raise_at_compile(module):
    raise RuntimeError("simulated: torch.compile is not supported here")


def _raise_at_first_call(module):
    def call(*args):
        raise torch._inductor.exc.InvalidCxxCompiler("simulated-cc")
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


def _raising_at_first_call(exc: BaseException):
    def compiler(module):
        def call(*args):
            raise exc
        return call
    return compiler


def _wrapped_by_dynamo(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as cause:
            raise torch._inductor.exc.InductorError(cause, None) from cause
    except BaseException as wrapped:
        return wrapped


NOT_COMPILATION = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    dist.DistBackendError("NCCL communicator was aborted"),
    RuntimeError("mat1 and mat2 shapes cannot be multiplied"),  # a bug: eager would fail the same way
]


@pytest.mark.parametrize("error", NOT_COMPILATION, ids=["oom", "nccl", "bug"])
def test_errors_that_are_not_compilation_failures_propagate(error, capsys):
    wrapped = maybe_compile(_net(), True, _raising_at_first_call(error))
    with pytest.raises(type(error)):
        wrapped(torch.randn(3, 3, 6, 6))
    assert wrapped.is_compiled and capsys.readouterr().err == ""  # no fallback, no warning


@pytest.mark.parametrize("inner", NOT_COMPILATION[:2], ids=["oom", "nccl"])
def test_out_of_memory_or_nccl_wrapped_by_the_compiler_still_propagates(inner):
    error = _wrapped_by_dynamo(inner)
    assert isinstance(error, torch._inductor.exc.InductorError) and not is_compile_failure(error)
    wrapped = maybe_compile(_net(), True, _raising_at_first_call(error))
    with pytest.raises(torch._inductor.exc.InductorError):
        wrapped(torch.randn(3, 3, 6, 6))


def test_compilation_failures_are_recognised():
    assert is_compile_failure(torch._dynamo.exc.Unsupported("graph break"))
    assert is_compile_failure(torch._dynamo.exc.InternalTorchDynamoError("internal"))
    assert is_compile_failure(_wrapped_by_dynamo(ValueError("a lowering failed")))
    assert is_compile_failure(torch._inductor.exc.CppCompileError(["cc"], "error: no such file"))


def test_partial_batches_run_eagerly_instead_of_recompiling():
    net, calls = _net(), []

    def counting(module):
        def call(x):
            calls.append((module.training, x.shape[0]))
            return module(x)
        return call

    wrapped = maybe_compile(net, True, counting)
    for batch in (4, 4, 3, 4):  # training: the first shape is compiled, the partial batch is not
        wrapped(torch.randn(batch, 3, 6, 6)).sum().backward()
    wrapped.eval()
    with torch.no_grad():
        for batch in (5, 2, 5):  # evaluation: its own first shape
            wrapped(torch.randn(batch, 3, 6, 6))
    assert calls == [(True, 4)] * 4 + [(False, 5)] * 2  # trial + 3 full training calls; 2 full eval calls
