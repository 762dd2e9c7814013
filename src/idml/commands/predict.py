"""``idml predict``: the top-k classes of image files, with each image's uncertainty score.

Probabilities are the softmax of the plain logits divided by the checkpoint's temperature (fitted
on the validation split of a ``--val_split`` run; 1 without one). The uncertainty column is one
score of :data:`idml.metrics.SCORES`, computed as ``idml eval`` measures it (larger = less sure):
by default :data:`DEFAULT_SCORE`, the score that measured best in experiments/RESULTS.md (see
docs/uncertainty.md); ``--score NAME`` picks another, e.g. ``u_norm2`` (||u||^2), which did not
flag mistakes or unseen classes in those measurements.

Every file is read before anything is printed, so a bad file stops the command with one line
naming it and no partial output.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from idml.config import AMP_CHOICES, DEVICE_CHOICES, OneLineParser
from idml.data.augment import Normalize
from idml.data.image_files import image_files, image_preparer, read_image
from idml.errors import ConfigError, printable
from idml.inference import TrainedModel, load_trained_model, run_model
from idml.metrics import SCORES, check_finite_outputs, softmax
from idml.training.runtime import resolve_device

FORMATS = ("table", "csv", "json")
#: The uncertainty column by default: the best-measured score of experiments/RESULTS.md.
DEFAULT_SCORE = "msp"


@dataclass
class Prediction:
    file: str
    uncertainty: float | None
    classes: list[str]
    probabilities: list[float]


def parse_args(argv: list[str]):
    p = OneLineParser(prog="idml predict", description="Classify image files with a trained checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by idml train (e.g. model_best.pth.tar)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files, or folders (their image files at any depth, sorted)")
    p.add_argument("--topk", type=int, default=5, help="classes to list per image (default: %(default)s, at most all)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: %(default)s)")
    p.add_argument("-b", "--batch_size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="auto = CUDA when available, else Apple's MPS, else CPU")
    p.add_argument("--amp", choices=AMP_CHOICES, default=None,
                   help="mixed precision (default: the checkpoint's training setting, as in its validation)")
    p.add_argument("--ema", action="store_true",
                   help="use the moving average of the weights of a --model_ema run instead of the weights")
    p.add_argument("--score", choices=list(SCORES), default=DEFAULT_SCORE, metavar="NAME",
                   help=f"uncertainty score to print (default: {DEFAULT_SCORE}; one of {', '.join(SCORES)}; see "
                   "docs/uncertainty.md)")
    args = p.parse_args(argv)
    if args.topk < 1 or args.batch_size < 1:
        raise ConfigError("--topk and --batch_size must be at least 1")
    return args


def load_images(files: list[Path], trained: TrainedModel) -> torch.Tensor:
    """All files decoded and prepared as the model's validation images (uint8, N x 3 x H x W)."""
    prepare = image_preparer(trained.dataset, trained.input_size)
    return torch.stack([prepare(read_image(path)) for path in files])


def check_score(trained: TrainedModel, score: str) -> None:
    if SCORES[score][1] and not trained.has_ism:
        raise ConfigError(f"--score {score} needs a model trained with the ISM head (this one was trained with "
                          f"--no-ism); pick one of {', '.join(n for n, (_, ism) in SCORES.items() if not ism)}")


def predict(trained: TrainedModel, images: torch.Tensor, topk: int, batch_size: int,
            checkpoint: str = "the checkpoint", score: str = DEFAULT_SCORE) -> list[tuple]:
    """(top-k class indices, their temperature-scaled probabilities, ``score``) per image."""
    normalize = Normalize(trained.mean, trained.std, trained.device)
    batches = (normalize(chunk.to(trained.device)) for chunk in images.split(batch_size))
    outputs = run_model(trained, batches)
    check_finite_outputs(outputs.logits, outputs.uncertainty, checkpoint)
    probs = softmax(outputs.logits / (trained.temperature or 1.0))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :topk]
    scores = outputs.scores()[score]
    return [(order[i], probs[i, order[i]], scores[i]) for i in range(len(probs))]


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


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    files = image_files(args.images)
    trained = load_trained_model(args.checkpoint, resolve_device(args.device), amp=args.amp, ema=args.ema)
    check_score(trained, args.score)
    images = load_images(files, trained)
    topk = min(args.topk, len(trained.class_names))
    preds = [
        Prediction(str(path), None if score is None else float(score),
                   [trained.class_names[i] for i in idx], [float(q) for q in probs])
        for path, (idx, probs, score) in zip(
            files, predict(trained, images, topk, args.batch_size, args.checkpoint, args.score), strict=True)
    ]
    print(FORMATTERS[args.format](preds, args.score))
    return 0
