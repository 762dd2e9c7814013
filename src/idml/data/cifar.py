"""CIFAR-10 / CIFAR-100 from the official "python version" archives, held in memory as uint8.

An archive is a pickle, so its values can be anything the restricted unpickler allows: every
value is checked by type and range before NumPy or torch converts it (``np.asarray`` on a float,
a string or a nested list gives tracebacks, silently truncated labels or huge allocations), and
every problem, unreadable files included, is one :class:`DataError` line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from idml.data.layouts import CIFAR_DOWNLOAD_HINT, CIFAR_LAYOUTS, cifar_missing, is_file
from idml.data.safe_pickle import load_pickle
from idml.errors import DataError

#: Per-channel statistics used by the official code (CutMix-PyTorch), in [0, 1] units.
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)

#: kept under their old names (the layouts live in :mod:`idml.data.layouts`)
LAYOUTS, DOWNLOAD_HINT = CIFAR_LAYOUTS, CIFAR_DOWNLOAD_HINT


def _describe(value: object) -> str:
    """A short, one-line, never-failing description of a value found where another was expected.

    ``repr`` is avoided for containers (a deeply nested list raises RecursionError) and for huge
    integers (Python refuses to print more than 4300 digits).
    """
    if value is None:
        return "None"
    if isinstance(value, bool | np.bool_):
        return f"the boolean {value}"
    if isinstance(value, int | np.integer):
        return f"{int(value)}" if abs(int(value)) < 10**30 else "an integer of more than 30 digits"
    if isinstance(value, float | np.floating):
        return f"the float {float(value)!r}"
    if isinstance(value, str | bytes):
        text = repr(value[:40])
        return f"the {type(value).__name__} {text}{'...' if len(value) > 40 else ''}"
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype} with shape {value.shape}"
    return f"a {type(value).__name__}"


def _is_index(value: object) -> bool:
    """An integer class index: Python or NumPy integer, but not a boolean (True would be class 1)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _labels(value: object, path: Path, key: str, count: int, num_classes: int) -> np.ndarray:
    """``value`` as int64 class indices, or a one-line :class:`DataError`.

    The official archives hold a list of ints; an integer array is accepted too. Anything else
    (floats, which would be truncated, strings, None, nested lists, booleans) is refused by type
    and value *before* NumPy converts it: ``np.asarray`` on such values gives tracebacks, silently
    truncated labels, or (for nested lists reusing one another) a huge allocation.
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu" or value.ndim != 1:
            raise DataError(f"{path}: '{key}' must be a list of integer class indices, found {_describe(value)}")
        labels = value
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            if not _is_index(item):
                raise DataError(f"{path}: '{key}' must hold integer class indices, found {_describe(item)} "
                                f"at position {position}")
        labels = value
    else:
        raise DataError(f"{path}: '{key}' must be a list of integer class indices, found {_describe(value)}")
    if len(labels) != count:
        raise DataError(f"{path}: {len(labels)} labels for {count} images")
    if len(labels):
        low, high = (min(labels), max(labels)) if isinstance(labels, list | tuple) else (labels.min(), labels.max())
        if low < 0 or high >= num_classes:
            raise DataError(f"{path}: labels must lie in [0, {num_classes}), found {_describe(low)}..{_describe(high)}")
    return np.asarray(labels, dtype=np.int64)  # exact: every value lies in [0, num_classes)


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        raise DataError(f"{path} lacks the keys 'data' and '{label_key}' of a CIFAR batch")
    images = batch["data"]
    if not isinstance(images, np.ndarray):
        raise DataError(f"{path}: 'data' must be an N x 3072 uint8 array, found {_describe(images)}")
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be N x 3072 uint8, found {images.shape} {images.dtype}")
    labels = _labels(batch[label_key], path, label_key, images.shape[0], num_classes)
    return images.reshape(-1, 3, 32, 32), labels


def _name(value: object) -> str | None:
    """A class name from the meta file: ``str``, or ``bytes`` decoded (UTF-8, else latin-1)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    return None


def _class_names(folder: Path, layout: dict) -> list[str]:
    key, classes = layout["names"], layout["classes"]
    for meta_name in layout["meta"]:
        path = folder / meta_name
        if is_file(path):
            meta = load_pickle(path)
            names = meta.get(key) if isinstance(meta, dict) else None
            if not isinstance(names, list | tuple):
                raise DataError(f"{path} lacks a list '{key}' of {classes} names (found {_describe(names)})")
            if len(names) != classes:
                raise DataError(f"{path} lacks a list '{key}' of {classes} names (found {len(names)} names)")
            decoded = [_name(n) for n in names]
            bad = next((i for i, n in enumerate(decoded) if n is None), None)
            if bad is not None:
                raise DataError(f"{path}: '{key}' must be a flat list of names (text), found "
                                f"{_describe(names[bad])} at position {bad}")
            return decoded
    raise DataError(f"missing {folder / layout['meta'][0]} (the label names)")


def load_cifar(name: str, data_dir: str | Path) -> dict:
    """Read ``cifar10`` or ``cifar100`` under ``data_dir``: uint8 N x 3 x 32 x 32 tensors + labels."""
    layout = LAYOUTS[name]
    folder = Path(data_dir) / layout["folder"]
    problem = cifar_missing(name, data_dir)
    if problem:
        raise DataError(problem)
    splits = {}
    for split in ("train", "test"):
        parts = [_read_batch(folder / f, layout["labels"], layout["classes"]) for f in layout[split]]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        splits[split] = (torch.from_numpy(images), torch.from_numpy(labels))
    return {"train": splits["train"], "test": splits["test"], "class_names": _class_names(folder, layout)}
