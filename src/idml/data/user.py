"""What every user dataset (``--dataset folder``, ``hf:<path>``) shares once its images are found:
input sizes, statistics, and holding the images in memory or streaming them.

A user dataset arrives as a :class:`UserData`: two :class:`ImageSource` splits (train, and the
validation split that chooses the best epoch) and class names. :func:`user_bundle` turns it into
loaders.

``--input_size N`` fixes the square size the network sees (:mod:`idml.data.catalog`):

- N <= 64 ("small", CIFAR-style network): every image is resized to N x N; training adds a random
  N x N crop of the image zero-padded by N/8 (4 pixels at 32) and a horizontal flip.
- N > 64 ("large", ImageNet stem): training draws ``RandomResizedCrop(N)`` and a flip; validation
  resizes the shorter side to R = round(N * 256 / 224) and takes the central N x N.

Validation images are prepared by :func:`idml.data.image_files.image_preparer`, the function
``idml predict`` uses, so a file scores the same in ``idml eval`` and ``idml predict``.

When all images fit in ``--data_memory_mb`` as uint8 tensors they are decoded once (in ``-j``
worker processes) and kept on the training device like CIFAR, and augmentation runs there on
whole batches (:mod:`idml.data.augment`; large training images are kept at R x R, the centre of
the image resized, and the crops drawn from that). Otherwise they stream through DataLoader
workers, decoded and augmented per image. The run prints which was chosen.

Mean and standard deviation default to those of the training images, per channel, computed over
all of them in memory, or over a seeded sample of :data:`STATS_SAMPLE` images when streaming.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from idml.data.augment import Normalize, ResizedTrainAugment, TrainAugment
from idml.data.catalog import MAX_CLASS_NAME, MAX_CLASSES, MIN_STD, dataset_info
from idml.data.identity import split_identity
from idml.data.image_files import SKIP_HINT, ShorterSide, UnusableImage, image_preparer, unusable
from idml.data.loaders import InMemoryLoader, SeededImages, default_workers, stream_loaders
from idml.data.types import DataBundle, DataRequest
from idml.errors import DataError, describe

#: Training images the mean and std are measured on when the data streams.
STATS_SAMPLE = 5000
MIB = 2**20
#: Images from which the in-memory copy is decoded in -j worker processes (fewer: in this one).
PARALLEL_DECODE = 2000


class ImageSource(Protocol):
    """One split of a user dataset: labels, a way to decode image ``i``, and how to name it."""

    labels: list[int]

    def __len__(self) -> int: ...

    def image(self, index: int) -> Image.Image: ...

    def where(self, index: int) -> str: ...

    def key(self, index: int) -> str:
        """What names image ``index`` within its dataset (a relative path, a row number): the
        split's identity (:mod:`idml.data.identity`) digests these names and the labels."""
        ...


@dataclass
class UserData:
    """A user dataset's two splits and class names, and how to describe it.

    ``val`` chooses the best epoch and is what ``idml eval`` reports: a user dataset has no
    separate test split.
    """

    train: ImageSource
    val: ImageSource
    class_names: list[str]
    origin: str


def check_classes(names: Sequence[str], origin: str) -> None:
    """Refuse class names a checkpoint could not hold: fewer than two classes, too many, too long."""
    if len(names) < 2:
        raise DataError(f"{origin} has {len(names)} class ({', '.join(names)}); a classifier needs at least 2")
    if len(names) > MAX_CLASSES:
        raise DataError(f"{origin} has {len(names)} classes, more than the {MAX_CLASSES} idml supports")
    long = next((name for name in names if len(name) > MAX_CLASS_NAME), None)
    if long is not None:
        raise DataError(f"{origin} has a class name of {len(long)} characters ({describe(long)}); class names "
                        f"may have at most {MAX_CLASS_NAME}: rename the class")



# -- preparing images -----------------------------------------------------------------------------
def train_storage_size(input_size: int) -> int:
    """Side of the training images kept in memory: N for small inputs, R = round(N * 256 / 224) for
    large ones (RandomResizedCrop draws from them)."""
    return input_size if dataset_info("folder", input_size).family == "cifar" else round(input_size * 256 / 224)


def _square(size: int) -> Callable[[Image.Image], Tensor]:
    """Shorter side resized to ``size``, centre ``size`` x ``size`` kept (large training images)."""
    pipeline = v2.Compose([ShorterSide(size), v2.CenterCrop(size), v2.PILToTensor()])
    return lambda img: pipeline(img)


def storage_preparers(input_size: int) -> tuple[Callable[[Image.Image], Tensor], Callable[[Image.Image], Tensor]]:
    """(training, validation) preparers: PIL image -> uint8 3 x S x S."""
    val = image_preparer("folder", input_size)
    small = dataset_info("folder", input_size).family == "cifar"
    return (val if small else _square(train_storage_size(input_size))), val


