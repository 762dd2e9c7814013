"""``idml predict``: the top-k classes of image files, with each image's uncertainty score.

Parses the command line, classifies the files (:func:`idml.inference.predict_files`, a batch of
``-b`` files at a time) and prints a table, CSV or JSON as the batches are classified. The
uncertainty column is one score of :data:`idml.scores.SCORES` (larger = less sure): by default
:data:`idml.scores.DEFAULT_SCORE`, the score that measured best in experiments/RESULTS.md (see
docs/uncertainty.md); ``--score NAME`` picks another.

``--model FILE`` predicts with a file written by ``idml export`` instead of a checkpoint
(:func:`idml.export.predictor.exported_predictor`): an ``.onnx`` file runs in onnxruntime, a
``.safetensors`` file (with its ``.json``) is rebuilt in PyTorch; images are decoded by the same
opener, prepared and the output printed exactly as for the checkpoint (docs/export.md).
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Iterable, Iterator
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


#: the widest an uncertainty printed with 4 significant digits can be ("-1.235e+100")
UNCERTAINTY_WIDTH = 11
#: what a probability adds to a class name in the table (" 100.0%")
PERCENT_WIDTH = 7


def table_rows(preds: Iterable[Prediction], files: list[str], class_names: list[str], k: int,
               score: str = DEFAULT_SCORE) -> Iterator[str]:
    """The table, a line at a time as predictions arrive: one row per image. The column widths are
    fixed before the first image is read, from the file names and the class names, so that each
    batch's rows print as soon as they are computed and still line up. File and class names have
    their control characters escaped, so that no name can break a row in two (or forge one)."""
    header = ["file", f"uncertainty ({score})", *(f"top-{i + 1}" for i in range(k))]
    name = max(len(printable(f)) for f in files)
    label = max(len(printable(c)) for c in class_names) + PERCENT_WIDTH
    widths = [max(len(header[0]), name), max(len(header[1]), UNCERTAINTY_WIDTH),
              *(max(len(h), label) for h in header[2:])]
    align = ["<", ">"] + ["<"] * k

    def line(cells: list[str]) -> str:
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths, strict=True)).rstrip()

    for i, p in enumerate(preds):
        if i == 0:
            yield line(header)
        yield line([printable(p.file), "n/a" if p.uncertainty is None else f"{p.uncertainty:.4g}",
                    *(f"{printable(c)} {100 * q:.1f}%" for c, q in zip(p.classes, p.probabilities, strict=True))])


def csv_rows(preds: Iterable[Prediction], k: int) -> Iterator[str]:
    """CSV, a row at a time: the header, then one row per image (names escaped as in the table)."""
    for i, p in enumerate(preds):
        if i == 0:
            yield _csv_line(["file", "uncertainty", *(f"{col}_{j + 1}" for j in range(k) for col in ("class", "prob"))])
        pairs = [v for c, q in zip(p.classes, p.probabilities, strict=True) for v in (printable(c), f"{q:.6f}")]
        yield _csv_line([printable(p.file), "" if p.uncertainty is None else f"{p.uncertainty:.6g}", *pairs])


def _csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue()


def json_rows(preds: Iterable[Prediction], score: str = DEFAULT_SCORE) -> Iterator[str]:
    """One JSON array (the text ``json.dumps(records, indent=2)`` gives), an element at a time; names
    kept exact (JSON escapes them itself). Stopped by an error, the array is left unclosed."""
    for i, p in enumerate(preds):
        record = {"file": p.file, "score": score, "uncertainty": p.uncertainty,
                  "topk": [{"class": c, "probability": q} for c, q in zip(p.classes, p.probabilities, strict=True)]}
        yield ("[\n" if i == 0 else ",\n") + textwrap.indent(json.dumps(record, indent=2), "  ")
    yield "\n]"


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
    preds = predict_files(model, files, args.topk, args.batch_size, args.score)
    k = min(args.topk, len(model.class_names))
    if args.format == "table":
        lines = table_rows(preds, [str(f) for f in files], model.class_names, k, args.score)
    else:
        lines = csv_rows(preds, k) if args.format == "csv" else json_rows(preds, args.score)
    for text in lines:  # printed as each batch is classified: memory stays that of one batch (-b)
        print(text, end="" if args.format == "json" else "\n", flush=True)
    if args.format == "json":
        print()
    return 0
