"""``--decode gpu``: the workers read the training files and draw the crops; the GPU decodes them.

At the speeds a GPU trains ResNet-50 at (thousands of images per second), decoding JPEGs on the
CPU takes many cores per GPU. On this path each DataLoader worker only reads a file's bytes and
header and draws its crop and flip (:func:`idml.data.crops.draw_crop`, seeded per sample as on the
CPU path, so resume stays exact); a batch travels as one buffer of bytes. In the training process,
:class:`DeviceDecoder` decodes the batch's JPEGs in one call of ``decode_jpeg(list, device=...)``
(nvJPEG on CUDA; TorchCodec's where ``idml[gpu-decode]`` installed it, else torchvision's), then
cuts, resizes (bilinear, antialiased) and flips each crop there, and stacks them as a uint8 batch
on the device for the colour step.

A file the GPU decoder cannot take (not a JPEG, CMYK, larger than idml's pixel limit, or a batch
it refuses) is decoded on the CPU
by :func:`idml.data.image_files.decode_rgb`, the CPU path's decoder, and an unreadable one is one
clear line, or skipped with ``--skip_bad_images``, as on the CPU path. With ``device="cpu"`` the
same code runs on the CPU (the tests' twin of the GPU path).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from idml.data.crops import CropDraw, crop_resize_flip, draw_crop
from idml.data.image_files import SKIP_HINT, EncodedImage, decode_rgb
from idml.errors import DataError, one_line

try:  # idml[gpu-decode]: TorchCodec's image decoders replace torchvision's (deprecated since torchvision 0.29)
    from torchcodec.decoders import decode_jpeg as torchcodec_decode_jpeg
except ImportError:  # pragma: no cover - depends on what is installed
    torchcodec_decode_jpeg = None


def decode_jpeg(files: list[Tensor], device: torch.device) -> list[Tensor]:
    """JPEG bytes (1-D uint8 CPU tensors) decoded as 3 x H x W uint8 RGB on ``device``, in one
    batched call (nvJPEG on CUDA): TorchCodec's decoder where installed, else torchvision's."""
    if torchcodec_decode_jpeg is not None:
        return torchcodec_decode_jpeg(files, mode="RGB", device=device)
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as torchvision_decode_jpeg

    with warnings.catch_warnings():  # its deprecation: TorchCodec is the replacement, an optional extra here
        warnings.simplefilter("ignore", DeprecationWarning)
        return torchvision_decode_jpeg(files, mode=ImageReadMode.RGB, device=device)


@dataclass(frozen=True)
class EncodedSample:
    """What a worker ships for one training image on the GPU path: the file, and its draws."""

    image: EncodedImage
    draw: CropDraw

    @staticmethod
    def collate(samples: list[EncodedSample]) -> EncodedBatch:
        return EncodedBatch.of(samples)


class EncodedCropFlip:
    """The GPU path's worker transform: draw the crop and flip of an encoded file, decode nothing."""

    def __init__(self, size: int = 224) -> None:
        self.size = size

    def __call__(self, image: EncodedImage) -> EncodedSample:
        return EncodedSample(image, draw_crop(image.width, image.height))


@dataclass(frozen=True)
class EncodedBatch:
    """A batch of encoded files: their bytes end to end in one uint8 tensor (shared memory from a
    worker: one buffer per batch, not one per file), where each ends, and each file's header
    (without its bytes) and draws."""

    data: Tensor
    ends: list[int]
    heads: list[EncodedImage]
    draws: list[CropDraw]

    @classmethod
    def of(cls, samples: list[EncodedSample]) -> EncodedBatch:
        data = np.frombuffer(b"".join(s.image.data for s in samples), dtype=np.uint8)
        ends = np.cumsum([len(s.image.data) for s in samples]).tolist()
        return cls(torch.from_numpy(data.copy()), ends, [replace(s.image, data=b"") for s in samples],
                   [s.draw for s in samples])

    def __len__(self) -> int:
        return len(self.heads)

    def file(self, i: int) -> Tensor:
        """The bytes of file ``i``, as a 1-D uint8 view."""
        return self.data[(self.ends[i - 1] if i else 0):self.ends[i]]

    def encoded(self, i: int) -> EncodedImage:
        return replace(self.heads[i], data=self.file(i).numpy().tobytes())


