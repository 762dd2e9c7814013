"""Image files prepared for a trained model exactly as its validation images were.

- 32x32 datasets (CIFAR-10/100): the image is converted to RGB and resized to 32x32 (bilinear,
  antialiased).
- ImageNet: RGB, Resize(256) then CenterCrop(224) (scaled for another ``input_size``).
- your own images (``folder``, ``hf:<path>``): as CIFAR for inputs of at most 64 pixels a side,
  as ImageNet above that (see :mod:`idml.data.folder`).
- digits: the quick-start images are scikit-learn's 8x8 digits, light ink on a dark background
  (values = amount of ink), upsampled to 32x32 and repeated over three channels. A digit file is
  converted to grayscale, inverted when its border is light (dark ink on white paper), reduced to
  8x8 by block averaging (PIL's BOX filter: the 8x8 digits count the ink in 4x4 blocks of 32x32
  bitmaps), quantised to the 17 ink levels 0..16, then upsampled by
  :func:`idml.data.digits.upsample_digits`, the function that builds the training images. Crop the
  digit so that it fills the picture, as in the training data.

Every preparer returns a uint8 tensor (3 x H x W); the checkpoint's mean and std normalise it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from idml.data.catalog import dataset_info
from idml.data.digits import upsample_digits
from idml.errors import DataError, one_line

Preparer = Callable[[Image.Image], Tensor]
#: The 8x8 digits hold 0..16 "ink" counts per 4x4 block of a 32x32 bitmap.
DIGIT_LEVELS = 16
DIGIT_SIZE = 8


def image_files(paths: list[str]) -> list[Path]:
    """Files as given, folders replaced by their image files (any depth, sorted by path)."""
    files: list[Path] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise DataError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"no such file or folder: {path}")
    return files


def read_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully: the one place where idml opens an image file.

    A file that is not a readable image is a one-line :class:`DataError` naming it. Pillow's
    decoders raise many kinds of exception on damaged input (OSError, SyntaxError, ValueError,
    DecompressionBombError, and others on fuzzed files), so every ``Exception`` is translated.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except UnidentifiedImageError as exc:
        raise DataError(f"cannot read image {path}: not an image PIL can read") from exc
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {one_line(exc)}") from exc


def read_training_image(path: str | Path) -> Image.Image:
    """An RGB image of a training set; the error says how to go on without it."""
    try:
        return read_image(path).convert("RGB")
    except DataError as exc:
        raise DataError(f"{exc}; replace or delete it, or pass --skip_bad_images to skip unreadable "
                        "images") from exc


def _resize(size: int) -> Preparer:
    pipeline = v2.Compose([v2.Resize((size, size), antialias=True), v2.PILToTensor()])
    return lambda img: pipeline(img.convert("RGB"))


def _resize_crop(size: int) -> Preparer:
    pipeline = v2.Compose([v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size), v2.PILToTensor()])
    return lambda img: pipeline(img.convert("RGB"))


def prepare_digit(img: Image.Image) -> Tensor:
    """A digit picture as a quick-start image (see the module docstring)."""
    gray = np.asarray(img.convert("L"), dtype=np.float64)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 127.5:
        gray = 255.0 - gray
    small = Image.fromarray(gray.astype(np.uint8)).resize((DIGIT_SIZE, DIGIT_SIZE), Image.Resampling.BOX)
    levels = np.round(np.asarray(small, dtype=np.float64) * DIGIT_LEVELS / 255.0)  # 0..16, like load_digits()
    ink = torch.from_numpy(levels).float().view(1, 1, DIGIT_SIZE, DIGIT_SIZE) * (255.0 / DIGIT_LEVELS)
    return upsample_digits(ink)[0]


#: dataset name, else input family -> how to prepare an image for a model of that input size.
PREPARERS: dict[str, Callable[[int], Preparer]] = {
    "digits": lambda size: prepare_digit,
    "cifar": _resize,
    "imagenet": _resize_crop,
}


def image_preparer(dataset: str, input_size: int) -> Preparer:
    """How to turn a decoded image into the uint8 input of a model trained on ``dataset``."""
    info = dataset_info(dataset, input_size)
    make = PREPARERS.get(info.name) or PREPARERS[info.family]
    return make(input_size)
