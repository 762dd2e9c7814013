"""Subsets of an in-memory dataset: a class subset (``--classes``) and a held-out validation split
(``--val_split``).

Why: choosing the "best" epoch on the test set (as the official code does) flatters every method;
a seeded, class-stratified share of the training set gives an honest selection set and the data
for fitting a softmax temperature. Training on a class subset leaves the other classes as
out-of-distribution images the network has never seen (``idml eval --ood digits:5-9``).

The data dicts here are the in-memory loaders' format: the official ``"train"`` and ``"test"``
splits as (uint8 images, int64 labels) tensor pairs, plus ``"class_names"``; ``split_validation``
adds ``"held_out"``, taken from ``"train"``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from idml.errors import DataError


def keep_classes(images: torch.Tensor, labels: torch.Tensor, classes: list[int],
                 num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of ``classes`` only, labels renumbered 0..k-1 in the order of ``classes``."""
    lookup = torch.full((num_classes,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    new = lookup[labels.cpu()]
    kept = new >= 0
    return images[kept.to(images.device)], new[kept].to(labels.device)


def select_classes(data: dict, classes: list[int]) -> dict:
    """``data`` restricted to ``classes`` in both splits; the class names are kept (in that order)."""
    names = data["class_names"]
    return {
        **data,
        "train": keep_classes(*data["train"], classes, len(names)),
        "test": keep_classes(*data["test"], classes, len(names)),
        "class_names": [names[c] for c in classes],
    }


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices: ``fraction`` of every class held out, chosen by ``seed`` alone.

    scikit-learn's ``train_test_split(stratify=...)`` keeps the class proportions of both parts.
    """
    index = np.arange(len(labels))
    try:
        kept, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=labels, shuffle=True)
    except ValueError as exc:  # a class with one image, or a split too small to hold every class
        raise DataError(f"--val_split {fraction:g} cannot hold out a share of every class of {len(labels)} "
                        f"training images ({exc}); use a larger --val_split or more classes' data") from exc
    return np.sort(kept), np.sort(held)


def split_validation(data: dict, fraction: float, seed: int) -> dict:
    """Move a seeded, class-stratified ``fraction`` of the training set to ``"held_out"``.
    ``fraction == 0`` returns ``data`` unchanged (no ``"held_out"``)."""
    if fraction <= 0:
        return data
    images, labels = data["train"]
    kept, held = stratified_indices(labels.cpu().numpy(), fraction, seed)
    kept_t, held_t = torch.from_numpy(kept), torch.from_numpy(held)
    return {
        **data,
        "train": (images[kept_t], labels[kept_t]),
        "held_out": (images[held_t], labels[held_t]),
    }
