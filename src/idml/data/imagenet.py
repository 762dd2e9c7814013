"""ImageNet-1K (or any class-folder dataset laid out like it) through torchvision's ImageFolder.

DataLoader worker processes read the training files, draw each crop and flip, and either decode,
crop and flip them and ship uint8 crops (``decode="cpu"``, :mod:`idml.data.crops`), or ship the
file's bytes with the draws, for the GPU to decode in batches (``decode="gpu"``,
:mod:`idml.data.gpu_decode`). The colour jitter, the PCA lighting and the normalisation run on
the training device (:class:`idml.data.augment.ColorLighting`), from the step's own random draws.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision import datasets
from torchvision.transforms import v2

from idml.data.crops import DecodeCropFlip
from idml.data.gpu_decode import EncodedCropFlip
from idml.data.identity import split_identity
from idml.data.image_files import ShorterSide, read_training_file, read_training_image
from idml.data.layouts import IMAGENET_FOLDER, IMAGENET_LAYOUT, imagenet_folder_missing
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
LAYOUT = IMAGENET_LAYOUT


def train_transform(decode: str = "cpu", size: int = 224) -> nn.Module:
    """The workers' part of training augmentation, on an encoded file: RandomResizedCrop and flip,
    as a uint8 crop (``cpu``), or only drawn, for the GPU to apply (``gpu``).

    Colour jitter, lighting and normalisation follow on the device (``augment.ColorLighting``).
    """
    return EncodedCropFlip(size) if decode == "gpu" else DecodeCropFlip(size)


def val_transform(size: int = 224, resize: int = 256) -> v2.Compose:
    """Resize and centre crop, as uint8; normalised on the device like the in-memory datasets."""
    return v2.Compose([
        ShorterSide(resize),
        v2.CenterCrop(size),
        v2.PILToTensor(),
    ])


def image_folder(path: Path, transform: nn.Module, loader=read_training_image) -> datasets.ImageFolder:
    problem = imagenet_folder_missing(path)
    if problem:
        raise DataError(problem)
    try:
        return datasets.ImageFolder(str(path), transform=transform, loader=loader)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{path}: {one_line(exc)}; {LAYOUT}") from exc


def folder_identity(images: datasets.ImageFolder) -> dict:
    """The identity of an ImageFolder split: its files (relative to its folder) and labels, in order."""
    prefix = images.root.rstrip("/\\") + "/"
    return split_identity((path.removeprefix(prefix) for path, _ in images.samples),
                          (label for _, label in images.samples))


def load_imagenet(data_dir: str | Path, decode: str = "cpu") -> dict:
    """The two ImageFolder datasets of ``<data_dir>/imagenet-1k``; classes come from the folders.

    ``val/`` is ImageNet's test split here, as in the official code (and the literature).
    ``decode``: where the training JPEGs are decoded (:func:`train_transform`); test images are
    always decoded by Pillow in the workers, resized and centre-cropped as the official code does.
    """
    root = Path(data_dir) / IMAGENET_FOLDER
    train = image_folder(root / "train", train_transform(decode), loader=read_training_file)
    test = image_folder(root / "val", val_transform())
    if test.classes != train.classes:
        extra = sorted(set(test.classes) ^ set(train.classes))[:3]
        raise DataError(f"{root}: train/ and val/ must hold the same class folders (differ in {extra})")
    return {"train": train, "test": test, "class_names": list(train.classes)}
