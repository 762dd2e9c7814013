"""Evaluating a checkpoint: accuracy, calibration and an uncertainty report for every score.

``idml eval`` (:mod:`idml.commands.eval`) parses its command line into an :class:`EvalRequest`
and prints what :func:`evaluate` returns.

The network and its settings come from the checkpoint; the data from ``--dataset`` (default: the
one it was trained on, with its ``--classes`` subset) under ``--data_dir``, read and normalised
exactly as during training's validation. Predictions use the plain logits, as the official code
evaluates. For your own images (``folder``, ``hf:<path>``) the input size, mean and std are the
checkpoint's, and ``--data_dir`` defaults to the one the run was trained with. Everything is
measured on the test split; the validation split of a ``--val_split`` run is only used to fit the
softmax temperature (``--fit_temperature``).

For every uncertainty score of :data:`idml.scores.SCORES` (larger = less sure) the report gives
mistake detection (errors positive: AUROC, AUPR, FPR at 95% TPR), selective prediction (AURC),
out-of-distribution detection with ``--ood`` and, with ``--blends``, Spearman's rho against the
known ambiguity of blended test images. ``--json`` prints the schema of docs/uncertainty.md.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from idml.data.blends import blend_pairs
from idml.data.build import build_data, load_in_memory
from idml.data.catalog import canonical_name, dataset_info, datasets_that_can, parse_classes, user_dataset
from idml.data.identity import change_words, changed_splits
from idml.data.types import DataBundle, DataRequest
from idml.device.runtime import resolve_device
from idml.errors import ConfigError, describe, listing
from idml.inference import Outputs, TrainedModel, load_trained_model, predict_batches, run_model
from idml.metrics import (
    aurc,
    calibration,
    check_finite_outputs,
    detection_metrics,
    spearman,
    temperature_fit,
    topk_error,
)
from idml.scores import SCORES

#: The version of the ``--json`` schema (docs/uncertainty.md); bumped on any incompatible change.
SCHEMA = "idml-eval/1"


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate and how (the settings of ``idml eval``; defaults are its defaults)."""

    checkpoint: str
    #: the dataset to evaluate on; None = the checkpoint's, with its --classes subset
    dataset: str | None = None
    #: None = data, or for a user dataset the checkpoint's own --data_dir
    data_dir: str | None = None
    #: the moving average of the weights of a --model_ema run instead of the weights
    ema: bool = False
    batch_size: int = 256
    workers: int | None = None
    device: str = "auto"
    #: None = the checkpoint's training precision
    amp: str | None = None
    #: out-of-distribution images: another in-memory dataset, or classes of one (digits:5-9)
    ood: str | None = None
    #: blends of test-image pairs to score (0 = none), and their seed
    blends: int = 0
    blend_seed: int = 0
    #: fit the softmax temperature on the validation split now instead of using the saved one
    fit_temperature: bool = False
    #: print notes for a reader (False when the output is JSON)
    notes: bool = True


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


def check_same_data(trained: TrainedModel, request: DataRequest, data: DataBundle, req: EvalRequest) -> list[str]:
    """Compare the data with what the checkpoint recorded of its training data (the same dataset
    and folder only); refuse a held-out validation split that changed, note other changes.

    ``--val_split`` holds the validation split out of the training images, computed from them as
    they are now: after a file is added to ``train/`` it would hold images the model trained on,
    and its error would flatter the model. A changed ``val/`` folder or test split is just other
    images to evaluate: a note says so.
    """
    saved = trained.config
    if request.dataset != trained.dataset or (user_dataset(request.dataset) and req.data_dir not in (
            None, saved.get("data_dir"))):
        return []
    changed = changed_splits(trained.data_identity, data.identity)
    if request.val_split > 0 and "selection" in changed:
        raise ConfigError(f"{req.checkpoint}: {change_words('selection', changed['selection'])}: the validation split "
                          "that --val_split held out of the training images would be drawn again from other files "
                          "and could hold images the model trained on; evaluate the data as it was, or a val/ folder "
                          "of images it never saw")
    return [f"{change_words(split, counts)}: evaluating the images as they are now"
            for split, counts in changed.items() if split == "test" and req.notes]


