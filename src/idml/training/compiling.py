"""``--compile``: torch.compile with a one-line-warning fallback to eager execution.

``torch.compile`` itself rarely fails: errors (no C++ compiler for inductor on the CPU, an
unsupported platform, an operator inductor cannot lower) surface when the compiled module is
first *called*, and the backward graph is only compiled at the first backward pass. So the
wrapper runs the first training call as a trial forward *and* backward (gradients discarded,
BatchNorm statistics restored), and any later failure of a compiled call also falls back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

from idml.errors import one_line

Compiler = Callable[[nn.Module], Callable]


def _output_tensors(out: object) -> list[Tensor]:
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [t for t in items if isinstance(t, Tensor) and t.requires_grad]


class CompiledWithFallback(nn.Module):
    """Runs ``compiler(module)``; on the first error warns once and runs ``module`` eagerly.

    ``module`` stays the registered child, so ``train()``/``eval()``, ``parameters()`` and the
    state dict behave as the plain module's (with a ``module.`` prefix).
    """

    def __init__(self, module: nn.Module, compiler: Compiler = torch.compile) -> None:
        super().__init__()
        self.module = module
        # Kept out of the registered children: the compiled module wraps ``module`` itself.
        self.__dict__["compiled"] = None
        self.trial_pending = True
        try:
            self.__dict__["compiled"] = compiler(module)
        except Exception as exc:  # raised by torch.compile itself (e.g. an unsupported Python)
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

    def forward(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                if self.trial_pending and self.training and torch.is_grad_enabled():
                    self._trial_step(*args, **kwargs)
                return self.compiled(*args, **kwargs)
            except Exception as exc:
                self._give_up(exc)
        return self.module(*args, **kwargs)


def maybe_compile(model: nn.Module, enabled: bool, compiler: Compiler = torch.compile) -> nn.Module:
    """``model`` itself, or wrapped in :class:`CompiledWithFallback` when ``enabled``."""
    return CompiledWithFallback(model, compiler) if enabled else model
