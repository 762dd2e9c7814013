"""ONNX: written with torch.onnx's ``torch.export``-based exporter, read back with onnx and onnxruntime.

Why that exporter (``dynamo=True``): it is torch's default since 2.9 and records the batch
dimension as symbolic; the TorchScript-based one is faster and writes low opsets itself, but torch
2.14 warns that it is deprecated and will be removed, and it stops at opset 20. The chosen one
writes opset 18 and later natively; for ``--opset`` below 18 the model is lowered with ONNX's
version converter, and where that cannot express an operator the export stops with one line naming
the operators whose current form is newer than the opset asked for.

Reading a file (``idml predict --model model.onnx``) checks, in order: it parses; it refers to no
external data (a path in a tensor would make onnxruntime read any file); it carries idml's
metadata; its graph is the one the metadata's SHA-256 was taken of (a flipped byte in a weight
parses fine and would give wrong outputs silently); ONNX's checker accepts it; its input and
outputs are those of :class:`idml.export.graph.DeployedClassifier`, at the metadata's input size
and number of classes. onnxruntime then loads the bytes already checked, never the file again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnx.checker
import onnx.external_data_helper
import onnx.version_converter
import onnxruntime
import torch
from google.protobuf.message import DecodeError
from onnx import TensorProto

from idml.errors import DataError, IdmlError, one_line
from idml.export.formats import DEFAULT_OPSET
from idml.export.graph import DeployedClassifier, probe_images
from idml.export.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ExportMetadata, bytes_sha256
from idml.files import open_to_read

#: An ONNX file is one protobuf message, which cannot exceed 2 GiB.
MAX_BYTES = 2**31 - 1


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress lines, warnings and log records are not the user's business: the
    export either succeeds and is checked, or fails with one line."""
    chatty = ("torch", "onnxscript", "onnx_ir")
    names = [name for name in logging.root.manager.loggerDict if name.split(".")[0] in chatty]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
              contextlib.redirect_stderr(io.StringIO())):  # graph dumps of a failed torch.export
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def graph_sha256(model: onnx.ModelProto) -> str:
    """SHA-256 of the serialised graph: operators and weights, not the metadata that records it."""
    return bytes_sha256(model.graph.SerializeToString(deterministic=True))


def _opset(model: onnx.ModelProto) -> int | None:
    """The version of the standard operator set the model uses."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _newer_operators(model: onnx.ModelProto, opset: int) -> list[str]:
    """The graph's standard operators whose form in the model's opset came after ``opset``."""
    written = _opset(model) or opset
    newer = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            since = onnx.defs.get_schema(node.op_type, written, "").since_version
        except onnx.defs.SchemaError:
            continue
        if since > opset:
            newer.add(f"{node.op_type} (opset {since})")
    return sorted(newer)


def _lower(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` in ``opset`` (below the exporter's), by ONNX's version converter, or one line."""
    try:
        lowered = onnx.version_converter.convert_version(model, opset)
        onnx.checker.check_model(lowered)
    except Exception as exc:  # the converter raises RuntimeError with an assertion's text, the checker its own
        newer = _newer_operators(model, opset)
        listed = f"{', '.join(newer[:8])}{' ...' if len(newer) > 8 else ''}"
        raise IdmlError(f"--opset {opset} cannot express this network: ONNX's version converter could not rewrite it "
                        f"from opset {DEFAULT_OPSET} ({one_line(exc)[:90]}); its operators newer than opset {opset}: "
                        f"{listed or 'none'}; use --opset {DEFAULT_OPSET} or higher") from exc
    return lowered


