"""safetensors: the weights alone (no pickle, no code), and beside them a JSON file to rebuild the model.

``model.safetensors`` holds the network's state_dict in float32 (contiguous, whatever memory format
it trained in); ``model.json`` holds the metadata every format carries plus the model settings
(``model``: :class:`idml.models.ModelSpec`) and the SHA-256 of the ``.safetensors`` file it belongs
to. :func:`load_safetensors_model` rebuilds the network from them; ``idml predict --model
model.safetensors`` runs it.

Reading is where hostile files arrive, so before the weights are loaded: the JSON is size-limited
and checked field by field, the weights file must be the one the JSON was written for (its SHA-256),
and the safetensors header's declared tensors must fit in the file (a header declaring terabytes in
a small file is refused before anything is allocated). The loaded state then goes through the
checkpoint's own checks (:meth:`idml.checkpoint.schema.Checkpoint.from_state`,
:func:`idml.inference.trained_from_checkpoint`): settings against weights, shapes, finite values.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import safetensors.torch
import torch

from idml.checkpoint.schema import Checkpoint
from idml.data.image_files import preparation
from idml.errors import IdmlError, one_line
from idml.export.metadata import MAX_METADATA_BYTES, ExportMetadata, bytes_sha256
from idml.files import open_to_read
from idml.inference import TrainedModel, trained_from_checkpoint

#: Bytes per element of each safetensors dtype (the format's names).
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
#: The safetensors library's own limit on the JSON header.
MAX_HEADER_BYTES = 100_000_000


def sidecar_path(weights: Path) -> Path:
    """``model.json`` beside ``model.safetensors``."""
    return weights.with_suffix(".json")


def export_safetensors(trained: TrainedModel, metadata: ExportMetadata) -> tuple[bytes, str]:
    """(the .safetensors bytes, the JSON text) of ``trained``'s network."""
    weights = {name: tensor.detach().to("cpu").contiguous() for name, tensor in trained.model.state_dict().items()}
    try:
        data = safetensors.torch.save(weights)
    except (RuntimeError, ValueError) as exc:  # e.g. weights sharing memory, which the format cannot hold
        raise IdmlError(f"safetensors cannot hold this network's weights: {one_line(exc)[:200]}") from exc
    settings = trained.spec.to_dict() if trained.spec is not None else None
    return data, replace(metadata, model=settings, weights_sha256=bytes_sha256(data)).to_json()


def _fail(where: str, detail: str) -> IdmlError:
    return IdmlError(f"cannot use {where}: {detail}")


def check_header(data: bytes, where: str) -> None:
    """Every tensor the header declares fits in the file, checked before anything is allocated."""
    if len(data) < 8:
        raise _fail(where, "shorter than a safetensors header; the file is truncated")
    length = int.from_bytes(data[:8], "little")
    if length > min(len(data) - 8, MAX_HEADER_BYTES):
        raise _fail(where, f"its header declares {length} bytes of JSON, the file holds {len(data) - 8}; "
                    "the file is truncated or corrupt")
    try:
        header = json.loads(data[8:8 + length])
    except (ValueError, RecursionError) as exc:
        raise _fail(where, "its safetensors header is not JSON; the file is corrupt") from exc
    if not isinstance(header, dict):
        raise _fail(where, "its safetensors header is not a JSON object; the file is corrupt")
    body = len(data) - 8 - length
    declared = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        declared += _declared_bytes(name, entry, body, where)
    if declared > body:
        raise _fail(where, f"its header declares {declared} bytes of tensors, the file holds {body}")


def _declared_bytes(name: str, entry: object, body: int, where: str) -> int:
    """The bytes tensor ``name`` declares, if its entry is well formed and within the file's ``body``."""
    ok = (isinstance(entry, dict) and entry.get("dtype") in DTYPE_BYTES
          and isinstance(entry.get("shape"), list) and len(entry["shape"]) <= 16
          and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
          and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
          and all(isinstance(o, int) and not isinstance(o, bool) for o in entry["data_offsets"]))
    if not ok:
        raise _fail(where, f"tensor {name[:60]!r} has a malformed header entry; the file is corrupt")
    nbytes = math.prod(entry["shape"]) * DTYPE_BYTES[entry["dtype"]]  # Python integers: no overflow
    begin, end = entry["data_offsets"]
    if nbytes > body or not 0 <= begin <= end <= body or end - begin != nbytes:
        raise _fail(where, f"tensor {name[:60]!r} declares {nbytes} bytes at offsets {begin}..{end}, the file holds "
                    f"{body}; refusing to allocate it")
    return nbytes


def trained_from_bytes(data: bytes, metadata: ExportMetadata, where: str, device: torch.device,
                       amp: str | None = None) -> TrainedModel:
    """Rebuild the network from the .safetensors bytes and the metadata of their JSON."""
    if metadata.model is None or metadata.weights_sha256 is None:
        raise _fail(where, "its JSON lacks the model settings and the weights' SHA-256 a .safetensors export writes")
    if bytes_sha256(data) != metadata.weights_sha256:
        raise _fail(where, "the weights are not those its JSON was written for (SHA-256 differs): the file is corrupt, "
                    "was modified, or the JSON belongs to another export")
    check_header(data, where)
    try:
        weights = safetensors.torch.load(data)
    except Exception as exc:  # the library's SafetensorError and the like
        raise _fail(where, f"not a readable safetensors file ({one_line(exc)[:160]})") from exc
    state = {"model": metadata.model, "state_dict": weights, "class_names": metadata.class_names,
             "mean": metadata.mean, "std": metadata.std, "input_size": metadata.input_size,
             "temperature": metadata.temperature, "config": {}}
    checkpoint = Checkpoint.from_state(state, where, len(data))
    trained = trained_from_checkpoint(checkpoint, Path(where), device, amp)
    if preparation(trained.dataset, trained.input_size) != metadata.preparation:
        raise _fail(where, f"its JSON says images are prepared as {metadata.preparation!r}, its model settings say "
                    f"{preparation(trained.dataset, trained.input_size)!r}")
    return trained


def _read(path: Path, what: str, limit: int | None = None) -> bytes:
    with open_to_read(path, what) as fh:
        if limit is not None and os.fstat(fh.fileno()).st_size > limit:
            raise _fail(str(path), f"more than {limit} bytes; not the JSON idml export writes")
        return fh.read()


def load_safetensors_model(path: str | Path, device: torch.device, amp: str | None = None
                           ) -> tuple[TrainedModel, ExportMetadata]:
    """The network of an exported ``.safetensors`` file and its ``.json``, checked (see the module
    docstring); ``amp`` as for a checkpoint (default: float32)."""
    path = Path(path)
    sidecar = sidecar_path(path)
    metadata = ExportMetadata.from_json(_read(sidecar, "model settings", MAX_METADATA_BYTES), str(sidecar))
    return trained_from_bytes(_read(path, "model"), metadata, str(path), device, amp), metadata