def crop_padding(input_size: int) -> int:
    """Zero padding of the small-image random crop: 4 pixels at 32, in proportion elsewhere."""
    return max(1, round(input_size / 8))


class Decoded(Dataset):
    """Image ``i`` of a source, prepared as uint8 (workers decode the in-memory copy in parallel);
    with ``skip_bad``, an unreadable image is None and one warning line."""

    def __init__(self, source: ImageSource, prepare: Callable[[Image.Image], Tensor], skip_bad: bool) -> None:
        self.source, self.prepare, self.skip_bad = source, prepare, skip_bad

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None]:
        try:
            return index, prepared(self.source, index, self.prepare)
        except DataError:
            if not self.skip_bad:
                raise
            print(f"idml: warning: skipped unreadable image {self.source.where(index)}", file=sys.stderr, flush=True)
            return index, None


def prepared(source: ImageSource, index: int, prepare: Callable[[Image.Image], Tensor]) -> Tensor:
    """Image ``index`` of ``source`` decoded and prepared; a refusal of either names the file."""
    img = source.image(index)
    try:
        return prepare(img)
    except UnusableImage as exc:
        raise unusable(source.where(index), exc, SKIP_HINT) from exc


def _readable(batch: list[tuple[int, Tensor | None]]) -> list[tuple[int, Tensor]]:
    return [(i, t) for i, t in batch if t is not None]


def decode_all(source: ImageSource, prepare: Callable[[Image.Image], Tensor], workers: int | None,
               skip_bad: bool = False) -> tuple[Tensor, Tensor]:
    """The readable images of ``source`` as one uint8 N x 3 x S x S tensor, and their labels."""
    workers = (default_workers() if workers is None else workers) if len(source) >= PARALLEL_DECODE else 0
    loader = DataLoader(Decoded(source, prepare, skip_bad), batch_size=64, num_workers=workers, collate_fn=_readable)
    pairs = [pair for batch in loader for pair in batch]
    if not pairs:
        raise DataError(f"no readable image among the {len(source)} of the split ({source.where(0)}, ...)")
    images = torch.stack([t for _, t in pairs])
    labels = torch.tensor([source.labels[i] for i, _ in pairs], dtype=torch.int64)
    return images, labels


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units (float64 sums)."""
    sums = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(256):
        x = chunk.to("cpu", torch.float64) / 255.0
        sums += x.sum(dim=(0, 2, 3))
        squares += x.pow(2).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = sums / count
    std = (squares / count - mean.pow(2)).clamp_min(0).sqrt().clamp_min(MIN_STD)
    return tuple(mean.tolist()), tuple(std.tolist())


class Sampled:
    """The first ``n`` images of a seeded permutation of ``source`` (the streaming statistics)."""

    def __init__(self, source: ImageSource, n: int, seed: int) -> None:
        self.source = source
        self.order = np.random.default_rng(seed).permutation(len(source))[:n]
        self.labels = [source.labels[i] for i in self.order]

    def __len__(self) -> int:
        return len(self.order)

    def image(self, index: int) -> Image.Image:
        return self.source.image(int(self.order[index]))

    def where(self, index: int) -> str:
        return self.source.where(int(self.order[index]))


# -- streaming ------------------------------------------------------------------------------------
class StreamedImages(Dataset):
    """A source decoded and transformed per image in DataLoader workers; the ``samples`` and item
    protocol of an ImageFolder, so that :class:`SeededImages` seeds each image's augmentation."""

    def __init__(self, source: ImageSource, transform: Callable[[Image.Image], Tensor]) -> None:
        self.source, self.transform = source, transform
        self.samples = _Samples(source)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return prepared(self.source, index, self.transform), self.source.labels[index]


class _Samples:
    """``samples[i][0]``: the name of image ``i`` (what SeededImages prints when it skips one)."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.source.where(index), self.source.labels[index]


def stream_transforms(input_size: int) -> tuple[Callable, Callable]:
    """(training, validation) per-image transforms in the workers: PIL image -> uint8 3 x N x N
    (normalised on the device, as the in-memory images are)."""
    if dataset_info("folder", input_size).family == "cifar":
        augment = [v2.Resize((input_size, input_size), antialias=True),
                   v2.RandomCrop(input_size, padding=crop_padding(input_size)), v2.RandomHorizontalFlip()]
    else:
        augment = [v2.RandomResizedCrop(input_size, antialias=True), v2.RandomHorizontalFlip()]
    return v2.Compose([v2.PILToTensor(), *augment]), image_preparer("folder", input_size)


class NormalizeOnly:
    """The on-device training transform of streamed images: they arrive augmented, as uint8."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.normalize = Normalize(mean, std, device)

    def __call__(self, images: Tensor, rng: np.random.Generator) -> Tensor:
        return self.normalize(images)


