"""``idml eval``: accuracy, calibration and an uncertainty report for every score of a checkpoint.

The network and its settings come from the checkpoint; the data from ``--dataset`` (default: the
one it was trained on, with its ``--classes`` subset) under ``--data_dir``, read and normalised
exactly as during training's validation. Predictions use the plain logits, as the official code
evaluates. For your own images (``folder``, ``hf:<path>``) the input size, mean and std are the
checkpoint's, and ``--data_dir`` defaults to the one the run was trained with. Everything is
measured on the test split; the validation split of a ``--val_split`` run is only used to fit the
softmax temperature (``--fit_temperature``).

For every uncertainty score of :data:`idml.metrics.SCORES` (larger = less sure) the report gives
mistake detection (errors positive: AUROC, AUPR, FPR at 95% TPR), selective prediction (AURC),
out-of-distribution detection with ``--ood`` and, with ``--blends``, Spearman's rho against the
known ambiguity of blended test images. ``--json`` prints the schema of docs/uncertainty.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from idml.config import AMP_CHOICES, DEVICE_CHOICES, OneLineParser
from idml.data import DataBundle, DataRequest, build_data, load_in_memory
from idml.data.augment import Normalize
from idml.data.blends import blend_pairs
from idml.data.catalog import canonical_name, dataset_info, user_dataset
from idml.data.splits import parse_classes
from idml.errors import ConfigError, printable
from idml.inference import Outputs, TrainedModel, load_trained_model, run_model
from idml.metrics import (
    SCORES,
    aurc,
    calibration,
    check_finite_outputs,
    detection_metrics,
    fit_temperature,
    reliability_bins,
    risk_coverage,
    softmax,
    spearman,
    topk_error,
)
from idml.training.runtime import resolve_device

#: The version of the ``--json`` schema (docs/uncertainty.md); bumped on any incompatible change.
SCHEMA = "idml-eval/1"
IN_MEMORY = ("cifar10", "cifar100", "digits")


def parse_args(argv: list[str]):
    p = OneLineParser(prog="idml eval", description="Evaluate a checkpoint: accuracy, calibration and every "
                      "uncertainty score (mistakes, selective prediction, OOD, blends).")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by idml train (e.g. model_best.pth.tar)")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the checkpoint's, with its --classes)")
    p.add_argument("--data_dir", help="folder holding the datasets (default: data; for --dataset folder, the "
                   "checkpoint's own)")
    p.add_argument("--ema", action="store_true",
                   help="evaluate the moving average of the weights of a --model_ema run instead of the weights")
    p.add_argument("-b", "--batch_size", type=int, default=256, help="images per forward pass (default: %(default)s)")
    p.add_argument("-j", "--workers", type=int, default=None,
                   help="data-loading processes, ImageNet (default: one per available CPU core, less one)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="auto = CUDA when available, else Apple's MPS, else CPU")
    p.add_argument("--amp", choices=AMP_CHOICES, default=None,
                   help="mixed precision (default: the checkpoint's training setting, as in its validation)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object (docs/uncertainty.md)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the reliability diagram, the risk-coverage curves and the ||u||^2 histograms")
    p.add_argument("--ood", metavar="SPEC",
                   help="out-of-distribution images: the test split of another dataset (cifar100) or of some "
                   "classes of one (digits:5-9); reports AUROC, AUPR and FPR95 of every score")
    p.add_argument("--blends", type=int, default=0, metavar="N",
                   help="also score N blends a*x_i + (1-a)*x_j of test images of two classes (Spearman's rho "
                   "of each score with min(a, 1-a)); default 0 = none")
    p.add_argument("--blend_seed", type=int, default=0, metavar="S", help="seed of the blends (default: %(default)s)")
    p.add_argument("--fit_temperature", action="store_true",
                   help="fit the softmax temperature on the checkpoint's validation split now (needs a run "
                   "trained with --val_split; default: use the temperature saved in the checkpoint)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or (args.workers is not None and args.workers < 0):
        raise ConfigError("--batch_size must be at least 1 and --workers at least 0")
    if args.blends < 0 or args.blends > 1_000_000:
        raise ConfigError(f"--blends must lie in [0, 1000000] (got {args.blends})")
    return args


# -- data ------------------------------------------------------------------------------------------

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
    """What to load. The checkpoint's own in-memory dataset is read with its class subset and
    validation split (same seed), so that the test images are those of the classes it learnt;
    another dataset is read whole; user datasets at the checkpoint's input size, mean and std
    (validation only)."""
    saved = trained.config
    if not user_dataset(dataset):
        own = dataset == trained.dataset
        return DataRequest(dataset, args.data_dir or "data", args.batch_size, args.workers,
                           seed=int(saved.get("seed", 0) or 0),
                           val_split=float(saved.get("val_split") or 0.0) if own else 0.0,
                           classes=saved.get("classes") if own else None)
    own = dataset == trained.dataset and args.data_dir in (None, saved.get("data_dir"))
    return DataRequest(dataset, args.data_dir or saved.get("data_dir") or "data", args.batch_size, args.workers,
                       seed=int(saved.get("seed", 0) or 0),
                       val_split=float(saved.get("val_split") or 0.0) if own else 0.0,
                       input_size=trained.input_size, mean=trained.mean, std=trained.std, need_train=False,
                       image_key=saved.get("image_key", "image"), label_key=saved.get("label_key", "label"))


def predict_loader(trained: TrainedModel, loader, transform) -> tuple[Outputs, np.ndarray]:
    """Outputs and targets of every image of ``loader`` (batches of images and labels)."""
    targets: list[torch.Tensor] = []

    def batches() -> Iterator[torch.Tensor]:
        for images, labels in loader:
            targets.append(labels.cpu())
            yield transform(images.to(trained.device))

    outputs = run_model(trained, batches())
    return outputs, torch.cat(targets).numpy()


def predict_validation_set(trained: TrainedModel, data: DataBundle) -> tuple[Outputs, np.ndarray]:
    """Outputs and targets of every test image (the official test split, whatever the protocol)."""
    return predict_loader(trained, data.test_set, data.eval_transform)


def predict_images(trained: TrainedModel, images: torch.Tensor, batch_size: int) -> Outputs:
    """Outputs of in-memory images (pixel units, uint8 or float), normalised as the model's data."""
    normalize = Normalize(trained.mean, trained.std, trained.device)
    return run_model(trained, (normalize(chunk.to(trained.device)) for chunk in images.split(batch_size)))


