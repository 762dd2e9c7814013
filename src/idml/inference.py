"""A trained model rebuilt from its checkpoint, with what inference needs to know about its data.

``idml eval`` and ``idml predict`` both start here: the checkpoint's ``model`` settings rebuild
the network, ``state_dict`` fills it, and ``class_names``, ``mean``, ``std`` and ``input_size``
say how to read images and name the predictions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from idml.checkpoint import load_checkpoint
from idml.errors import IdmlError
from idml.ism import IntrospectiveClassifier, uncertainty_score
from idml.models import ModelSpec, build_from_spec


@dataclass
class TrainedModel:
    """A model in eval mode on its device, with its training data's facts."""

    model: IntrospectiveClassifier
    dataset: str
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    device: torch.device

    @property
    def has_ism(self) -> bool:
        return self.model.head.ism


@dataclass
class Outputs:
    """Plain logits and uncertainty scores of many images, on the CPU, as NumPy arrays."""

    logits: np.ndarray
    uncertainty: np.ndarray | None


def _spec_from_checkpoint(state: dict, path: Path) -> ModelSpec:
    saved = state["model"]
    known = {f.name for f in fields(ModelSpec)}
    try:
        return ModelSpec(**{k: v for k, v in saved.items() if k in known})
    except TypeError as exc:
        raise IdmlError(f"{path}: its model settings are incomplete ({exc})") from None


def load_trained_model(path: str | Path, device: torch.device) -> TrainedModel:
    """Rebuild and load the network saved in ``path`` (an ``idml train`` checkpoint)."""
    path = Path(path)
    state = load_checkpoint(path)
    spec = _spec_from_checkpoint(state, path)
    model = build_from_spec(spec)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise IdmlError(f"{path}: weights do not fit the saved model settings ({str(exc).splitlines()[0]})") from None
    model.to(device).eval()
    num_classes = model.head.fc.out_features
    names = [str(n) for n in state.get("class_names") or range(num_classes)]
    return TrainedModel(
        model, spec.dataset, names, tuple(state["mean"]), tuple(state["std"]), int(state["input_size"]), device
    )


@torch.no_grad()
def run_model(trained: TrainedModel, batches: Iterable[Tensor]) -> Outputs:
    """Plain logits and ``||u||^2`` of every image in ``batches`` (normalised float tensors)."""
    logits, scores = [], []
    for images in batches:
        out = trained.model(images.to(trained.device))
        logits.append(out.logits.float().cpu())
        if out.uncertainty is not None:
            scores.append(uncertainty_score(out.uncertainty).cpu())
    return Outputs(
        torch.cat(logits).numpy().astype(np.float64),
        torch.cat(scores).numpy().astype(np.float64) if scores else None,
    )
