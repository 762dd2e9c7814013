"""ImageNet-1K (or any class-folder dataset laid out like it) through torchvision's ImageFolder.

DataLoader worker processes decode, crop and flip, and ship uint8 crops; the colour jitter, the
PCA lighting and the normalisation run batched on the training device
(:class:`idml.data.augment.ColorLighting`), from the step's own random draws.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision import datasets
from torchvision.transforms import v2

from idml.data.image_files import read_training_image
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


def image_folder(path: Path, transform: nn.Module) -> datasets.ImageFolder:
    if not path.is_dir():
        raise DataError(f"missing folder {path}; {LAYOUT} (download from https://image-net.org/)")
    try:
        return datasets.ImageFolder(str(path), transform=transform, loader=read_training_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{path}: {one_line(exc)}; {LAYOUT}") from exc


def load_imagenet(data_dir: str | Path) -> dict:
    """The two ImageFolder datasets of ``<data_dir>/imagenet-1k``; classes come from the folders.

    ``val/`` is ImageNet's test split here, as in the official code (and the literature).
    """
    root = Path(data_dir) / "imagenet-1k"
    train = image_folder(root / "train", train_transform())
    test = image_folder(root / "val", val_transform())
    if test.classes != train.classes:
        extra = sorted(set(test.classes) ^ set(train.classes))[:3]
        raise DataError(f"{root}: train/ and val/ must hold the same class folders (differ in {extra})")
    return {"train": train, "test": test, "class_names": list(train.classes)}