def ood_images(spec: str, trained: TrainedModel, args) -> torch.Tensor:
    """The test images named by ``--ood NAME[:CLASSES]`` (an in-memory dataset of the same input size).

    Classes of the checkpoint's own dataset that it was trained on are refused: they are not OOD.
    """
    name, _, class_spec = spec.partition(":")
    info = dataset_info(name)
    if info.name not in IN_MEMORY:
        raise ConfigError(f"--ood {spec!r}: out-of-distribution images come from {', '.join(IN_MEMORY)}")
    trained_on = dataset_info(trained.dataset, trained.input_size)
    if info.family != trained_on.family:
        raise ConfigError(f"--ood {spec!r}: {info.name} has {info.input_size}px images, the checkpoint "
                          f"{trained_on.input_size}px ones")
    classes = parse_classes(class_spec, info.num_classes, flag="--ood") if class_spec else None
    if info.name == trained.dataset:
        seen = _trained_classes(trained, info.num_classes)
        overlap = sorted(set(classes if classes is not None else range(info.num_classes)) & set(seen))
        if overlap:
            raise ConfigError(f"--ood {spec!r}: the checkpoint was trained on class(es) {overlap} of {info.name}; "
                              "name only classes it never saw (e.g. digits:5-9 for a model trained on 0-4)")
    spec_text = None if classes is None else ",".join(map(str, classes))
    data = load_in_memory(DataRequest(info.name, args.data_dir or "data", args.batch_size, classes=spec_text))
    return data["val"][0]


def _trained_classes(trained: TrainedModel, num_classes: int) -> list[int]:
    subset = trained.config.get("classes")
    return parse_classes(subset, num_classes) if subset else list(range(num_classes))


