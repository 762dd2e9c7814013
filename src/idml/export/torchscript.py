"""TorchScript: the deployed network traced with ``torch.jit.trace``, its metadata an extra file.

``torch.jit`` is deprecated in torch 2.14 (its save and load warn so), but it is still the format
that C++ (libtorch) and older mobile runtimes load; prefer ONNX where you can. Tracing records
the operations run on one example batch, so a network whose Python code branches on its input's
values would be recorded along one branch: every export is therefore run again on other images and
batch sizes and compared with idml's own outputs before it is written
(:func:`idml.export.graph.check_outputs`).

Loading a TorchScript file runs the code it holds: idml does not read them back except right after
writing one, from its own bytes. Read one with ``torch.jit.load(path, _extra_files={"idml.json": ""})``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from idml.errors import IdmlError, one_line
from idml.export.graph import DeployedClassifier, probe_images
from idml.export.metadata import OUTPUT_NAMES, TORCHSCRIPT_FILE, ExportMetadata


@contextlib.contextmanager
def _no_deprecation_notes() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_torchscript(deployed: DeployedClassifier, metadata: ExportMetadata, net_type: str) -> bytes:
    """The traced module, saved with the metadata as the extra file ``idml.json``."""
    try:
        with _no_deprecation_notes(), torch.no_grad():
            traced = torch.jit.trace(deployed, probe_images(metadata.input_size, 2), check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_FILE: metadata.to_json()})
    except Exception as exc:  # tracing raises whatever the network's code raises
        raise IdmlError(f"torch.jit.trace cannot trace --net_type {net_type}: {one_line(exc)[:240]}") from exc
    return buffer.getvalue()


def load_torchscript(data: bytes) -> tuple[torch.jit.ScriptModule, str]:
    """(module, its idml.json) from the bytes :func:`export_torchscript` wrote."""
    extra = {TORCHSCRIPT_FILE: ""}
    with _no_deprecation_notes():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    text = extra[TORCHSCRIPT_FILE]
    return module, text.decode() if isinstance(text, bytes) else text


def run_torchscript(module: torch.jit.ScriptModule, images: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outputs = module(images)
    return {name: out.numpy() for name, out in zip(OUTPUT_NAMES, outputs, strict=True)}
