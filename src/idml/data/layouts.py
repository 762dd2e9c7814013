"""Where the official datasets live under ``--data_dir``, and the one line that says one is missing.

Torch-free, so that ``idml train`` refuses a missing dataset before importing anything heavy
(:func:`idml.training.preflight.preflight`); the loaders (:mod:`idml.data.cifar`,
:mod:`idml.data.imagenet`) check the same layout with the same words.
"""

from __future__ import annotations

from pathlib import Path

from idml.errors import DataError

CIFAR_LAYOUTS = {
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
CIFAR_DOWNLOAD_HINT = "get the 'CIFAR python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGENET_FOLDER = "imagenet-1k"
IMAGENET_LAYOUT = ("expected <data_dir>/imagenet-1k/train/<class>/*.JPEG and <data_dir>/imagenet-1k/val/<class>/*.JPEG")
IMAGENET_DOWNLOAD_HINT = "download from https://image-net.org/"


def is_file(path: Path) -> bool:
    """``path.is_file()``, with a folder we may not search (``chmod 000``) as a one-line error."""
    try:
        return path.is_file()
    except OSError as exc:  # PermissionError: is_file only swallows "does not exist"
        raise DataError(f"cannot read {path}: {exc.strerror or exc} (check the permissions of "
                        f"{path.parent} and its files)") from exc


def cifar_missing(name: str, data_dir: str | Path) -> str | None:
    """Why the ``cifar10``/``cifar100`` archive under ``data_dir`` is incomplete, or None."""
    layout = CIFAR_LAYOUTS[name]
    root = Path(data_dir)
    folder = root / layout["folder"]
    missing = [f for f in layout["train"] + layout["test"] if not is_file(folder / f)]
    if not missing:
        return None
    files = layout["train"] + layout["test"] + layout["meta"][:1]
    return (f"{name}: missing {folder / missing[0]}; expected {folder}/ holding {', '.join(files)}; "
            f"{CIFAR_DOWNLOAD_HINT} and unpack it there")


def imagenet_folder_missing(path: Path) -> str | None:
    """Why ``path`` (``<data_dir>/imagenet-1k/train`` or ``val``) is no ImageNet split, or None."""
    if path.is_dir():
        return None
    return f"missing folder {path}; {IMAGENET_LAYOUT} ({IMAGENET_DOWNLOAD_HINT})"


def missing_data(dataset: str, data_dir: str | Path) -> str | None:
    """Why an official dataset is not where ``--data_dir`` says (None for the others, and when it is)."""
    if dataset in CIFAR_LAYOUTS:
        return cifar_missing(dataset, data_dir)
    if dataset == "imagenet":
        root = Path(data_dir) / IMAGENET_FOLDER
        return imagenet_folder_missing(root / "train") or imagenet_folder_missing(root / "val")
    return None