class DeviceDecoder:
    """An :class:`EncodedBatch` to its uint8 crops (B x 3 x size x size) on ``device``."""

    def __init__(self, device: torch.device, size: int = 224, skip_bad: bool = False,
                 note_skipped: Callable[[str], None] | None = None) -> None:
        self.device, self.size, self.skip_bad = torch.device(device), size, skip_bad
        #: counts and reports a skipped image (SeededImages.note_skipped: one count with the workers')
        self.note_skipped = note_skipped or (lambda path: print(f"idml: warning: skipped unreadable image {path}",
                                                               file=sys.stderr, flush=True))
        self.fallbacks = 0  # batches the device decoder refused, decoded on the CPU instead

    def decode_on_device(self, batch: EncodedBatch) -> dict[int, Tensor]:
        """The batch's plain JPEGs decoded on the device in one call (by index); {} if it refuses them.
        A JPEG above idml's pixel limit is left to the CPU, which decodes it at the reduced scale the
        limit allows (the device decoder decodes every file whole)."""
        chosen = [i for i, head in enumerate(batch.heads) if head.plain_jpeg and head.fits_whole]
        if not chosen:
            return {}
        try:
            images = decode_jpeg([batch.file(i) for i in chosen], self.device)
        except (RuntimeError, ValueError) as exc:  # a file it does not take, or a corrupt one: decoded on the CPU
            self.fallbacks += 1
            if self.fallbacks == 1:
                print(f"idml: warning: the {self.device.type} JPEG decoder refused a batch ({one_line(exc)}); "
                      "decoding such batches on the CPU", file=sys.stderr, flush=True)
            return {}
        return dict(zip(chosen, images, strict=True))

    def crop(self, image: Tensor, draw: CropDraw) -> Tensor:
        """The drawn box of a decoded 3 x H x W uint8 image, resized to ``size`` and flipped, on its device."""
        out = TF.resized_crop(image, draw.top, draw.left, draw.height, draw.width, [self.size, self.size],
                              antialias=True)
        return out.flip(-1) if draw.flip else out

    def on_cpu(self, batch: EncodedBatch, i: int) -> Tensor | None:
        """File ``i`` decoded and cropped by the CPU path; None (and a warning) if unreadable and skipped."""
        try:
            head = batch.heads[i]
            pixels = decode_rgb(batch.encoded(i))
            return crop_resize_flip(pixels, batch.draws[i], head.width, head.height, self.size).to(self.device)
        except DataError as exc:
            if not self.skip_bad:
                raise DataError(f"{one_line(exc)}; {SKIP_HINT}") from exc
        self.note_skipped(batch.heads[i].path)
        return None

    def __call__(self, batch: EncodedBatch, labels: Tensor) -> tuple[Tensor, Tensor]:
        decoded = self.decode_on_device(batch)
        crops = [self.crop(decoded[i], batch.draws[i]) if i in decoded else self.on_cpu(batch, i)
                 for i in range(len(batch))]
        kept = [i for i, crop in enumerate(crops) if crop is not None]
        if not kept:
            raise DataError("every image of a batch was unreadable (--skip_bad_images); check the data folder")
        images = torch.stack([crops[i].contiguous() for i in kept])
        return images, labels[kept] if len(kept) < len(crops) else labels


class DeviceDecodingLoader:
    """The training loader of ``--decode gpu``: the DataLoader's encoded batches, decoded on the
    device as they arrive (so the step's data time includes the decoding). ``set_epoch`` and
    ``len`` are the DataLoader's."""

    def __init__(self, loader, decoder: DeviceDecoder) -> None:
        self.loader, self.decoder = loader, decoder
        self.dataset = loader.dataset

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.loader.set_epoch(epoch, start_step)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for batch, labels in self.loader:
            yield self.decoder(batch, labels)
