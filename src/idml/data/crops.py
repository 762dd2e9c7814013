"""ImageNet's training crop, drawn on the image's header and cut from a reduced-scale decode.

The official workers decode every JPEG at full size, then ``RandomResizedCrop(224)`` throws most
of it away. Here the crop box and the flip are drawn first, by torchvision's
``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()`` algorithm (on the full image's size, read
from the file's header, from torch's global generator, which :class:`idml.data.loaders.SeededImages`
seeds per sample from (seed, epoch, index)). Then the file is decoded only as large as the box
allows: libjpeg-turbo's DCT scaling gives the image 2, 4 or 8 times smaller per side when the box
is still at least ``size`` pixels a side at that scale, so the resize that follows still only
shrinks. The box is cut from that image, resized to ``size`` x ``size`` (bilinear, antialiased)
and flipped.

So the boxes, flips and their distribution are torchvision's; the pixels differ from the official
crop only by resampling: at full scale by at most 1 grey level (rounding), and where a reduced
scale was used by the DCT-domain downscaling (measured in benchmarks/RESULTS.md and
docs/input-pipeline.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from idml.data.image_files import EncodedImage, decode_rgb

#: RandomResizedCrop's defaults, which the official code uses: the box covers 8% to 100% of the
#: image's area, with an aspect ratio (width / height) log-uniform in [3/4, 4/3]
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
#: tries at a box that fits before RandomResizedCrop falls back to the centre
ATTEMPTS = 10
#: the DCT scalings libjpeg-turbo does fast (1/8, 1/4, 1/2); others (3/8, 5/8, ...) decoded slower than full size
REDUCTIONS = (8, 4, 2)


@dataclass(frozen=True)
class CropDraw:
    """One sample's crop box in the full image's pixels, and whether it is flipped."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def draw_crop(width: int, height: int, scale: tuple[float, float] = SCALE,
              ratio: tuple[float, float] = RATIO) -> CropDraw:
    """RandomResizedCrop's box on a ``width`` x ``height`` image, then RandomHorizontalFlip's coin.

    torchvision's algorithm (``RandomResizedCrop.get_params``), step for step: up to 10 tries of
    an area uniform in ``scale`` times the image's and a log aspect ratio uniform in ``log(ratio)``,
    the sides rounded; the first that fits takes a uniform position; if none fits, the centred
    crop of the image's aspect ratio clamped to ``ratio``. Then a flip with probability 1/2. The
    uniforms come from torch's global generator (seeded per sample by SeededImages) in one call
    rather than torchvision's dozen scalar ones, which cost more than the draw itself; the test
    of their distribution against torchvision's own draws is tests/data/test_crop_distribution.py.
    """
    u = torch.rand(2 * ATTEMPTS + 3).tolist()
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for k in range(ATTEMPTS):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[2 * k])
        aspect = math.exp(log_low + (log_high - log_low) * u[2 * k + 1])
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(u[-3] * (height - h + 1)), int(u[-2] * (width - w + 1))
            return CropDraw(top, left, h, w, u[-1] < 0.5)
    w, h = width, height  # no try fitted: the centre, at the nearest allowed aspect ratio
    if width / height < min(ratio):
        h = round(width / min(ratio))
    elif width / height > max(ratio):
        w = round(height * max(ratio))
    return CropDraw((height - h) // 2, (width - w) // 2, h, w, u[-1] < 0.5)


def reduction(draw: CropDraw, size: int) -> int:
    """The largest DCT reduction at which the box still has ``size`` pixels a side (1: none)."""
    return next((r for r in REDUCTIONS if draw.width >= r * size and draw.height >= r * size), 1)


def crop_resize_flip(pixels: np.ndarray, draw: CropDraw, width: int, height: int, size: int,
                     reduce: int = 1) -> Tensor:
    """The box ``draw`` of the ``width`` x ``height`` image, cut from ``pixels`` (H x W x 3 uint8,
    that image decoded ``reduce`` times smaller per side, or at full size), resized to ``size`` x
    ``size`` (bilinear, antialiased) and flipped: uint8 3 x size x size.

    At full size the box is whole pixels: it is cut and resized by PyTorch's uint8 kernel (4x
    faster than Pillow's, within one grey level of it). At a reduced scale the box's edges fall
    between pixels (each decoded pixel covers ``reduce`` x ``reduce`` of the image's): Pillow's
    resize takes such a box exactly, where rounding it to the grid moved the crop by up to a pixel
    (2-3 grey levels on average against the official crop, instead of 0.6-1.6; benchmarks/RESULTS.md).
    """
    if pixels.shape[1] == width and pixels.shape[0] == height:
        window = pixels[draw.top:draw.top + draw.height, draw.left:draw.left + draw.width]
        if not (window.flags.c_contiguous and window.flags.writeable):
            window = window.copy()  # the box alone: the resize kernel is fastest on contiguous pixels
        image = torch.from_numpy(window[None]).permute(0, 3, 1, 2)  # 1 x 3 x h x w, pixels interleaved
        out = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    else:
        sx, sy = pixels.shape[1] / width, pixels.shape[0] / height
        if pixels.shape[1] == -(-width // reduce) and pixels.shape[0] == -(-height // reduce):
            sx = sy = 1 / reduce  # DCT scaling: decoded pixel i covers the image's [i * reduce, (i + 1) * reduce)
        box = (draw.left * sx, draw.top * sy, (draw.left + draw.width) * sx, (draw.top + draw.height) * sy)
        out = resize_box(pixels, box, size)
    return out.flip(-1) if draw.flip else out


def resize_box(pixels: np.ndarray, box: tuple[float, float, float, float], size: int) -> Tensor:
    """The ``box`` (left, top, right, bottom; fractional pixels) of ``pixels`` resized to ``size`` x
    ``size`` by Pillow's bilinear filter, as a crop of the whole pixels around it then resized
    (the official crop-then-resize: the filter sees nothing outside those pixels)."""
    left, top = int(box[0]), int(box[1])
    right, bottom = min(math.ceil(box[2]), pixels.shape[1]), min(math.ceil(box[3]), pixels.shape[0])
    window = Image.fromarray(np.ascontiguousarray(pixels[top:bottom, left:right]))
    inside = (box[0] - left, box[1] - top, box[2] - left, box[3] - top)
    out = np.array(window.resize((size, size), Image.Resampling.BILINEAR, box=inside))
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()


class DecodeCropFlip:
    """The CPU workers' training transform: an :class:`EncodedImage` to its uint8 crop (3 x size x size).

    Draws the box and the flip (:func:`draw_crop`), decodes the file at the largest reduction the
    box allows (:func:`reduction`, :func:`idml.data.image_files.decode_rgb`), then cuts, resizes
    and flips (:func:`crop_resize_flip`).
    """

    def __init__(self, size: int = 224, scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio

    def __call__(self, image: EncodedImage) -> Tensor:
        draw = draw_crop(image.width, image.height, self.scale, self.ratio)
        reduce = reduction(draw, self.size)
        return crop_resize_flip(decode_rgb(image, reduce), draw, image.width, image.height, self.size, reduce)
