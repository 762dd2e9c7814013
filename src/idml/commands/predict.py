"""``idml predict``: the top-k classes of image files, with each image's uncertainty score.

Parses the command line, classifies the files (:func:`idml.inference.predict_files`) and prints a
table, CSV or JSON. The uncertainty column is one score of :data:`idml.scores.SCORES` (larger =
less sure): by default :data:`idml.scores.DEFAULT_SCORE`, the score that measured best in
experiments/RESULTS.md (see docs/uncertainty.md); ``--score NAME`` picks another.

``--model FILE`` predicts with a file written by ``idml export`` instead of a checkpoint
(:func:`idml.export.predictor.exported_predictor`): an ``.onnx`` file runs in onnxruntime, a
``.safetensors`` file (with its ``.json``) is rebuilt in PyTorch; images are prepared and the output
printed exactly as for the checkpoint (docs/export.md).
"""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING

from idml.config import AMP_CHOICES, DEVICE_CHOICES, OneLineParser, setting_rule
from idml.data.catalog import MAX_CLASSES
from idml.errors import printable
from idml.rules import flag_type, integer
from idml.scores import DEFAULT_SCORE, SCORE_NAMES

if TYPE_CHECKING:
    from idml.inference import Prediction, Predictor

FORMATS = ("table", "csv", "json")


def parse_args(argv: list[str]):
    p = OneLineParser(prog="idml predict", description="Classify image files with a trained checkpoint or an "
                      "exported model.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint written by idml train (e.g. model_best.pth.tar)")
    source.add_argument("--model", help="a model written by idml export: FILE.onnx (run by onnxruntime) or "
                        "FILE.safetensors (with its FILE.json); see docs/export.md")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files, or folders (their image files at any depth, sorted)")
    p.add_argument("--topk", type=flag_type(int, integer(1, MAX_CLASSES)), default=5,
                   help="classes to list per image (default: %(default)s, at most all)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: %(default)s)")
    p.add_argument("-b", "--batch_size", type=flag_type(int, setting_rule("batch_size")), default=64,
                   help="images per forward pass (default: %(default)s)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="auto = CUDA when available, else Apple's MPS, else CPU")
    p.add_argument("--amp", choices=AMP_CHOICES, default=None,
                   help="mixed precision (default: the checkpoint's training setting, as in its validation)")
    p.add_argument("--ema", action="store_true",
                   help="use the moving average of the weights of a --model_ema run instead of the weights")
    p.add_argument("--score", choices=SCORE_NAMES, default=DEFAULT_SCORE, metavar="NAME",
                   help=f"uncertainty score to print (default: {DEFAULT_SCORE}; one of {', '.join(SCORE_NAMES)}; "
                   "see docs/uncertainty.md)")
    return p.parse_args(argv)


def format_table(preds: list[Prediction], score: str = DEFAULT_SCORE) -> str:
    """One row per image; file and class names with their control characters escaped, so that
    no name can break a row in two (or forge one)."""
    k = len(preds[0].classes)
    header = ["file", f"uncertainty ({score})", *(f"top-{i + 1}" for i in range(k))]
    rows = [[printable(p.file), "n/a" if p.uncertainty is None else f"{p.uncertainty:.4g}",
             *(f"{printable(c)} {100 * q:.1f}%" for c, q in zip(p.classes, p.probabilities, strict=True))]
            for p in preds]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    align = ["<", ">"] + ["<"] * k
    return "\n".join("  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(r, align, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def format_csv(preds: list[Prediction], score: str = DEFAULT_SCORE) -> str:
    k = len(preds[0].classes)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "uncertainty", *(f"{col}_{i + 1}" for i in range(k) for col in ("class", "prob"))])
    for p in preds:
        pairs = [v for c, q in zip(p.classes, p.probabilities, strict=True) for v in (printable(c), f"{q:.6f}")]
        writer.writerow([printable(p.file), "" if p.uncertainty is None else f"{p.uncertainty:.6g}", *pairs])
    return out.getvalue().rstrip("\n")


def format_json(preds: list[Prediction], score: str = DEFAULT_SCORE) -> str:
    return json.dumps([
        {"file": p.file, "score": score, "uncertainty": p.uncertainty,
         "topk": [{"class": c, "probability": q} for c, q in zip(p.classes, p.probabilities, strict=True)]}
        for p in preds
    ], indent=2)


FORMATTERS = {"table": format_table, "csv": format_csv, "json": format_json}


def load_predictor(args) -> Predictor:
    """The model to predict with: the checkpoint's, or the exported file's (``--model``)."""
    if args.model is not None:
        from idml.export.predictor import exported_predictor

        return exported_predictor(args.model, args.device, args.amp, args.ema)
    from idml.device.runtime import resolve_device
    from idml.inference import checkpoint_predictor, load_trained_model

    trained = load_trained_model(args.checkpoint, resolve_device(args.device), amp=args.amp, ema=args.ema)
    return checkpoint_predictor(trained, args.checkpoint)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from idml.data.image_files import image_files
    from idml.inference import check_score, predict_files

    files = image_files(args.images)
    model = load_predictor(args)
    check_score(model, args.score)
    preds = list(predict_files(model, files, args.topk, args.batch_size, args.score))
    print(FORMATTERS[args.format](preds, args.score))
    return 0
