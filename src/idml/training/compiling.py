"""``--compile``: torch.compile with a one-line-warning fallback to eager execution.

``torch.compile`` itself rarely fails: errors (no C++ compiler for inductor on the CPU, an
unsupported platform, an operator inductor cannot lower) surface when the compiled module is
first *called*, and the backward graph is only compiled at the first backward pass. So the
wrapper runs the first training call as a trial forward *and* backward (gradients discarded,
BatchNorm statistics restored), and a later *compilation* failure of a compiled call (a new graph
for eval mode, say) also falls back.

Only compilation failures fall back (:func:`is_compile_failure`): Dynamo's and Inductor's own
exceptions. An out-of-memory error, an NCCL or other distributed error, or a device fault raised
while a compiled graph runs is the run's real problem and propagates, even when Dynamo wrapped it.

Shapes: the model is compiled with ``dynamic=False`` for the batch shape of its first call in each
mode (training, evaluation). A call with another shape (the last, partial batch of an epoch or of
the validation set) runs the same module eagerly instead of compiling a second graph or a
dynamic-shape graph that would replace the specialised one: no recompilation, ever, and at most
one eager step per epoch.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
import torch._dynamo.exc
import torch._inductor.exc
import torch.distributed as dist
from torch import Tensor, nn

from idml.errors import one_line

Compiler = Callable[[nn.Module], Callable]
#: torch.compile for one fixed shape per mode (see the module docstring)
static_compile: Compiler = functools.partial(torch.compile, dynamic=False)

#: What "could not compile" raises: every Dynamo exception (BackendCompilerFailed, InductorError,
#: Unsupported, InternalTorchDynamoError, TritonMissing, ...) and Inductor's own (a C++ or CUDA
#: compiler that fails or is missing, an operator it cannot lower).
COMPILE_FAILURES: tuple[type[BaseException], ...] = (
    torch._dynamo.exc.TorchDynamoException,
    torch._inductor.exc.OperatorIssue,  # LoweringException, MissingOperatorWith(out)Decomp
    torch._inductor.exc.CppCompileError,
    torch._inductor.exc.InvalidCxxCompiler,
    torch._inductor.exc.CUDACompileError,
)
#: Never a reason to fall back, wherever they were raised or wrapped: the eager run would fail the same way.
NEVER_SWALLOWED: tuple[type[BaseException], ...] = (
    torch.OutOfMemoryError, dist.DistError, torch.AcceleratorError,
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and not any(exc is e for e in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def is_compile_failure(exc: BaseException) -> bool:
    """True for an error of compilation itself; False for anything the run would hit eagerly too."""
    chain = _chain(exc)
    if any(isinstance(e, NEVER_SWALLOWED) for e in chain):
        return False
    return isinstance(exc, COMPILE_FAILURES)


def _output_tensors(out: object) -> list[Tensor]:
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [t for t in items if isinstance(t, Tensor) and t.requires_grad]


class CompiledWithFallback(nn.Module):
    """Runs ``compiler(module)``; on the first error warns once and runs ``module`` eagerly.

    ``module`` stays the registered child, so ``train()``/``eval()``, ``parameters()`` and the
    state dict behave as the plain module's (with a ``module.`` prefix).
    """

    def __init__(self, module: nn.Module, compiler: Compiler = static_compile) -> None:
        super().__init__()
        self.module = module
        # Kept out of the registered children: the compiled module wraps ``module`` itself.
        self.__dict__["compiled"] = None
        self.trial_pending = True
        self.shapes: dict[bool, tuple] = {}  # training mode -> the input shapes compiled for
        try:
            self.__dict__["compiled"] = compiler(module)
        except Exception as exc:  # raised by torch.compile itself (e.g. an unsupported Python): nothing ran yet
            self._give_up(exc)

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def _give_up(self, exc: Exception) -> None:
        self.__dict__["compiled"] = None
        print(f"warning: --compile failed here ({type(exc).__name__}: {one_line(exc)[:200]}); running eagerly",
              file=sys.stderr, flush=True)

    def _trial_step(self, *args, **kwargs) -> None:
        """Compile forward and backward now, leaving parameters' gradients and buffers untouched."""
        self.trial_pending = False
        saved = [b.detach().clone() for b in self.module.buffers()]
        try:
            outputs = _output_tensors(self.compiled(*args, **kwargs))
            params = [p for p in self.module.parameters() if p.requires_grad]
            if outputs and params:
                total = sum(t.float().sum() for t in outputs)
                torch.autograd.grad(total, params, allow_unused=True)
        finally:
            with torch.no_grad():
                for buffer, value in zip(self.module.buffers(), saved, strict=True):
                    buffer.copy_(value)

    def _compiled_shape(self, args: tuple, kwargs: dict) -> bool:
        """True when this call has the shapes compiled for in this mode (the first call's)."""
        shape = tuple(tuple(a.shape) for a in (*args, *kwargs.values()) if isinstance(a, Tensor))
        return self.shapes.setdefault(self.training, shape) == shape

    def forward(self, *args, **kwargs):
        if self.compiled is not None and self._compiled_shape(args, kwargs):
            try:
                if self.trial_pending and self.training and torch.is_grad_enabled():
                    self._trial_step(*args, **kwargs)
                return self.compiled(*args, **kwargs)
            except Exception as exc:
                if not is_compile_failure(exc):
                    raise
                self._give_up(exc)
        return self.module(*args, **kwargs)


def maybe_compile(model: nn.Module, enabled: bool, compiler: Compiler = static_compile) -> nn.Module:
    """``model`` itself, or wrapped in :class:`CompiledWithFallback` when ``enabled``."""
    return CompiledWithFallback(model, compiler) if enabled else model
