"""The export formats: the file each writes, the packages each needs, and the extra installing them.

A table without imports, so that ``idml export --help`` and a refused flag come before torch loads,
and a missing package is named before any work (:func:`require`).
"""

from __future__ import annotations

from dataclasses import dataclass

from idml import extras


@dataclass(frozen=True)
class Format:
    #: what the output file's name must end with
    suffix: str
    #: the packages it needs, and the extra that installs them
    packages: tuple[str, ...]
    extra: str | None


FORMATS: dict[str, Format] = {
    # torch.onnx's exporter needs onnxscript; every export is run back in onnxruntime before it is written
    "onnx": Format(".onnx", ("onnx", "onnxscript", "onnxruntime"), "onnx"),
    "torchscript": Format(".pt", (), None),
    "safetensors": Format(".safetensors", ("safetensors",), "safetensors"),
}
#: What ``idml predict --model FILE.onnx`` needs (no exporter).
ONNX_RUNTIME_PACKAGES = ("onnx", "onnxruntime")
#: The ONNX opset written by default: the lowest torch.onnx's exporter writes natively (onnxruntime
#: runs it from version 1.14); lower ones go through ONNX's version converter.
DEFAULT_OPSET = 18
#: The opsets ``--opset`` may name: ONNX's version converter goes down to opset 7, and no opset
#: beyond 99 exists (ONNX 1.17 writes 22).
MIN_OPSET, MAX_OPSET = 7, 99


def require(packages: tuple[str, ...], extra: str | None, purpose: str) -> None:
    """One line naming the extra to install when any of ``packages`` is missing (the line of
    :func:`idml.extras.require`, which every optional part's check gives)."""
    if extra is not None:
        extras.require(extra, purpose, packages)
