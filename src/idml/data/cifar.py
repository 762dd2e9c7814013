"""CIFAR-10 / CIFAR-100 from the official "python version" archives, held in memory as uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from idml.data.safe_pickle import load_pickle
from idml.errors import DataError

#: Per-channel statistics used by the official code (CutMix-PyTorch), in [0, 1] units.
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)

LAYOUTS = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ["batches.meta", "batch.meta"],
        "labels": "labels",
        "names": "label_names",
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ["meta"],
        "labels": "fine_labels",
        "names": "fine_label_names",
        "classes": 100,
    },
}
DOWNLOAD_HINT = "get the 'CIFAR python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html"


def _layout_message(name: str, root: Path) -> str:
    layout = LAYOUTS[name]
    files = layout["train"] + layout["test"] + layout["meta"][:1]
    return f"expected {root / layout['folder']}/ holding {', '.join(files)}; {DOWNLOAD_HINT} and unpack it there"


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        raise DataError(f"{path} lacks the keys 'data' and '{label_key}' of a CIFAR batch")
    images = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key])
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be N x 3072 uint8, found {images.shape} {images.dtype}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{path}: {labels.size} labels for {images.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    return images.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _class_names(folder: Path, layout: dict) -> list[str]:
    for meta_name in layout["meta"]:
        path = folder / meta_name
        if path.exists():
            meta = load_pickle(path)
            names = meta.get(layout["names"]) if isinstance(meta, dict) else None
            if not isinstance(names, list) or len(names) != layout["classes"]:
                raise DataError(f"{path} lacks a list '{layout['names']}' of {layout['classes']} names")
            return [str(n) for n in names]
    raise DataError(f"missing {folder / layout['meta'][0]} (the label names)")


def load_cifar(name: str, data_dir: str | Path) -> dict:
    """Read ``cifar10`` or ``cifar100`` under ``data_dir``: uint8 N x 3 x 32 x 32 tensors + labels."""
    layout = LAYOUTS[name]
    root = Path(data_dir)
    folder = root / layout["folder"]
    missing = [f for f in layout["train"] + layout["test"] if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{name}: missing {folder / missing[0]}; {_layout_message(name, root)}")
    splits = {}
    for split in ("train", "test"):
        parts = [_read_batch(folder / f, layout["labels"], layout["classes"]) for f in layout[split]]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        splits[split] = (torch.from_numpy(images), torch.from_numpy(labels))
    return {"train": splits["train"], "val": splits["test"], "class_names": _class_names(folder, layout)}
