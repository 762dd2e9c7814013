"""Static facts about the supported datasets, shared by models, data loaders and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from idml.errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    #: "cifar" = 32x32 inputs (CIFAR-style networks), "imagenet" = 224x224 inputs.
    family: str
    input_size: int


DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, "cifar", 32),
    "cifar100": DatasetInfo("cifar100", 100, "cifar", 32),
    "imagenet": DatasetInfo("imagenet", 1000, "imagenet", 224),
    "digits": DatasetInfo("digits", 10, "cifar", 32),
}

#: Uncertainty-embedding width K of the official models, by input family.
DEFAULT_UNCERTAINTY_DIM = {"cifar": 128, "imagenet": 512}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name.lower()]
    except KeyError as exc:
        raise ConfigError(f"unknown --dataset {name!r}: choose one of {', '.join(DATASETS)}") from exc