# -- the bundle -----------------------------------------------------------------------------------
def memory_needed(data: UserData, input_size: int, need_train: bool) -> int:
    """Bytes of the uint8 copies of every image (training at their storage size)."""
    side = train_storage_size(input_size)
    train = len(data.train) * 3 * side * side if need_train else 0
    return train + len(data.val) * 3 * input_size * input_size


def _family_note(input_size: int) -> str:
    if dataset_info("folder", input_size).family == "cifar":
        return (f"{input_size}x{input_size} inputs <= 64: CIFAR-style network, random crop (padding "
                f"{crop_padding(input_size)}) + flip")
    return f"{input_size}x{input_size} inputs > 64: ImageNet stem, RandomResizedCrop + flip"


def _stats(req: DataRequest, computed: Callable[[], tuple]) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    if req.mean is not None and req.std is not None:
        return tuple(req.mean), tuple(req.std), "given"
    mean, std = computed()
    return (tuple(req.mean) if req.mean else mean), (tuple(req.std) if req.std else std), "computed"


def in_memory(data: UserData, req: DataRequest, device: torch.device, size: int) -> DataBundle:
    """Decode once into uint8 tensors on ``device``; augment whole batches there."""
    prepare_train, prepare_val = storage_preparers(size)
    shard = {"seed": req.seed, "rank": req.rank, "world_size": req.world_size}
    val_images, val_labels = decode_all(data.val, prepare_val, req.workers, req.skip_bad_images)
    val = InMemoryLoader(val_images.to(device), val_labels.to(device), req.batch_size, train=False, **shard)
    train, train_images = val, val_images  # evaluation only (need_train False): mean and std are given
    if req.need_train:
        train_images, train_labels = decode_all(data.train, prepare_train, req.workers, req.skip_bad_images)
        train = InMemoryLoader(train_images.to(device), train_labels.to(device), req.batch_size, train=True, **shard)
    mean, std, how = _stats(req, lambda: channel_stats(train_images))
    augment = (TrainAugment(mean, std, device, pad=crop_padding(size)) if dataset_info("folder", size).family == "cifar"
               else ResizedTrainAugment(size, mean, std, device))
    return DataBundle(train, val, val, data.class_names, mean, std, size, train_transform=augment,
                      eval_transform=Normalize(mean, std, device),
                      note=f"decoded once into uint8 tensors on {device}; mean/std {how}")


def streamed(data: UserData, req: DataRequest, device: torch.device, size: int) -> DataBundle:
    """Decode and augment per image in ``req.workers`` DataLoader processes."""
    def sample_stats() -> tuple:
        sample = Sampled(data.train, STATS_SAMPLE, req.seed)
        return channel_stats(decode_all(sample, image_preparer("folder", size), req.workers, req.skip_bad_images)[0])

    mean, std, how = _stats(req, sample_stats)
    train_tf, val_tf = stream_transforms(size)
    train_set = SeededImages(StreamedImages(data.train, train_tf), req.seed, req.skip_bad_images)
    val_set = SeededImages(StreamedImages(data.val, val_tf), req.seed, req.skip_bad_images)
    train, val = stream_loaders(train_set, val_set, req, device, drop_single=True)
    sampled = "" if how == "given" else f" over {min(STATS_SAMPLE, len(data.train))} training images"
    workers = default_workers() if req.workers is None else req.workers
    return DataBundle(train, val, val, data.class_names, mean, std, size,
                      train_transform=NormalizeOnly(mean, std, device),
                      eval_transform=Normalize(mean, std, device),
                      note=f"streamed through {workers} DataLoader workers; mean/std {how}{sampled}")


def user_identity(data: UserData) -> dict:
    """Each split's identity; the validation split is both what selects and what idml eval reports."""
    def of(source: ImageSource) -> dict:
        return split_identity((source.key(i) for i in range(len(source))), source.labels)

    val = of(data.val)
    return {"train": of(data.train), "selection": val, "test": val}


def user_bundle(data: UserData, req: DataRequest, device: torch.device) -> DataBundle:
    """The loaders of a user dataset, held in memory when it fits ``req.memory_mb``, else streamed."""
    check_classes(data.class_names, data.origin)
    size = dataset_info("folder", req.input_size).input_size
    needed = memory_needed(data, size, req.need_train)
    fits = needed <= req.memory_mb * MIB
    bundle = (in_memory if fits else streamed)(data, req, device, size)
    bundle.identity = user_identity(data)
    budget = f"{needed / MIB:.1f} MiB {'<=' if fits else '>'} --data_memory_mb {req.memory_mb:g}"
    bundle.note = (f"{data.origin}: {len(data.train)} training and {len(data.val)} validation images, "
                   f"{len(data.class_names)} classes; {_family_note(size)}; {bundle.note} ({budget})")
    return bundle
