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

Every image file idml reads goes through this module, and every file Pillow decodes through
:func:`opened`, the one call of ``Image.open``: only the :data:`DECODERS` are tried, only regular
files are read, and whatever fails is one :class:`DataError` line naming the file. One pixel rule
(:func:`pixel_reduction`) says how much of a file may be decoded. :func:`read_image` decodes a
whole file with them (16- and 32-bit images scaled by their bit depth). The training workers of
ImageNet use :func:`read_encoded` (a file's bytes and header, nothing decoded) and
:func:`decode_rgb` (those bytes decoded, at a reduced scale where asked or where the pixel rule
requires it): plain JPEGs (YCbCr or grayscale, the files of ImageNet but a few) take libjpeg-turbo
through simplejpeg there, which gives Pillow's pixels in less time; every other file goes through
:func:`opened`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from idml.data.catalog import dataset_info
from idml.data.digits import upsample_digits
from idml.errors import DataError, one_line
from idml.files import NotRegularFile, open_regular

try:  # a dependency; without it (a platform with no wheel) JPEGs are decoded by Pillow, more slowly
    import simplejpeg
except ImportError:  # pragma: no cover - installed with idml
    simplejpeg = None

Preparer = Callable[[Image.Image], Tensor]
logging.getLogger("PIL").addHandler(logging.NullHandler())  # Pillow logs damaged files; idml says it in one line
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


#: The decoders idml lets Pillow use (its format names): the raster formats of the files idml
#: scans (torchvision's IMG_EXTENSIONS: JPEG, PNG, PPM/PGM/PBM, BMP, TIFF, WebP) and GIF. Pillow's other
#: plug-ins are never tried, whatever a file is called: EPS runs the external Ghostscript program on
#: the file, and rarely used decoders (PSD, FITS, SPIDER, ...) are where fuzzed files find bugs.
DECODERS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
#: The most pixels idml decodes from one file: 2**25 (about 5793 x 5793), above the largest image idml
#: prepares (4681 x 4681 for --input_size 4096) and above nearly every camera photograph, a third of
#: Pillow's own limit. A small compressed file can declare any size (a 674 KB PNG of 13000 x 13000
#: cost 2.1 GB in every worker that decoded it): bigger JPEGs are decoded at 1/2, 1/4 or 1/8 scale
#: (libjpeg's DCT scaling, cheap and still larger than any input), other formats are refused
#: (:func:`pixel_reduction`).
MAX_IMAGE_PIXELS = 2**25
#: The reductions per side that JPEG decoders apply while decoding (DCT scaling), smallest first.
JPEG_REDUCTIONS = (2, 4, 8)
#: Pillow's own decompression-bomb check (``Image.open`` refuses an image of more than twice
#: ``Image.MAX_IMAGE_PIXELS``) set just above the largest image idml's rule accepts (a JPEG of 64
#: times MAX_IMAGE_PIXELS, decoded at 1/8 scale): below it idml's rule decides alone (Pillow's default
#: refused a 15000 x 15000 JPEG that idml decodes at 1/8 scale), above it both refuse.
Image.MAX_IMAGE_PIXELS = 32 * MAX_IMAGE_PIXELS
#: 8-bit modes of one channel (and alpha), decoded to "L"; other 8-bit modes become "RGB".
GRAY_MODES = ("1", "L", "LA", "La")
#: The ranges a 32-bit integer or float image may be in, smallest first: such files carry no bit
#: depth (16-bit data is often stored in 32-bit integers), so the smallest that holds the image's
#: largest value is taken; [0, 1] is the float convention.
FULL_SCALES = (1.0, 255.0, 65535.0, 4294967295.0)
#: what the line about an unreadable training image tells the user to do
SKIP_HINT = "replace or delete it, or pass --skip_bad_images to skip unreadable images"

ImageSource = str | Path | bytes


def pixel_reduction(width: int, height: int, fmt: str, name: str | Path) -> int:
    """How many times smaller per side an image of ``width`` x ``height`` pixels in format ``fmt``
    (Pillow's name) is decoded so as to hold at most :data:`MAX_IMAGE_PIXELS`: 1 when it fits, else
    2, 4 or 8 for a JPEG that fits at that scale (its decoders scale while decoding); any other
    image above the limit is a one-line :class:`DataError` naming ``name``. The one pixel rule of
    every decoder: Pillow's, simplejpeg's and the GPU's."""
    if width * height <= MAX_IMAGE_PIXELS:
        return 1
    if fmt in ("JPEG", "MPO"):  # MPO: a camera's JPEG holding several pictures
        for scale in JPEG_REDUCTIONS:
            if -(-width // scale) * -(-height // scale) <= MAX_IMAGE_PIXELS:
                return scale
    raise DataError(f"cannot read image {name}: {width} x {height} is more than the {MAX_IMAGE_PIXELS:,} pixels "
                    "idml decodes from one file; downscale it")


def _sixteen_bit(img: Image.Image) -> bool:
    """Whether ``img``'s wide values are 16-bit: the "I;16" modes, and Pillow's "I" images of PGM/PPM
    files with a maximum value above 255 (Pillow rescales those to 0..65535, or keeps 0..65535 as
    it is: the bit depth is 16 whatever the values, and a dark picture must stay dark)."""
    return img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PPM")


def _eight_bit(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit "L" (one channel) or "RGB", values scaled by the image's bit depth.

    Pillow's own conversion of 16- and 32-bit modes to 8 bits clips every value above 255 (a dark
    16-bit PNG became 92% white); here 16-bit values (:func:`_sixteen_bit`) are divided by 257
    (65535 -> 255), and 32-bit integer and float images by the smallest of :data:`FULL_SCALES` that
    holds their largest value.
    Alpha is dropped, as torchvision's loaders drop it.
    """
    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        largest = float(values.max(initial=0.0))
        top = 65535.0 if _sixteen_bit(img) else next((s for s in FULL_SCALES if largest <= s), largest)
        return Image.fromarray(np.rint(values * np.float32(255.0 / top)).clip(0, 255).astype(np.uint8))
    return img.convert("L" if img.mode in GRAY_MODES else "RGB")


def _open_file(path: str | Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (:func:`idml.files.open_regular`): a named
    pipe called ``x.JPEG`` in a class folder would otherwise hang the reader forever."""
    try:
        return open_regular(path)
    except NotRegularFile as exc:
        raise DataError(f"cannot read image {path}: not a regular file ({exc.strerror})") from exc


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Nothing written to file descriptor 2 gets out: libtiff, which Pillow decodes compressed TIFF
    files with, prints its own lines about a damaged file there ("LZWDecode: Not enough data at
    scanline 0"), beside the one line idml prints about it."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr: nothing to silence
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def opened(source: ImageSource, name: str | Path) -> Iterator[Image.Image]:
    """``source`` (a path, or a file's bytes) opened lazily by Pillow: the one call of ``Image.open``.

    Only the :data:`DECODERS` are tried, and only a regular file is read (a path is opened by
    :func:`_open_file`). Whatever fails while the image is open (identifying it, decoding it) is one
    :class:`DataError` line naming the file ``name``: Pillow's decoders raise many kinds of exception
    on damaged input (OSError, SyntaxError, ValueError, NotImplementedError, AttributeError,
    struct.error, MemoryError ...), so every ``Exception`` is translated, and Pillow's warnings about
    damaged files are not printed. The pixel rule is the caller's (:func:`pixel_reduction`).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with (io.BytesIO(source) if isinstance(source, bytes) else _open_file(source) as fh,
                  Image.open(fh, formats=DECODERS) as img):
                yield img
    except DataError:
        raise
    except UnidentifiedImageError as exc:
        raise DataError(f"cannot read image {name}: not an image in a format idml reads "
                        f"({', '.join(DECODERS)})") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"cannot read image {name}: more than the {MAX_IMAGE_PIXELS:,} pixels idml decodes from "
                        "one file; downscale it") from exc
    except OSError as exc:
        raise DataError(f"cannot read image {name}: {exc.strerror or one_line(exc)[:200]}") from exc
    except Exception as exc:
        raise DataError(f"cannot read image {name}: {one_line(exc)[:200]}") from exc


def _decoded(source: ImageSource, name: str | Path, reduce: int = 1) -> Image.Image:
    """The first frame of ``source``, decoded ``reduce`` times smaller per side where the format
    can (JPEG) or where the pixel rule requires it, and converted by :func:`_eight_bit`."""
    with opened(source, name) as img:
        scale = max(reduce, pixel_reduction(img.width, img.height, img.format or "", name))
        if scale > 1 and img.format in ("JPEG", "MPO"):
            img.draft(None, (img.width // scale, img.height // scale))
        with _stderr_silenced() if img.format == "TIFF" else contextlib.nullcontext():
            img.load()
        return _eight_bit(img)


def read_image(source: ImageSource, name: str | Path | None = None) -> Image.Image:
    """Decode an image file (a path, or its bytes) to 8-bit "L" or "RGB": how idml decodes the
    images of folder datasets, ImageNet's test images, Hugging Face datasets and idml predict.

    Opened by :func:`opened` (the :data:`DECODERS` only, one-line errors naming ``name``, else the
    path); at most :data:`MAX_IMAGE_PIXELS` decoded (:func:`pixel_reduction`); 16- and 32-bit
    images scaled by their bit depth (:func:`_eight_bit`).
    """
    return _decoded(source, name or (str(source) if not isinstance(source, bytes) else "image"))


def read_training_image(source: ImageSource, name: str | Path | None = None) -> Image.Image:
    """An RGB image of a training set; the error says how to go on without it."""
    try:
        img = read_image(source, name)
        return img if img.mode == "RGB" else img.convert("RGB")
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

    @property
    def fits_whole(self) -> bool:
        """Whether the image may be decoded at full size (else only reduced: :func:`pixel_reduction`)."""
        return self.width * self.height <= MAX_IMAGE_PIXELS


def read_encoded(path: str | Path) -> EncodedImage:
    """The bytes of ``path`` and its header (no pixel is decoded); an image that the pixel rule
    refuses even at a reduced scale is refused here, before a worker decodes anything.

    Only a regular file is read (:func:`_open_file`), and no more than its size: a name that leads
    to a device or a pipe is an error, not an endless read.
    """
    try:
        with _open_file(path) as fh:
            data = fh.read(os.fstat(fh.fileno()).st_size)
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
        pixel_reduction(img.width, img.height, img.format or "", path)
        return EncodedImage(str(path), data, img.width, img.height, img.format or "", img.mode)


#: libjpeg-turbo's colour spaces of the JPEGs it decodes to RGB exactly as Pillow does
PLAIN_JPEG = {"YCbCr": "RGB", "Gray": "L"}


def jpeg_header(data: bytes, path: str | Path) -> EncodedImage | None:
    """The header of a plain (YCbCr or grayscale) JPEG read by libjpeg-turbo, or None for any other
    file, which Pillow then identifies. Pillow's JPEG header parser is Python and costs a tenth of
    a training crop; this is C. The pixel rule applies here too (:func:`pixel_reduction`)."""
    if simplejpeg is None or not simplejpeg.is_jpeg(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # Pillow gives the error line, or reads what libjpeg-turbo's header reader does not
    if colorspace not in PLAIN_JPEG:
        return None
    pixel_reduction(width, height, "JPEG", path)
    return EncodedImage(str(path), data, width, height, "JPEG", PLAIN_JPEG[colorspace])


def decode_rgb(image: EncodedImage, reduce: int = 1) -> np.ndarray:
    """``image`` decoded as H x W x 3 uint8 RGB, ``reduce`` (1, 2, 4 or 8) times smaller per side
    where the format can do that while decoding (JPEG's DCT scaling: ceil(width / reduce) wide),
    and at least as much smaller as the pixel rule requires (:func:`pixel_reduction`), else at full
    size; the caller reads the scale from the array's shape.

    RGB and grayscale JPEGs are decoded by simplejpeg (libjpeg-turbo: the same pixels as Pillow,
    scaled or not, in less time); every other file by Pillow through :func:`opened` (16- and 32-bit
    images scaled by their bit depth), converted to RGB as the official code does.
    """
    reduce = max(reduce, pixel_reduction(image.width, image.height, image.format, image.path))
    if image.plain_jpeg and simplejpeg is not None:
        size = {"min_width": -(-image.width // reduce), "min_height": -(-image.height // reduce)} if reduce > 1 else {}
        try:
            return simplejpeg.decode_jpeg(image.data, "RGB", **size)
        except ValueError as exc:  # a corrupt or truncated JPEG
            raise DataError(f"cannot read image {image.path}: {one_line(exc)}") from exc
    img = _decoded(image.data, image.path, reduce)
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


class UnusableImage(DataError):
    """A decoded image that cannot be prepared for the model; the loader names the file."""


def unusable(name: str, exc: UnusableImage, hint: str = "") -> DataError:
    """The one-line error about image ``name`` that a preparer refused (``hint``: what to do)."""
    return DataError(f"cannot use image {name}: {exc}" + (f"; {hint}" if hint else ""))


class ShorterSide:
    """``Resize(side)`` (the shorter side to ``side``, the aspect kept), refusing with a
    :class:`UnusableImage` an image so elongated that the resized copy would exceed
    :data:`MAX_IMAGE_PIXELS`: a 1 x 65535 PNG is small, but resized to a shorter side of 256 it
    would be 256 x 16,776,960 pixels (13 GB)."""

    def __init__(self, side: int) -> None:
        self.side = side

    def __call__(self, img: Image.Image) -> Image.Image:
        short, long = sorted(img.size)
        resized = self.side * int(self.side * long / max(short, 1))
        if resized > MAX_IMAGE_PIXELS:
            raise UnusableImage(f"{img.size[0]} x {img.size[1]} pixels is too elongated: with its shorter "
                            f"side resized to {self.side} it would hold {resized:,} pixels, more than the "
                            f"{MAX_IMAGE_PIXELS:,} idml allows; crop it")
        return v2.functional.resize(img, [self.side], antialias=True)


def _resize(size: int) -> Preparer:
    pipeline = v2.Compose([v2.Resize((size, size), antialias=True), v2.PILToTensor()])
    return lambda img: pipeline(img.convert("RGB"))


def _resize_crop(size: int) -> Preparer:
    pipeline = v2.Compose([ShorterSide(round(size * 256 / 224)), v2.CenterCrop(size), v2.PILToTensor()])
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


def preparation(dataset: str, input_size: int) -> str:
    """The name in :data:`PREPARERS` of how images are prepared for a model trained on ``dataset``
    (what an exported model's metadata records, without the dataset's own name or path)."""
    info = dataset_info(dataset, input_size)
    return info.name if info.name in PREPARERS else info.family


def image_preparer(dataset: str, input_size: int) -> Preparer:
    """How to turn a decoded image into the uint8 input of a model trained on ``dataset``."""
    return PREPARERS[preparation(dataset, input_size)](input_size)