def data_request(req: EvalRequest, trained: TrainedModel, dataset: str) -> DataRequest:
    """What to load. The checkpoint's own in-memory dataset is read with its class subset and
    validation split (same seed), so that the test images are those of the classes it learnt;
    another dataset is read whole; user datasets at the checkpoint's input size, mean and std
    (validation only)."""
    saved = trained.config
    if not user_dataset(dataset):
        own = dataset == trained.dataset
        return DataRequest(dataset, req.data_dir or "data", req.batch_size, req.workers,
                           seed=int(saved.get("seed", 0) or 0),
                           val_split=float(saved.get("val_split") or 0.0) if own else 0.0,
                           classes=saved.get("classes") if own else None)
    own = dataset == trained.dataset and req.data_dir in (None, saved.get("data_dir"))
    return DataRequest(dataset, req.data_dir or saved.get("data_dir") or "data", req.batch_size, req.workers,
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


def predict_test_split(trained: TrainedModel, data: DataBundle) -> tuple[Outputs, np.ndarray]:
    """Outputs and targets of every test image (the official test split, whatever the protocol)."""
    return predict_loader(trained, data.test, data.eval_transform)


def ood_images(spec: str, trained: TrainedModel, req: EvalRequest) -> torch.Tensor:
    """The test images named by ``--ood NAME[:CLASSES]`` (an in-memory dataset of the same input size).

    Classes of the checkpoint's own dataset that it was trained on are refused: they are not OOD.
    """
    name, _, class_spec = spec.partition(":")
    info = dataset_info(name)
    if "in_memory" not in info.can:
        raise ConfigError(f"--ood {describe(spec)}: out-of-distribution images come from "
                          f"{listing(datasets_that_can('in_memory'))}")
    trained_on = dataset_info(trained.dataset, trained.input_size)
    if info.family != trained_on.family:
        raise ConfigError(f"--ood {describe(spec)}: {info.name} has {info.input_size}px images, the checkpoint "
                          f"{trained_on.input_size}px ones")
    classes = parse_classes(class_spec, info.num_classes, flag="--ood") if class_spec else None
    if info.name == trained.dataset:
        seen = _trained_classes(trained, info.num_classes)
        overlap = sorted(set(classes if classes is not None else range(info.num_classes)) & set(seen))
        if overlap:
            raise ConfigError(f"--ood {describe(spec)}: the checkpoint was trained on class(es) {overlap} of "
                              f"{info.name}; name only classes it never saw (e.g. digits:5-9 for a model trained on "
                              "0-4)")
    spec_text = None if classes is None else ",".join(map(str, classes))
    data = load_in_memory(DataRequest(info.name, req.data_dir or "data", req.batch_size, classes=spec_text))
    return data["test"][0]


def _trained_classes(trained: TrainedModel, num_classes: int) -> list[int]:
    subset = trained.config.get("classes")
    return parse_classes(subset, num_classes) if subset else list(range(num_classes))


def test_tensors(data: DataBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split's uint8 images and labels (in-memory datasets only: blends are built from them)."""
    loader = data.test
    if not hasattr(loader, "images"):
        raise ConfigError(f"--blends needs an in-memory dataset ({listing(datasets_that_can('in_memory'))})")
    return loader.images, loader.labels


# -- the report --------------------------------------------------------------------------------------

def resolve_temperature(trained: TrainedModel, data: DataBundle, fit: bool) -> tuple[float | None, str | None]:
    """(temperature, where it came from): refitted on the validation split with ``fit``, else saved."""
    if not fit:
        return trained.temperature, "checkpoint" if trained.temperature is not None else None
    if not data.held_out:
        raise ConfigError("--fit_temperature needs the checkpoint's validation split, but it was trained without "
                          "--val_split (fitting on the test set would flatter its calibration); retrain with "
                          "--val_split 0.1")
    outputs, targets = predict_loader(trained, data.selection, data.eval_transform)
    fitted = temperature_fit(outputs.logits, targets)
    if fitted.value is None:
        return None, f"not identifiable on the validation split: {fitted.reason}"
    return fitted.value, "fitted on the validation split"


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
    scores = predict_batches(trained, blends.batches(batch_size)).scores()
    rho = {name: {"spearman": spearman(score, blends.ambiguity)} for name, score in scores.items()}
    return {"images": n, "seed": seed, "by_score": rho}


def evaluate(req: EvalRequest) -> tuple[dict[str, Any], Outputs, np.ndarray]:
    """Everything ``idml eval`` measures, as the ``--json`` object (plus the test outputs for plots)."""
    trained = load_trained_model(req.checkpoint, resolve_device(req.device), amp=req.amp, ema=req.ema)
    dataset = canonical_name(req.dataset or trained.dataset)
    dataset_info(dataset)  # an unknown name is a one-line error
    if req.ood:  # a bad --ood fails before any image is read
        ood_spec_check(req.ood)
    if trained.best_weights == "ema" and not req.ema and req.notes:
        print("note: the best error of this checkpoint was measured on its EMA weights; add --ema to evaluate "
              "those", file=sys.stderr)
    request = data_request(req, trained, dataset)
    data = build_data(request, trained.device)
    check_compatible(trained, dataset, data)
    for note in check_same_data(trained, request, data, req):
        print(f"note: {note}", file=sys.stderr)
    temperature, source = resolve_temperature(trained, data, req.fit_temperature)
    outputs, targets = predict_test_split(trained, data)
    check_finite_outputs(outputs.logits, outputs.uncertainty, req.checkpoint)
    report = {"checkpoint": str(req.checkpoint), "dataset": dataset}
    report |= build_report(trained, outputs, targets, temperature, source)
    if req.ood:
        ood = predict_batches(trained, ood_images(req.ood, trained, req).split(req.batch_size))
        report["ood"] = ood_section(req.ood, outputs.scores(), ood)
    if req.blends:
        report["blends"] = blends_section(trained, data, req.blends, req.blend_seed, req.batch_size)
    return report, outputs, targets


def ood_spec_check(spec: str) -> None:
    name, _, classes = spec.partition(":")
    dataset_info(name)  # one line naming the known datasets
    if classes:
        parse_classes(classes, dataset_info(name).num_classes, flag="--ood")
