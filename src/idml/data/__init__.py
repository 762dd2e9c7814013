"""Dataset registry: :func:`build_data` turns a config into loaders plus on-device transforms."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from idml.data.augment import ColorLighting, Normalize, TrainAugment
from idml.data.catalog import dataset_kind
from idml.data.cifar import CIFAR_MEAN, CIFAR_STD, load_cifar
from idml.data.digits import DIGITS_MEAN, DIGITS_STD, load_digits_data
from idml.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PCA_EIGVAL,
    PCA_EIGVEC,
    SeededImages,
    collate_readable,
    load_imagenet,
)
from idml.data.loaders import InMemoryLoader, ResumableSampler, ShardSampler
from idml.data.noise import symmetric_label_noise
from idml.data.splits import parse_classes, select_classes, split_validation

TrainTransform = Callable[[Tensor, np.random.Generator], Tensor]
EvalTransform = Callable[[Tensor], Tensor]


@dataclass
class DataBundle:
    """Loaders and what the model needs to know about the data.

    ``train_transform`` / ``eval_transform`` run on the training device on each batch after it
    arrives there (for in-memory sets: augmentation and normalisation; for ImageNet, whose workers
    crop and flip: colour jitter, lighting and normalisation).
    """

    train: Iterable
    val: Iterable
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    train_transform: TrainTransform
    eval_transform: EvalTransform
    #: how the data is held and augmented, for the run's console (user datasets)
    note: str = ""
    #: the official test split when ``val`` is a held-out share of the training set (--val_split);
    #: None when ``val`` is the test split itself (the official protocol)
    test: Iterable | None = None

    @property
    def test_set(self) -> Iterable:
        """The official test split, whichever protocol the run used."""
        return self.val if self.test is None else self.test

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class DataRequest:
    """What :func:`build_data` needs from the run's settings."""

    dataset: str
    data_dir: str | Path
    batch_size: int
    workers: int | None = None  # None: one per CPU core this process may use (see default_workers)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    skip_bad_images: bool = False
    label_noise: float = 0.0
    # user datasets (folder, hf:<path>; see data/folder.py)
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image_key: str = "image"
    label_key: str = "label"
    memory_mb: float = 2048.0
    #: False: only the validation split is needed (evaluation), with the given mean and std
    need_train: bool = True
    val_split: float = 0.0
    classes: str | None = None


IN_MEMORY = {
    "cifar10": (lambda d: load_cifar("cifar10", d), CIFAR_MEAN, CIFAR_STD, True),
    "cifar100": (lambda d: load_cifar("cifar100", d), CIFAR_MEAN, CIFAR_STD, True),
    "digits": (lambda d: load_digits_data(), DIGITS_MEAN, DIGITS_STD, False),
}


def in_memory_bundle(data: dict, req: DataRequest, device: torch.device) -> DataBundle:
    """Loaders and on-device transforms over ``data`` ("train"/"val" (uint8 images, labels) and
    "class_names"), with the mean, std and flip rule of the in-memory dataset ``req.dataset``."""
    _, mean, std, flip = IN_MEMORY[req.dataset]
    shard = {"seed": req.seed, "rank": req.rank, "world_size": req.world_size}
    train = InMemoryLoader(*(t.to(device) for t in data["train"]), req.batch_size, train=True, **shard)
    val = InMemoryLoader(*(t.to(device) for t in data["val"]), req.batch_size, train=False, **shard)
    test = None
    if "test" in data:
        test = InMemoryLoader(*(t.to(device) for t in data["test"]), req.batch_size, train=False, **shard)
    return DataBundle(
        train, val, data["class_names"], mean, std, 32,
        train_transform=TrainAugment(mean, std, device, pad=4, flip=flip),
        eval_transform=Normalize(mean, std, device),
        test=test,
    )