def _first_cause(exc: BaseException) -> BaseException:
    """The exception at the root of torch.onnx's chain ("step 1/3 failed" says less than why)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def export_onnx(deployed: DeployedClassifier, metadata: ExportMetadata, opset: int, net_type: str) -> bytes:
    """The serialised ONNX model of ``deployed``, its metadata (with the graph's SHA-256) in
    ``metadata_props``; the batch dimension is dynamic."""
    images = probe_images(metadata.input_size, 2)
    try:
        with _quiet():
            program = torch.onnx.export(
                deployed, (images,), None, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                opset_version=max(opset, DEFAULT_OPSET), dynamo=True, verbose=False,
                dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
            model = program.model_proto
    except Exception as exc:  # torch.export and the ONNX translation raise many kinds
        raise IdmlError(f"torch.onnx cannot export --net_type {net_type}: {one_line(_first_cause(exc))[:240]}") from exc
    if opset < DEFAULT_OPSET:
        model = _lower(model, opset)
    written = _opset(model)
    if written != opset:  # torch.onnx falls back to an opset it knows instead of failing
        raise IdmlError(f"--opset {opset}: torch.onnx {torch.__version__} wrote opset {written} instead; use an opset "
                        f"from {DEFAULT_OPSET} to the newest this torch writes")
    onnx.helper.set_model_props(model, {METADATA_KEY: replace(metadata, graph_sha256=graph_sha256(model)).to_json()})
    if model.ByteSize() > MAX_BYTES:
        raise IdmlError(f"the ONNX model would take {model.ByteSize()} bytes, more than ONNX's 2 GiB limit")
    return model.SerializeToString()


# -- reading an exported file ----------------------------------------------------------------------

def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph`` and its subgraphs: initializers and constant attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _check_interface(model: onnx.ModelProto, metadata: ExportMetadata, fail) -> None:
    """The graph takes uint8 N x 3 x S x S (S: the metadata's input size) and returns the three
    outputs, logits of the metadata's number of classes."""
    stored = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in stored]
    if [v.name for v in inputs] != [INPUT_NAME]:
        raise fail(f"its graph takes {[v.name for v in inputs]}, not one input {INPUT_NAME!r}")
    images = inputs[0]
    if images.type.tensor_type.elem_type != TensorProto.UINT8:
        raise fail(f"its input {INPUT_NAME!r} is not uint8 images")
    dims, size = _dims(images), metadata.input_size
    if len(dims) != 4 or dims[1] != 3 or dims[2:] != [size, size]:
        raise fail(f"its metadata says {size}x{size} RGB images but the graph takes {' x '.join(map(str, dims))}")
    outputs = [v.name for v in model.graph.output]
    if outputs != list(OUTPUT_NAMES):
        raise fail(f"its graph returns {outputs}, not {list(OUTPUT_NAMES)}")
    classes = _dims(model.graph.output[0])
    if len(classes) != 2 or classes[1] != len(metadata.class_names):
        raise fail(f"its metadata names {len(metadata.class_names)} classes but the graph's logits are "
                   f"{' x '.join(map(str, classes))}")


def _parse(data: bytes, where: str) -> tuple[onnx.ModelProto, ExportMetadata]:
    """The checks of the module docstring, up to onnxruntime."""
    def fail(detail: str) -> IdmlError:
        return IdmlError(f"cannot use {where}: {detail}")

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise fail("not an ONNX file, or truncated or corrupt") from exc
    if not model.HasField("graph"):
        raise fail("not an ONNX model (no graph), or truncated or corrupt")
    if any(onnx.external_data_helper.uses_external_data(t) for t in _tensors(model.graph)):
        raise fail("it refers to external data files, which idml export never writes; refusing to read them")
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise fail(f"it carries no idml metadata ({METADATA_KEY!r} in metadata_props); only files written by "
                   "idml export can be used")
    metadata = ExportMetadata.from_json(props[METADATA_KEY], where)
    if metadata.graph_sha256 != graph_sha256(model):
        raise fail("its graph is not the one exported (SHA-256 differs from its metadata's): the file is corrupt "
                   "or was modified; export it again")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, RuntimeError) as exc:
        raise fail(f"not a valid ONNX model ({one_line(exc)[:160]})") from exc
    _check_interface(model, metadata, fail)
    return model, metadata


@dataclass
class OnnxModel:
    """An exported ONNX model in an onnxruntime session, with its metadata."""

    where: str
    metadata: ExportMetadata
    session: onnxruntime.InferenceSession

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The three outputs for a uint8 batch N x 3 x S x S (a wrong shape or type is one line)."""
        size = self.metadata.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, size, size):
            shape = " x ".join(map(str, images.shape))
            raise DataError(f"{self.where} takes uint8 RGB images N x 3 x {size} x {size}, not {images.dtype} "
                            f"{shape}; prepare them as docs/export.md says")
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images)})
        return dict(zip(OUTPUT_NAMES, outputs, strict=True))


def session_from_bytes(data: bytes, where: str) -> OnnxModel:
    """Check ``data`` (an exported ONNX file's bytes) and open it in onnxruntime (CPU)."""
    _, metadata = _parse(data, where)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    try:
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail, InvalidGraph, NotImplemented ...
        raise IdmlError(f"onnxruntime {onnxruntime.__version__} cannot run {where}: {one_line(exc)[:200]}") from exc
    return OnnxModel(where, metadata, session)


def load_onnx(path: str | Path) -> OnnxModel:
    """An exported ONNX file, checked and ready to run; any problem is one line."""
    path = Path(path)
    with open_to_read(path, "model") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_BYTES:
            raise IdmlError(f"cannot use {path}: {size} bytes, more than an ONNX file can hold")
        data = fh.read()
    return session_from_bytes(data, str(path))
