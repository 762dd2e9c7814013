"""``idml export``: a checkpoint to a deployable file, written only once it is proven to compute what idml does.

One export, in order: the format's packages are present (else one line naming the extra, before any
work); the output path fits the format; the checkpoint loads (float32, whatever precision and
memory format it trained in; ``ema``: its moving average); idml computes its outputs on a probe
batch (:func:`idml.export.graph.reference_outputs`); the format serialises the
:class:`idml.export.graph.DeployedClassifier` to bytes; those bytes are loaded back and run on the
probe batch and on a batch of one (the batch dimension is dynamic), and compared with idml's outputs
(:func:`idml.export.graph.check_outputs`). Only then are the files written
(:func:`idml.files.atomic_write`: whole or not at all, never through a link). A refused export
writes nothing and leaves any previous file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import idml
from idml.data.image_files import preparation
from idml.errors import ConfigError
from idml.export.formats import DEFAULT_OPSET, FORMATS, Format, require
from idml.export.graph import check_outputs, deployable, probe_images, reference_outputs
from idml.export.metadata import ExportMetadata, file_sha256
from idml.files import atomic_write, refuse_link
from idml.inference import TrainedModel, load_trained_model
from idml.scores import DEFAULT_SCORE

CPU = torch.device("cpu")


@dataclass(frozen=True)
class ExportRequest:
    checkpoint: Path
    format: str
    output: Path
    ema: bool = False
    opset: int | None = None
    score: str = DEFAULT_SCORE


@dataclass(frozen=True)
class ExportResult:
    #: (path, bytes) of every file written, the model first
    files: list[tuple[Path, int]]
    metadata: ExportMetadata
    #: per output, the largest difference from idml's outputs in units of its tolerance (<= 1)
    differences: dict[str, float]
    #: the probe batch's size (each image is checked alone too)
    probe_images: int
    #: which weights scored the checkpoint's best error ("model" or "ema")
    best_weights: str
    opset: int | None


def _check_output(request: ExportRequest, fmt: Format) -> None:
    """Refuse an output path the format cannot use before any work."""
    output = request.output
    if output.suffix.lower() != fmt.suffix:
        raise ConfigError(f"--output {output} must end in {fmt.suffix} for --format {request.format}")
    if not output.parent.is_dir():
        raise ConfigError(f"--output {output}: the folder {output.parent} does not exist")
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder; name the file to write")
    if output.exists() and request.checkpoint.exists() and output.samefile(request.checkpoint):
        raise ConfigError(f"--output {output} is the checkpoint itself; name another file")
    if request.format == "safetensors" and output.with_suffix(".json").resolve() == request.checkpoint.resolve():
        raise ConfigError(f"--output {output} would write its .json over the checkpoint; name another file")
    for written in (output, output.with_suffix(".json")) if request.format == "safetensors" else (output,):
        refuse_link(written)  # before any work, not once the export is done
    if request.opset is not None and request.format != "onnx":
        raise ConfigError("--opset applies to --format onnx only")


def _per_channel(values: tuple[float, ...]) -> list[float]:
    """A checkpoint's mean or std for the three RGB channels (one number stands for all three)."""
    return list(values) * 3 if len(values) == 1 else list(values)


def _metadata(trained: TrainedModel, request: ExportRequest) -> ExportMetadata:
    return ExportMetadata(
        class_names=list(trained.class_names), input_size=trained.input_size, mean=_per_channel(trained.mean),
        std=_per_channel(trained.std), temperature=trained.temperature, score=request.score,
        preparation=preparation(trained.dataset, trained.input_size),
        weights="ema" if request.ema else "model", idml_version=idml.__version__,
        checkpoint_sha256=file_sha256(request.checkpoint))


Runner = Callable[[torch.Tensor], dict[str, np.ndarray]]


def _serialise(request: ExportRequest, trained: TrainedModel, metadata: ExportMetadata
               ) -> tuple[dict[Path, bytes], Runner, int | None]:
    """(the files to write, the exported model loaded back from their bytes, the ONNX opset)."""
    deployed = deployable(trained, metadata)
    net_type = trained.spec.net_type if trained.spec is not None else "?"
    where = str(request.output)
    if request.format == "onnx":
        from idml.export.onnx import export_onnx, session_from_bytes

        opset = request.opset or DEFAULT_OPSET
        data = export_onnx(deployed, metadata, opset, net_type)
        model = session_from_bytes(data, where)
        return {request.output: data}, lambda images: model.run(images.numpy()), opset
    if request.format == "torchscript":
        from idml.export.torchscript import export_torchscript, load_torchscript, run_torchscript

        data = export_torchscript(deployed, metadata, net_type)
        module, _ = load_torchscript(data)
        return {request.output: data}, lambda images: run_torchscript(module, images), None
    from idml.export.safetensors import export_safetensors, sidecar_path, trained_from_bytes

    data, text = export_safetensors(trained, metadata)
    written = ExportMetadata.from_json(text, str(sidecar_path(request.output)))
    rebuilt = trained_from_bytes(data, written, where, CPU, amp="off")
    return ({request.output: data, sidecar_path(request.output): text.encode()},
            lambda images: reference_outputs(rebuilt, images, written), None)


def export_checkpoint(request: ExportRequest) -> ExportResult:
    """Export, check and write (see the module docstring)."""
    fmt = FORMATS[request.format]
    require(fmt.packages, fmt.extra, f"--format {request.format}")
    _check_output(request, fmt)
    trained = load_trained_model(request.checkpoint, CPU, amp="off", ema=request.ema)
    metadata = _metadata(trained, request)
    images = probe_images(trained.input_size)
    # the whole probe batch, then each image alone: batches of one, and no batch-wide branch hidden by the others
    batches = [images, *images.split(1)]
    references = [reference_outputs(trained, batch, metadata) for batch in batches]  # before deployable()
    files, run, opset = _serialise(request, trained, metadata)
    what = f"the exported {request.format} model"
    differences = [check_outputs(reference, run(batch), request.score, f"{what} (probe batch of {len(batch)})")
                   for batch, reference in zip(batches, references, strict=True)]
    for path, data in files.items():
        atomic_write(path, lambda fh, data=data: fh.write(data))
    worst = {name: max(d[name] for d in differences) for name in differences[0]}
    return ExportResult([(path, len(data)) for path, data in files.items()], metadata, worst, len(images),
                        trained.best_weights, opset)
