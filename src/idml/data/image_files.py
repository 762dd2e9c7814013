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

Every image file idml reads goes through this module. :func:`opened` is the one place that calls
Pillow's ``Image.open``; :func:`read_image` decodes a whole file with it. The training workers of
ImageNet use :func:`read_encoded` (a file's bytes and header, nothing decoded) and
:func:`decode_rgb` (those bytes decoded, at a reduced scale where asked): plain JPEGs (YCbCr or
grayscale, the files of ImageNet but a few) take libjpeg-turbo through simplejpeg there, which
gives Pillow's pixels in less time; every other file goes through :func:`opened`.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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

try:  # a dependency; without it (a platform with no wheel) JPEGs are decoded by Pillow, more slowly
    import simplejpeg
except ImportError:  # pragma: no cover - installed with idml
    simplejpeg = None

Preparer = Callable[[Image.Image], Tensor]
#: The 8x8 digits hold 0..16 "ink" counts per 4x4 block of a 32x32 bitmap.
DIGIT_LEVELS = 16
DIGIT_SIZE = 8
#: what the line about an unreadable training image tells the user to do
SKIP_HINT = "replace or delete it, or pass --skip_bad_images to skip unreadable images"


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


@contextlib.contextmanager
def opened(source: str | Path | bytes, name: str | Path) -> Iterator[Image.Image]:
    """``source`` (a path, or a file's bytes) opened lazily by Pillow: the one call of ``Image.open``.

    Whatever fails while the image is open (identifying it, a size past Pillow's decompression-bomb
    limit, decoding it) is one :class:`DataError` line naming the file ``name``. Pillow's decoders
    raise many kinds of exception on damaged input (OSError, SyntaxError, ValueError,
    DecompressionBombError, and others on fuzzed files), so every ``Exception`` is translated.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            yield img
    except DataError:
        raise
    except UnidentifiedImageError as exc:
        raise DataError(f"cannot read image {name}: not an image PIL can read") from exc
    except Exception as exc:
        raise DataError(f"cannot read image {name}: {one_line(exc)}") from exc


#: PIL modes of more than 8 bits per channel: converting them to RGB clips every value above 255
#: (a 16-bit scan becomes white) or truncates fractions (a float image becomes black).
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def read_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully; a file that is not a readable 8-bit image is a one-line :class:`DataError`."""
    with opened(path, path) as img:
        img.load()
        img = img.copy()
    if img.mode in WIDE_MODES:
        raise DataError(f"cannot read image {path}: it has more than 8 bits per channel (PIL mode {img.mode}), "
                        "which converting to RGB would clip; convert it to 8-bit first")
    return img


def read_training_image(path: str | Path) -> Image.Image:
    """An RGB image of a training set; the error says how to go on without it."""
    try:
        return read_image(path).convert("RGB")
    except DataError as exc:
        raise DataError(f"{exc}; {SKIP_HINT}") from exc


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes and what its header says, read without decoding the pixels: enough to
    draw a crop on the full image's size, and then decode only as much as the crop needs."""

    path: str
    data: bytes
    width: int
    height: int
    #: Pillow's name of the file format ("JPEG", "PNG", ...) and of its pixel mode ("RGB", "L", "CMYK", ...)
    format: str
    mode: str

    @property
    def plain_jpeg(self) -> bool:
        """A JPEG of RGB or grayscale pixels: what simplejpeg and GPU JPEG decoders decode as Pillow does."""
        return self.format == "JPEG" and self.mode in ("RGB", "L")


def read_encoded(path: str | Path) -> EncodedImage:
    """The bytes of ``path`` and its header (no pixel is decoded).

    Only a regular file is read, and no more than its size: a name that leads to a device or a
    pipe is an error, not an endless read.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # checked before opening: opening a pipe waits for a writer
            raise DataError(f"cannot read image {path}: not a regular file")
        with open(path, "rb") as fh:
            data = fh.read(info.st_size)
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    return jpeg_header(data, path) or _pillow_header(data, path)


def read_training_file(path: str | Path) -> EncodedImage:
    """:func:`read_encoded` for a training set: the error says how to go on without the file."""
    try:
        return read_encoded(path)
    except DataError as exc:
        raise DataError(f"{exc}; {SKIP_HINT}") from exc


def _pillow_header(data: bytes, path: str | Path) -> EncodedImage:
    with opened(data, path) as img:
        return EncodedImage(str(path), data, img.width, img.height, img.format or "", img.mode)


#: libjpeg-turbo's colour spaces of the JPEGs it decodes to RGB exactly as Pillow does
PLAIN_JPEG = {"YCbCr": "RGB", "Gray": "L"}


def jpeg_header(data: bytes, path: str | Path) -> EncodedImage | None:
    """The header of a plain (YCbCr or grayscale) JPEG read by libjpeg-turbo, or None for any other
    file, which Pillow then identifies. Pillow's JPEG header parser is Python and costs a tenth of
    a training crop; this is C. Pillow's decompression-bomb limit applies here too."""
    if simplejpeg is None or not simplejpeg.is_jpeg(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # Pillow gives the error line, or reads what libjpeg-turbo's header reader does not
    if colorspace not in PLAIN_JPEG:
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > 2 * limit:
        raise DataError(f"cannot read image {path}: {width}x{height} pixels is more than twice Pillow's "
                        f"decompression-bomb limit ({limit} pixels)")
    return EncodedImage(str(path), data, width, height, "JPEG", PLAIN_JPEG[colorspace])


def decode_rgb(image: EncodedImage, reduce: int = 1) -> np.ndarray:
    """``image`` decoded as H x W x 3 uint8 RGB, ``reduce`` (1, 2, 4 or 8) times smaller per side
    where the format can do that while decoding (JPEG's DCT scaling: ceil(width / reduce) wide),
    else at full size; the caller reads the scale from the array's shape.

    RGB and grayscale JPEGs are decoded by simplejpeg (libjpeg-turbo: the same pixels as Pillow,
    scaled or not, in less time); every other file by Pillow, converted to RGB as the official code does.
    """
    if image.plain_jpeg and simplejpeg is not None:
        size = {"min_width": -(-image.width // reduce), "min_height": -(-image.height // reduce)} if reduce > 1 else {}
        try:
            return simplejpeg.decode_jpeg(image.data, "RGB", **size)
        except ValueError as exc:  # a corrupt or truncated JPEG
            raise DataError(f"cannot read image {image.path}: {one_line(exc)}") from exc
    with opened(image.data, image.path) as img:
        if reduce > 1 and image.format == "JPEG":
            img.draft("RGB", (image.width // reduce, image.height // reduce))
        return np.asarray(img.convert("RGB"))


def _resize(size: int) -> Preparer:
    pipeline = v2.Compose([v2.Resize((size, size), antialias=True), v2.PILToTensor()])
    return lambda img: pipeline(img.convert("RGB"))


#: Longest side / shortest side an image may have for Resize + CenterCrop: resizing the shorter side
#: of a 1 x 100,000 strip to 256 pixels would allocate gigabytes for the central crop's sake.
MAX_ASPECT = 32


def _resize_crop(size: int) -> Preparer:
    pipeline = v2.Compose([v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size), v2.PILToTensor()])

    def prepare(img: Image.Image) -> Tensor:
        if max(img.size) > MAX_ASPECT * min(img.size):
            raise DataError(f"an image of {img.width}x{img.height} pixels is too elongated to resize and centre-crop "
                            f"(sides more than {MAX_ASPECT}:1); crop it first")
        return pipeline(img.convert("RGB"))

    return prepare


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


def preparation(dataset: str, input_size: int) -> str:
    """The name in :data:`PREPARERS` of how images are prepared for a model trained on ``dataset``
    (what an exported model's metadata records, without the dataset's own name or path)."""
    info = dataset_info(dataset, input_size)
    return info.name if info.name in PREPARERS else info.family


def image_preparer(dataset: str, input_size: int) -> Preparer:
    """How to turn a decoded image into the uint8 input of a model trained on ``dataset``."""
    return PREPARERS[preparation(dataset, input_size)](input_size)
