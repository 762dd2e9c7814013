"""From a :class:`~idml.data.types.DataRequest` to a :class:`~idml.data.types.DataBundle`: which
loader builds each dataset, and the in-memory and ImageNet bundles."""

from __future__ import annotations

from collections.abc import Callable

import torch

from idml.data.augment import ColorLighting, Normalize, TrainAugment
from idml.data.catalog import dataset_info, dataset_kind, decode_problem, parse_classes
from idml.data.cifar import CIFAR_MEAN, CIFAR_STD, load_cifar
from idml.data.digits import DIGITS_MEAN, DIGITS_STD, load_digits_data
from idml.data.folder import build_folder
from idml.data.gpu_decode import DeviceDecoder, DeviceDecodingLoader
from idml.data.hf import build_hf
from idml.data.identity import split_identity
from idml.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC, folder_identity, load_imagenet
from idml.data.loaders import InMemoryLoader, SeededImages, stream_loaders
from idml.data.noise import symmetric_label_noise
from idml.data.splits import select_classes, split_validation
from idml.data.types import DataBundle, DataRequest, EvalTransform, TrainTransform
from idml.errors import ConfigError

#: The in-memory datasets (catalog capability ``in_memory``): how to load each (official train and
#: test splits), its statistics, and whether its training images may be flipped.
IN_MEMORY = {
    "cifar10": (lambda d: load_cifar("cifar10", d), CIFAR_MEAN, CIFAR_STD, True),
    "cifar100": (lambda d: load_cifar("cifar100", d), CIFAR_MEAN, CIFAR_STD, True),
    "digits": (lambda d: load_digits_data(), DIGITS_MEAN, DIGITS_STD, False),
}


def in_memory_bundle(data: dict, req: DataRequest, device: torch.device) -> DataBundle:
    """Loaders and on-device transforms over ``data`` ("train", "test", with --val_split "held_out":
    uint8 images and labels; "class_names"), with the statistics and flip rule of ``req.dataset``."""
    _, mean, std, flip = IN_MEMORY[req.dataset]
    shard = {"seed": req.seed, "rank": req.rank, "world_size": req.world_size}
    train = InMemoryLoader(*(t.to(device) for t in data["train"]), req.batch_size, train=True, **shard)
    test = InMemoryLoader(*(t.to(device) for t in data["test"]), req.batch_size, train=False, **shard)
    selection = test
    if "held_out" in data:
        selection = InMemoryLoader(*(t.to(device) for t in data["held_out"]), req.batch_size, train=False, **shard)
    held = data.get("held_out", data["test"])
    identity = {split: split_identity(range(len(labels)), labels.tolist())
                for split, (_, labels) in (("train", data["train"]), ("selection", held), ("test", data["test"]))}
    return DataBundle(
        train, selection, test, data["class_names"], mean, std, 32,
        train_transform=TrainAugment(mean, std, device, pad=4, flip=flip),
        eval_transform=Normalize(mean, std, device), identity=identity,
    )


def load_in_memory(req: DataRequest) -> dict:
    """The in-memory dataset ``req.dataset`` as tensors: its class subset (``req.classes``), then
    the held-out validation share (``req.val_split``), then label noise on what remains for
    training (the held-out labels stay clean)."""
    data = IN_MEMORY[req.dataset][0](req.data_dir)
    if req.classes is not None:
        data = select_classes(data, parse_classes(req.classes, len(data["class_names"])))
    data = split_validation(data, req.val_split, req.seed)
    if req.label_noise > 0:
        images, labels = data["train"]
        noisy = symmetric_label_noise(labels, req.label_noise, len(data["class_names"]), req.seed)
        data["train"] = (images, noisy)
    return data


def imagenet_transforms(device: torch.device) -> tuple[TrainTransform, EvalTransform]:
    """The on-device part of ImageNet's augmentation (after the workers' crop and flip) and its normalisation."""
    colour = ColorLighting(IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC, device, jitter=0.4, lighting=0.1)
    return colour, Normalize(IMAGENET_MEAN, IMAGENET_STD, device)


def training_decode(choice: str, device: torch.device) -> str:
    """``--decode`` for a run on ``device``: ``auto`` is gpu on CUDA and cpu elsewhere; gpu needs CUDA."""
    if choice == "auto":
        return "gpu" if device.type == "cuda" else "cpu"
    problem = decode_problem(choice, device.type)
    if problem:
        raise ConfigError(problem)
    return choice


def imagenet_bundle(req: DataRequest, device: torch.device) -> DataBundle:
    return imagenet_loaders(load_imagenet(req.data_dir, req.decode), req, device)


def imagenet_loaders(data: dict, req: DataRequest, device: torch.device) -> DataBundle:
    """Loaders and on-device transforms over :func:`load_imagenet`'s folders (``data``); with
    ``req.decode == "gpu"`` the training batches are decoded on ``device`` as they arrive."""
    train_set, test_set = (SeededImages(data[split], req.seed, req.skip_bad_images) for split in ("train", "test"))
    train, test = stream_loaders(train_set, test_set, req, device)
    if req.decode == "gpu":
        train = DeviceDecodingLoader(train, DeviceDecoder(device, 224, req.skip_bad_images, train_set.note_skipped))
    train_transform, eval_transform = imagenet_transforms(device)
    test_identity = folder_identity(data["test"])
    return DataBundle(
        train, test, test, data["class_names"], IMAGENET_MEAN, IMAGENET_STD, 224,
        train_transform=train_transform,
        eval_transform=eval_transform,
        identity={"train": folder_identity(data["train"]), "selection": test_identity, "test": test_identity},
    )


#: what builds each kind of dataset (:func:`idml.data.catalog.dataset_kind`)
BUILDERS: dict[str, Callable[[DataRequest, torch.device], DataBundle]] = {
    **{name: lambda req, device: in_memory_bundle(load_in_memory(req), req, device) for name in IN_MEMORY},
    "imagenet": imagenet_bundle,
    "folder": build_folder,
    "hf": build_hf,
}


def build_data(req: DataRequest, device: torch.device) -> DataBundle:
    """Load ``req.dataset`` (a canonical name: see :func:`idml.data.catalog.canonical_name`) and
    build its loaders for ``device``."""
    if req.dataset != dataset_info(req.dataset).name:
        raise ValueError(f"build_data needs the canonical dataset name, got {req.dataset!r}")
    return BUILDERS[dataset_kind(req.dataset)](req, device)