def test_tensors(data: DataBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split's uint8 images and labels (in-memory datasets only: blends are built from them)."""
    loader = data.test_set
    if not hasattr(loader, "images"):
        raise ConfigError("--blends needs an in-memory dataset (cifar10, cifar100, digits)")
    return loader.images, loader.labels


# -- the report --------------------------------------------------------------------------------------

def resolve_temperature(trained: TrainedModel, data: DataBundle, fit: bool) -> tuple[float | None, str | None]:
    """(temperature, where it came from): refitted on the validation split with ``fit``, else saved."""
    if not fit:
        return trained.temperature, "checkpoint" if trained.temperature is not None else None
    if data.test is None:
        raise ConfigError("--fit_temperature needs the checkpoint's validation split, but it was trained without "
                          "--val_split (fitting on the test set would flatter its calibration); retrain with "
                          "--val_split 0.1")
    outputs, targets = predict_loader(trained, data.val, data.eval_transform)
    fitted = fit_temperature(outputs.logits, targets)
    if fitted is None:
        return None, "not identifiable on the validation split: its NLL has no minimum, no mistakes there?"
    return fitted, "fitted on the validation split"


def detection_table(scores: dict[str, np.ndarray], positive: np.ndarray) -> dict[str, dict[str, float | None]]:
    return {name: detection_metrics(score, positive) for name, score in scores.items()}


def build_report(trained: TrainedModel, outputs: Outputs, targets: np.ndarray, temperature: float | None,
                 temperature_source: str | None) -> dict[str, Any]:
    """The in-distribution part of the report (the ``--json`` schema of docs/uncertainty.md)."""
    scores = outputs.scores()
    wrong = outputs.logits.argmax(axis=1) != targets
    u_f = None
    if outputs.uncertainty is not None and outputs.feature_sq is not None:
        u_f = spearman(outputs.uncertainty, np.sqrt(outputs.feature_sq))
    return {
        "schema": SCHEMA,
        "ism": trained.has_ism,
        "classes": list(trained.class_names),
        "test_images": len(targets),
        "top1_err": topk_error(outputs.logits, targets, 1),
        "top5_err": topk_error(outputs.logits, targets, 5),
        "temperature": temperature,
        "temperature_source": temperature_source,
        "calibration": {
            "before_scaling": calibration(outputs.logits, targets),
            "after_scaling": None if temperature is None else calibration(outputs.logits, targets, temperature),
        },
        "scores": {name: SCORES[name][0] for name in scores},
        "mistakes": {"errors": int(wrong.sum()), "by_score": detection_table(scores, wrong)},
        "selective": {"by_score": {name: {"aurc": aurc(score, wrong)} for name, score in scores.items()},
                      "oracle_aurc": aurc(wrong.astype(float), wrong)},
        "ood": None,
        "blends": None,
        "mechanism": {"spearman_u_norm2_f_norm": u_f},
    }


def ood_section(spec: str, scores: dict[str, np.ndarray], ood: Outputs) -> dict[str, Any]:
    """OOD detection: the test images are the negatives, the OOD images the positives."""
    ood_scores = ood.scores()
    positive = np.r_[np.zeros(len(next(iter(scores.values()))), bool), np.ones(len(ood.logits), bool)]
    both = {name: np.r_[scores[name], ood_scores[name]] for name in scores}
    return {"spec": spec, "images": len(ood.logits), "by_score": detection_table(both, positive)}


def blends_section(trained: TrainedModel, data: DataBundle, n: int, seed: int, batch_size: int) -> dict[str, Any]:
    images, labels = test_tensors(data)
    blends = blend_pairs(images, labels, n, seed)
    scores = predict_images(trained, blends.images, batch_size).scores()
    rho = {name: {"spearman": spearman(score, blends.ambiguity)} for name, score in scores.items()}
    return {"images": n, "seed": seed, "by_score": rho}


def evaluate_checkpoint(args) -> tuple[dict[str, Any], Outputs, np.ndarray]:
    """Everything ``idml eval`` measures, as the ``--json`` object (plus the test outputs for plots)."""
    ema = getattr(args, "ema", False)
    trained = load_trained_model(args.checkpoint, resolve_device(args.device), amp=getattr(args, "amp", None),
                                 ema=ema)
    dataset = canonical_name(args.dataset or trained.dataset)
    dataset_info(dataset)  # an unknown name is a one-line error
    if args.ood:  # a bad --ood fails before any image is read
        ood_spec_check(args.ood)
    if trained.best_weights == "ema" and not ema and not args.json:
        print("note: the best error of this checkpoint was measured on its EMA weights; add --ema to evaluate "
              "those", file=sys.stderr)
    data = build_data(data_request(args, trained, dataset), trained.device)
    check_compatible(trained, dataset, data)
    temperature, source = resolve_temperature(trained, data, args.fit_temperature)
    outputs, targets = predict_validation_set(trained, data)
    check_finite_outputs(outputs.logits, outputs.uncertainty, args.checkpoint)
    report = {"checkpoint": str(args.checkpoint), "dataset": dataset}
    report |= build_report(trained, outputs, targets, temperature, source)
    if args.ood:
        ood = predict_images(trained, ood_images(args.ood, trained, args), args.batch_size)
        report["ood"] = ood_section(args.ood, outputs.scores(), ood)
    if args.blends:
        report["blends"] = blends_section(trained, data, args.blends, args.blend_seed, args.batch_size)
    return report, outputs, targets


def ood_spec_check(spec: str) -> None:
    name, _, classes = spec.partition(":")
    dataset_info(name)  # one line naming the known datasets
    if classes:
        parse_classes(classes, dataset_info(name).num_classes, flag="--ood")


# -- output ------------------------------------------------------------------------------------------

def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable result: a header of lines, then one row per score."""
    cal = report["calibration"]
    after = cal["after_scaling"]
    lines = [
        f"checkpoint   {printable(report['checkpoint'])}",
        f"dataset      {report['dataset']} ({report['test_images']} test images, "
        f"{len(report['classes'])} classes; ISM {'on' if report['ism'] else 'off'})",
        f"top-1 error  {report['top1_err']:.2f} %   top-5 error {report['top5_err']:.2f} %   "
        f"mistakes {report['mistakes']['errors']}",
        f"calibration  NLL {cal['before_scaling']['nll']:.4f}  Brier {cal['before_scaling']['brier']:.4f}  "
        f"ECE {cal['before_scaling']['ece']:.2f} %   (before temperature scaling)",
    ]
    if after is None:
        lines.append(f"             no temperature ({report['temperature_source'] or 'train with --val_split'})")
    else:
        lines.append(f"             NLL {after['nll']:.4f}  Brier {after['brier']:.4f}  ECE {after['ece']:.2f} %   "
                     f"(T = {report['temperature']:.3f}, {report['temperature_source']})")
    rho = report["mechanism"]["spearman_u_norm2_f_norm"]
    if rho is not None:
        lines.append(f"mechanism    Spearman rho of ||u||^2 with ||f|| on the test images: {rho:.3f}")
    lines += ["", *score_rows(report), "",
              "mistake detection: errors positive (AUROC/AUPR higher = better, FPR95 lower); AURC: selective "
              f"prediction risk, lower = better (oracle {report['selective']['oracle_aurc']:.4f})"]
    return "\n".join(lines)


def score_rows(report: dict[str, Any]) -> list[str]:
    head = ["score", "err-AUROC", "err-AUPR", "err-FPR95", "AURC"]
    ood, blends = report["ood"], report["blends"]
    if ood:
        head += ["OOD-AUROC", "OOD-AUPR", "OOD-FPR95"]
    if blends:
        head += ["blend-rho"]
    rows = [head]
    for name in report["scores"]:
        m = report["mistakes"]["by_score"][name]
        row = [name, _num(m["auroc"]), _num(m["aupr"]), _num(m["fpr95"]),
               _num(report["selective"]["by_score"][name]["aurc"], 4)]
        if ood:
            o = ood["by_score"][name]
            row += [_num(o["auroc"]), _num(o["aupr"]), _num(o["fpr95"])]
        if blends:
            row += [_num(blends["by_score"][name]["spearman"])]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    text = ["  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]
    if ood:
        text.append(f"OOD: {ood['images']} images of {ood['spec']} (positives) against the test images")
    if blends:
        text.append(f"blends: {blends['images']} blends (seed {blends['seed']}); rho with min(a, 1 - a)")
    return text


def draw_plot(path: str, outputs: Outputs, targets: np.ndarray, report: dict[str, Any], title: str) -> Path:
    from idml.commands.figures import evaluation_figure, save_figure

    probs = softmax(outputs.logits)
    wrong = probs.argmax(axis=1) != targets
    bins = reliability_bins(probs.max(axis=1), ~wrong)
    curves = {name: risk_coverage(score, wrong) for name, score in outputs.scores().items()}
    by_score = report["mistakes"]["by_score"]
    aurocs = (by_score.get("u_norm2", {}).get("auroc"), by_score["msp"]["auroc"])
    ece = report["calibration"]["before_scaling"]["ece"]
    fig = evaluation_figure(bins, ece, outputs.uncertainty, wrong, aurocs, title, curves)
    return save_figure(fig, path)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report, outputs, targets = evaluate_checkpoint(args)
    print(json.dumps(report) if args.json else format_report(report))
    if args.plot:
        path = draw_plot(args.plot, outputs, targets, report, f"{Path(args.checkpoint).name} on {report['dataset']}")
        if not args.json:
            print(f"plot: {path}")
    return 0
