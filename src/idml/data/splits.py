"""Subsets of an in-memory dataset: a class subset (``--classes``) and a held-out validation split
(``--val_split``).

Why: choosing the "best" epoch on the test set (as the official code does) flatters every method;
a seeded, class-stratified share of the training set gives an honest selection set and the data
for fitting a softmax temperature. Training on a class subset leaves the other classes as
out-of-distribution images the network has never seen (``idml eval --ood digits:5-9``).

The data dicts here are the in-memory loaders' format: ``"train"`` and ``"val"`` (the official test
split) as (uint8 images, int64 labels) tensor pairs, plus ``"class_names"``; ``split_validation``
adds ``"test"``.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from idml.errors import ConfigError, DataError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_classes(spec: str, num_classes: int | None = None, flag: str = "--classes") -> list[int]:
    """Class indices from ``"0-4"``, ``"0,3,7"`` or ``"0-2,5"`` (in the order written, no repeats).

    ``num_classes`` (when known) bounds the indices; every mistake is a one-line ConfigError.
    """
    classes: list[int] = []
    for part in str(spec).replace(" ", "").split(","):
        match = _RANGE.match(part)
        if not match:
            raise ConfigError(f"{flag} {spec!r}: write class indices as ranges and lists, e.g. 0-4 or 0,3,7")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ConfigError(f"{flag} {spec!r}: the range {part} runs backwards (write {last}-{first})")
        classes.extend(range(first, last + 1))
    if len(set(classes)) != len(classes):
        raise ConfigError(f"{flag} {spec!r} names a class twice")
    if num_classes is not None and max(classes) >= num_classes:
        raise ConfigError(f"{flag} {spec!r}: class {max(classes)} does not exist (the dataset has classes "
                          f"0-{num_classes - 1})")
    if num_classes is not None and len(classes) < 2:
        raise ConfigError(f"{flag} {spec!r}: a classifier needs at least 2 classes")
    return classes


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
        "val": keep_classes(*data["val"], classes, len(names)),
        "class_names": [names[c] for c in classes],
    }


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices: ``fraction`` of every class held out, chosen by ``seed`` alone.

    scikit-learn's ``train_test_split(stratify=...)`` keeps the class proportions of both parts.
    """
    from sklearn.model_selection import train_test_split  # imported here: config imports this module

    index = np.arange(len(labels))
    try:
        kept, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=labels, shuffle=True)
    except ValueError as exc:  # a class with one image, or a split too small to hold every class
        raise DataError(f"--val_split {fraction:g} cannot hold out a share of every class of {len(labels)} "
                        f"training images ({exc}); use a larger --val_split or more classes' data") from exc
    return np.sort(kept), np.sort(held)


def split_validation(data: dict, fraction: float, seed: int) -> dict:
    """Move a seeded, class-stratified ``fraction`` of the training set to ``"val"``; the official
    test split becomes ``"test"``. ``fraction == 0`` returns ``data`` unchanged (no ``"test"``)."""
    if fraction <= 0:
        return data
    images, labels = data["train"]
    kept, held = stratified_indices(labels.cpu().numpy(), fraction, seed)
    kept_t, held_t = torch.from_numpy(kept), torch.from_numpy(held)
    return {
        **data,
        "train": (images[kept_t], labels[kept_t]),
        "val": (images[held_t], labels[held_t]),
        "test": data["val"],
    }