def load_in_memory(req: DataRequest) -> dict:
    """The in-memory dataset ``req.dataset`` as tensors: its class subset (``req.classes``), then
    the held-out validation share (``req.val_split``, "test" = the official test split), then
    label noise on what remains for training (the validation labels stay clean)."""
    data = IN_MEMORY[req.dataset][0](req.data_dir)
    if req.classes is not None:
        data = select_classes(data, parse_classes(req.classes, len(data["class_names"])))
    data = split_validation(data, req.val_split, req.seed)
    if req.label_noise > 0:
        images, labels = data["train"]
        noisy = symmetric_label_noise(labels, req.label_noise, len(data["class_names"]), req.seed)
        data["train"] = (images, noisy)
    return data


def _in_memory(req: DataRequest, device: torch.device) -> DataBundle:
    return in_memory_bundle(load_in_memory(req), req, device)


#: most worker processes chosen automatically per training process (each holds the file list)
MAX_AUTO_WORKERS = 16


def default_workers() -> int:
    """``-j`` when not given: the CPU cores this process may use (``os.sched_getaffinity``), shared by
    the processes torchrun started on this machine, less one for the training process itself."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)
    return max(1, min(cores // local_processes - 1, MAX_AUTO_WORKERS))


def imagenet_transforms(device: torch.device) -> tuple[TrainTransform, EvalTransform]:
    """The on-device part of ImageNet's augmentation (after the workers' crop and flip) and its normalisation."""
    colour = ColorLighting(IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC, device, jitter=0.4, lighting=0.1)
    return colour, Normalize(IMAGENET_MEAN, IMAGENET_STD, device)


class EpochDataLoader(DataLoader):
    """A DataLoader whose ``set_epoch`` reaches its sampler (reshuffles like the in-memory loader)."""

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch, start_step)


def stream_loaders(train_set: SeededImages, val_set: SeededImages, req: DataRequest, device: torch.device,
                   drop_single: bool = False) -> tuple[EpochDataLoader, EpochDataLoader]:
    """DataLoaders over datasets decoded in worker processes (resumable, sharded over ranks).

    ``drop_single``: leave out a last training batch of one image (BatchNorm cannot train on it).
    """
    workers = default_workers() if req.workers is None else req.workers
    common = {
        "batch_size": req.batch_size,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
        "collate_fn": collate_readable,
    }
    shuffled = DistributedSampler(
        train_set, num_replicas=req.world_size, rank=req.rank, shuffle=True, seed=req.seed, drop_last=True
    )
    drop_last = drop_single and len(shuffled) % req.batch_size == 1
    train = EpochDataLoader(train_set, sampler=ResumableSampler(shuffled, req.batch_size), drop_last=drop_last,
                            **common)
    val_sampler = ShardSampler(len(val_set), req.rank, req.world_size)
    val = EpochDataLoader(val_set, sampler=val_sampler, **common)
    return train, val


def _imagenet(req: DataRequest, device: torch.device) -> DataBundle:
    data = load_imagenet(req.data_dir)
    train_set, val_set = (SeededImages(data[split], req.seed, req.skip_bad_images) for split in ("train", "val"))
    train, val = stream_loaders(train_set, val_set, req, device)
    train_transform, eval_transform = imagenet_transforms(device)
    return DataBundle(
        train, val, data["class_names"], IMAGENET_MEAN, IMAGENET_STD, 224,
        train_transform=train_transform,
        eval_transform=eval_transform,
    )


def _folder(req: DataRequest, device: torch.device) -> DataBundle:
    from idml.data.folder import build_folder

    return build_folder(req, device)


def _hf(req: DataRequest, device: torch.device) -> DataBundle:
    from idml.data.hf import build_hf

    return build_hf(req, device)


#: what builds each kind of dataset (data.catalog.dataset_kind)
BUILDERS: dict[str, Callable[[DataRequest, torch.device], DataBundle]] = {
    **{name: lambda req, device: _in_memory(replace(req, dataset=req.dataset.lower()), device) for name in IN_MEMORY},
    "imagenet": _imagenet,
    "folder": _folder,
    "hf": _hf,
}


def build_data(req: DataRequest, device: torch.device) -> DataBundle:
    """Load ``req.dataset`` and build its loaders for ``device``."""
    return BUILDERS[dataset_kind(req.dataset)](req, device)
