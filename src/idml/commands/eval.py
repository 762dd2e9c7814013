"""``idml eval``: accuracy, calibration and how well the uncertainty score flags mistakes.

The network and its settings come from the checkpoint; the data from ``--dataset`` (default: the
one it was trained on) under ``--data_dir``, read and normalised exactly as during training's
validation. Predictions use the plain logits, as the official code evaluates. For your own images
(``folder``, ``hf:<path>``) the input size, mean and std are the checkpoint's, and ``--data_dir``
defaults to the one the run was trained with.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from idml.config import AMP_CHOICES, DEVICE_CHOICES, OneLineParser
from idml.data import DataBundle, DataRequest, build_data
from idml.data.catalog import canonical_name, dataset_info, user_dataset
from idml.errors import ConfigError, printable
from idml.inference import Outputs, TrainedModel, load_trained_model, run_model
from idml.metrics import EvalReport, check_finite_outputs, evaluate_predictions, reliability_bins, softmax
from idml.training.runtime import resolve_device


def parse_args(argv: list[str]):
    p = OneLineParser(prog="idml eval", description="Evaluate a checkpoint on a dataset's validation set.")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by idml train (e.g. model_best.pth.tar)")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the checkpoint's)")
    p.add_argument("--data_dir", help="folder holding the datasets (default: data; for --dataset folder, the "
                   "checkpoint's own)")
    p.add_argument("--ema", action="store_true",
                   help="evaluate the moving average of the weights of a --model_ema run instead of the weights")
    p.add_argument("-b", "--batch_size", type=int, default=256, help="images per forward pass (default: 256)")
    p.add_argument("-j", "--workers", type=int, default=None,
                   help="data-loading processes, ImageNet (default: one per available CPU core, less one)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="auto = CUDA when available, else Apple's MPS, else CPU")
    p.add_argument("--amp", choices=AMP_CHOICES, default=None,
                   help="mixed precision (default: the checkpoint's training setting, as in its validation)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the reliability diagram and the uncertainty-score histograms to FILE.png")
    args = p.parse_args(argv)
    if args.batch_size < 1 or (args.workers is not None and args.workers < 0):
        raise ConfigError("--batch_size must be at least 1 and --workers at least 0")
    return args


def check_compatible(trained: TrainedModel, dataset: str, data: DataBundle) -> None:
    """Refuse a dataset whose input size or classes the network was not built for."""
    trained_on = dataset_info(trained.dataset, trained.input_size)
    target = dataset_info(dataset, trained.input_size)
    if trained_on.family != target.family:
        raise ConfigError(f"the checkpoint was trained on {trained.dataset} ({trained_on.input_size}px inputs) and "
                          f"cannot evaluate {dataset} ({target.input_size}px); pick a matching --dataset")
    if data.num_classes != len(trained.class_names):
        raise ConfigError(f"the checkpoint predicts {len(trained.class_names)} classes but {dataset} has "
                          f"{data.num_classes}; pick a matching --dataset")
    if user_dataset(dataset) and data.class_names != trained.class_names:
        differ = sorted(set(data.class_names) ^ set(trained.class_names))[:3] or "their order"
        raise ConfigError(f"{dataset} does not hold the classes the checkpoint was trained on (they differ in "
                          f"{differ}); point --data_dir at the data it was trained on")


def data_request(args, trained: TrainedModel, dataset: str) -> DataRequest:
    """What to load: user datasets at the checkpoint's input size, mean and std (validation only)."""
    if not user_dataset(dataset):
        return DataRequest(dataset, args.data_dir or "data", args.batch_size, args.workers)
    saved = trained.config
    return DataRequest(dataset, args.data_dir or saved.get("data_dir") or "data", args.batch_size, args.workers,
                       input_size=trained.input_size, mean=trained.mean, std=trained.std, need_train=False,
                       image_key=saved.get("image_key", "image"), label_key=saved.get("label_key", "label"))


def predict_validation_set(trained: TrainedModel, data: DataBundle) -> tuple[Outputs, np.ndarray]:
    """Plain logits and uncertainty scores of every validation image, with their targets."""
    targets: list[torch.Tensor] = []

    def batches() -> Iterator[torch.Tensor]:
        for images, labels in data.val:
            targets.append(labels.cpu())
            yield data.eval_transform(images.to(trained.device))

    outputs = run_model(trained, batches())
    return outputs, torch.cat(targets).numpy()


def format_report(report: EvalReport, checkpoint: str, dataset: str, has_ism: bool) -> str:
    """The human-readable result: one metric per line, units spelled out."""
    def auroc(value: float | None, why: str) -> str:
        return f"{value:.4f}" if value is not None else f"n/a ({why})"

    undefined = "every prediction right or every one wrong"
    uncertainty_note = auroc(report.auroc_uncertainty, undefined if has_ism else "model trained without ISM")
    rows = [
        ("checkpoint", printable(checkpoint)),
        ("dataset", f"{dataset} ({report.images} validation images)"),
        ("top-1 error", f"{report.top1_err:.2f} %"),
        ("top-5 error", f"{report.top5_err:.2f} %"),
        ("NLL", f"{report.nll:.4f} nats/image"),
        ("ECE (15 bins)", f"{report.ece:.2f} %"),
        ("AUROC uncertainty ||u||^2", uncertainty_note),
        ("AUROC 1 - max softmax", auroc(report.auroc_msp, undefined)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def draw_plot(path: str, outputs: Outputs, targets: np.ndarray, report: EvalReport, title: str) -> Path:
    from idml.commands.figures import evaluation_figure, save_figure

    probs = softmax(outputs.logits)
    wrong = probs.argmax(axis=1) != targets
    bins = reliability_bins(probs.max(axis=1), ~wrong)
    aurocs = (report.auroc_uncertainty, report.auroc_msp)
    fig = evaluation_figure(bins, report.ece, outputs.uncertainty, wrong, aurocs, title)
    return save_figure(fig, path)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    trained = load_trained_model(args.checkpoint, resolve_device(args.device), amp=args.amp, ema=args.ema)
    dataset = canonical_name(args.dataset or trained.dataset)
    dataset_info(dataset)  # an unknown name is a one-line error
    if trained.best_weights == "ema" and not args.ema and not args.json:
        print("note: the best error of this checkpoint was measured on its EMA weights; add --ema to evaluate "
              "those", file=sys.stderr)
    data = build_data(data_request(args, trained, dataset), trained.device)
    check_compatible(trained, dataset, data)
    outputs, targets = predict_validation_set(trained, data)
    check_finite_outputs(outputs.logits, outputs.uncertainty, args.checkpoint)
    report = evaluate_predictions(outputs.logits, targets, outputs.uncertainty)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "dataset": dataset, "ism": trained.has_ism,
                          **report.to_dict()}))
    else:
        print(format_report(report, args.checkpoint, dataset, trained.has_ism))
    if args.plot:
        path = draw_plot(args.plot, outputs, targets, report, f"{Path(args.checkpoint).name} on {dataset}")
        if not args.json:
            print(f"plot: {path}")
    return 0
