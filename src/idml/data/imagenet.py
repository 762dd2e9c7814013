"""ImageNet-1K (or any class-folder dataset laid out like it) through torchvision's ImageFolder.

DataLoader worker processes decode, crop and flip, and ship uint8 crops; the colour jitter, the
PCA lighting and the normalisation run batched on the training device
(:class:`idml.data.augment.ColorLighting`), from the step's own random draws.
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate
from torchvision import datasets
from torchvision.transforms import v2

from idml.errors import DataError, one_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: PCA of ImageNet's RGB pixels (AlexNet's lighting noise), as used by the official code.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
LAYOUT = "expected <data_dir>/imagenet-1k/train/<class>/*.JPEG and <data_dir>/imagenet-1k/val/<class>/*.JPEG"


def train_transform(size: int = 224) -> v2.Compose:
    """The workers' part of training augmentation: RandomResizedCrop and flip, as uint8 (C x H x W).

    Colour jitter, lighting and normalisation follow on the device (``augment.ColorLighting``).
    """
    return v2.Compose([
        v2.RandomResizedCrop(size, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.PILToTensor(),
    ])


def val_transform(size: int = 224, resize: int = 256) -> v2.Compose:
    """Resize and centre crop, as uint8; normalised on the device like the in-memory datasets."""
    return v2.Compose([
        v2.Resize(resize, antialias=True),
        v2.CenterCrop(size),
        v2.PILToTensor(),
    ])


def read_rgb(path: str) -> Image.Image:
    """Open one image as RGB; an unreadable file is a :class:`DataError` that names it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"cannot read image {path} ({one_line(exc)}); replace or delete it, "
                        "or pass --skip_bad_images to skip unreadable images") from exc


class SeededImages(Dataset):
    """An ImageFolder whose augmentation is a function of (seed, epoch, sample index).

    Each sample's transform runs under its own torch seed, so the draws do not depend on which
    worker process decodes it, how many workers there are, or where a resumed run restarted.
    Keys are ``(epoch, index)`` pairs (see ``loaders.ResumableSampler``) or plain indices.
    With ``skip_bad``, an unreadable image yields None (dropped by :func:`collate_readable`) and
    a one-line warning with the running count.
    """

    def __init__(self, folder: datasets.ImageFolder, seed: int, skip_bad: bool) -> None:
        self.folder, self.seed, self.skip_bad = folder, seed, skip_bad
        self.skipped = multiprocessing.Value("i", 0)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int] | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed costs ~0.3 ms
                return self.folder[index]
        except DataError:
            if not self.skip_bad:
                raise
            with self.skipped.get_lock():
                self.skipped.value += 1
                count = self.skipped.value
            path = self.folder.samples[index][0]
            print(f"idml: warning: skipped unreadable image {path} ({count} so far)", file=sys.stderr, flush=True)
            return None


def collate_readable(batch: list) -> Any:
    """``default_collate`` of the samples that could be read."""
    readable = [sample for sample in batch if sample is not None]
    if not readable:
        raise DataError("every image of a batch was unreadable (--skip_bad_images); check the data folder")
    return default_collate(readable)


def image_folder(path: Path, transform: nn.Module) -> datasets.ImageFolder:
    if not path.is_dir():
        raise DataError(f"missing folder {path}; {LAYOUT} (download from https://image-net.org/)")
    try:
        return datasets.ImageFolder(str(path), transform=transform, loader=read_rgb)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{path}: {one_line(exc)}; {LAYOUT}") from exc


def load_imagenet(data_dir: str | Path) -> dict:
    """The two ImageFolder datasets of ``<data_dir>/imagenet-1k``; classes come from the folders."""
    root = Path(data_dir) / "imagenet-1k"
    train = image_folder(root / "train", train_transform())
    val = image_folder(root / "val", val_transform())
    if val.classes != train.classes:
        extra = sorted(set(val.classes) ^ set(train.classes))[:3]
        raise DataError(f"{root}: train/ and val/ must hold the same class folders (differ in {extra})")
    return {"train": train, "val": val, "class_names": list(train.classes)}
