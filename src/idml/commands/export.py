"""``idml export``: a checkpoint as an ONNX, TorchScript or safetensors file for deployment (docs/export.md).

The work, and the check that the file computes what idml computes, is :mod:`idml.export`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from idml.config import OneLineParser
from idml.errors import printable
from idml.export.formats import DEFAULT_OPSET, FORMATS, MAX_OPSET, MIN_OPSET
from idml.rules import flag_type, integer
from idml.scores import DEFAULT_SCORE, LOGIT_SCORE_NAMES

if TYPE_CHECKING:
    from idml.export.exporter import ExportRequest, ExportResult


def parse_args(argv: list[str]) -> ExportRequest:
    p = OneLineParser(prog="idml export", description="Export a checkpoint for deployment: uint8 images in; logits, "
                      "calibrated probabilities and an uncertainty score out (docs/export.md).")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by idml train")
    p.add_argument("--format", required=True, choices=list(FORMATS),
                   help="onnx (onnxruntime and others), torchscript (libtorch), safetensors (weights + JSON)")
    p.add_argument("--output", required=True, type=Path,
                   help="file to write: .onnx, .pt or .safetensors (which also writes a .json beside it)")
    p.add_argument("--ema", action="store_true",
                   help="export the moving average of the weights of a --model_ema run instead of the weights")
    p.add_argument("--opset", type=flag_type(int, integer(MIN_OPSET, MAX_OPSET)), metavar="N",
                   help=f"ONNX opset to write (default: {DEFAULT_OPSET}; lower ones are converted where ONNX can "
                   "express the network)")
    p.add_argument("--score", choices=LOGIT_SCORE_NAMES, default=DEFAULT_SCORE,
                   help="the score the 'uncertainty' output is (default: %(default)s, as idml predict)")
    args = p.parse_args(argv)
    from idml.export.exporter import ExportRequest

    return ExportRequest(args.checkpoint, args.format, args.output, args.ema, args.opset, args.score)


def format_result(request: ExportRequest, result: ExportResult) -> str:
    from idml.export.graph import tolerances

    meta = result.metadata
    opset = f", opset {result.opset}" if result.opset is not None else ""
    lines = [f"exported {printable(str(request.checkpoint))} ({meta.weights} weights) as {request.format}{opset}"]
    lines += [f"wrote    {printable(str(path))} ({size:,} bytes)" for path, size in result.files]
    temperature = "no temperature (1)" if meta.temperature is None else f"temperature {meta.temperature:.4g}"
    lines.append(f"input    uint8 RGB N x 3 x {meta.input_size} x {meta.input_size}, prepared as '{meta.preparation}'; "
                 f"{len(meta.class_names)} classes; {temperature}; uncertainty = {meta.score}")
    worst = ", ".join(f"{name} {ratio:.2g}" for name, ratio in result.differences.items())
    allowed = ", ".join(f"{name} {rel:g} rel + {abs_:g}" for name, (rel, abs_) in tolerances(meta.score).items())
    lines.append(f"checked  against idml's outputs on {result.probe_images} probe images, together and alone: largest "
                 f"difference / tolerance: {worst} (tolerances: {allowed})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    request = parse_args(argv)
    from idml.export.exporter import export_checkpoint

    result = export_checkpoint(request)
    if result.best_weights == "ema" and not request.ema:
        print("note: the best error of this checkpoint was measured on its EMA weights; add --ema to export those",
              file=sys.stderr)
    print(format_result(request, result))
    return 0
