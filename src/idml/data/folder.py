"""Your own images in class folders: ``--dataset folder --data_dir D``.

Layout: ``D/train/<class>/*`` and ``D/val/<class>/*`` (image files at any depth below the class
folder; hidden files and folders are ignored). The classes are the folder names, sorted; train/
and val/ must hold the same ones, none of them empty. Without ``val/``, ``--val_split`` holds out
a seeded, class-stratified share of ``train/``. How the images are then sized, held and
augmented is what every user dataset shares: :mod:`idml.data.user`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from idml.data.image_files import read_training_image
from idml.data.splits import stratified_indices
from idml.data.types import DataBundle, DataRequest
from idml.data.user import UserData, check_classes, user_bundle
from idml.errors import ConfigError, DataError

LAYOUT = "expected D/train/<class>/<images> and D/val/<class>/<images> (D = --data_dir)"


@dataclass
class FileImages:
    """A split held as image files."""

    files: list[Path]
    labels: list[int]
    #: the data folder (--data_dir): images are named relative to it
    root: Path = Path()

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> Image.Image:
        return read_training_image(self.files[index])

    def where(self, index: int) -> str:
        return str(self.files[index])

    def key(self, index: int) -> str:
        path = self.files[index]
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else path.as_posix()


# -- the folder layout ----------------------------------------------------------------------------
def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def scan_split(folder: Path) -> tuple[list[str], list[Path], list[int]]:
    """The class names, files and labels of one split folder; one-line errors for a bad layout."""
    if not folder.is_dir():
        raise DataError(f"missing folder {folder}; {LAYOUT}")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and _visible(d))
    if not classes:
        raise DataError(f"{folder} holds no class folders; {LAYOUT}")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = _class_images(folder / name)
        if not found:
            raise DataError(f"class folder {folder / name} holds no image files ({' '.join(IMG_EXTENSIONS)}); "
                            "add images or remove the folder")
        files += found
        labels += [label] * len(found)
    return classes, files, labels


def load_folder(data_dir: str | Path, val_split: float = 0.0, seed: int = 0) -> UserData:
    """Both splits of ``data_dir``; their class folders must agree, and there must be two or more.

    Without a ``val/`` folder, ``val_split`` > 0 holds out a seeded, class-stratified share of
    ``train/`` as the validation split (the same files for the same seed, so ``idml eval``
    finds them again from the checkpoint's settings).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"--data_dir {root} is not a folder; {LAYOUT}")
    train_classes, train_files, train_labels = scan_split(root / "train")
    if val_split > 0:
        if (root / "val").exists():
            raise ConfigError(f"--val_split holds out part of train/ when there is no val/ folder, but {root} "
                              "has one: drop --val_split (val/ is the validation split) or remove val/")
        check_classes(train_classes, str(root))
        kept, held = stratified_indices(np.asarray(train_labels), val_split, seed)
        pick = lambda items, idx: [items[i] for i in idx]  # noqa: E731 - two uses, one line each
        return UserData(FileImages(pick(train_files, kept), pick(train_labels, kept), root),
                        FileImages(pick(train_files, held), pick(train_labels, held), root), train_classes,
                        f"folder {root} (validation: {val_split:g} of train/, seed {seed})")
    if not (root / "val").exists() and (root / "train").is_dir():
        raise DataError(f"missing folder {root / 'val'}; {LAYOUT}, or pass --val_split 0.1 to hold out a "
                        "share of train/ as the validation split")
    val_classes, val_files, val_labels = scan_split(root / "val")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))[:3]
        only_val = sorted(set(val_classes) - set(train_classes))[:3]
        raise DataError(f"{root / 'train'} and {root / 'val'} must hold the same class folders "
                        f"(only in train/: {only_train or 'none'}; only in val/: {only_val or 'none'})")
    check_classes(train_classes, str(root))
    return UserData(FileImages(train_files, train_labels, root), FileImages(val_files, val_labels, root), train_classes,
                    f"folder {root}")


def build_folder(req: DataRequest, device: torch.device) -> DataBundle:
    """``--dataset folder``: the images under ``req.data_dir``."""
    return user_bundle(load_folder(req.data_dir, req.val_split, req.seed), req, device)
