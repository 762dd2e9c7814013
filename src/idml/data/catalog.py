"""Static facts about the supported datasets, shared by models, data loaders and the CLI.

Two kinds of dataset exist. The *catalog* datasets (CIFAR-10/100, ImageNet, digits) have fixed
classes and input sizes. *User* datasets (``folder``, ``hf:<path>``) take their classes from the
data and their input size from ``--input_size``, which also picks the network family and the
augmentation: at most :data:`SMALL_INPUT_MAX` pixels a side is "small" (CIFAR-style networks,
padded-crop augmentation), larger is "large" (ImageNet stems, RandomResizedCrop).
"""

from __future__ import annotations

from dataclasses import dataclass

from idml.errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    #: 0 for user datasets, whose classes are read from the data.
    num_classes: int
    #: "cifar" = CIFAR-style networks and augmentation, "imagenet" = ImageNet stems and augmentation.
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

#: Largest ``--input_size`` that gets the CIFAR-style network family and augmentation.
SMALL_INPUT_MAX = 64
#: ``--input_size`` of a user dataset when none is given.
DEFAULT_INPUT_SIZE = 32


@dataclass(frozen=True)
class UserDataset:
    """A kind of dataset whose images and classes come from the user's own data."""

    kind: str
    #: how the ``--dataset`` value is spelled, for messages
    form: str


#: ``--dataset`` value (``folder``) or prefix before a colon (``hf:<path>``) -> kind of user data.
USER_DATASETS = {
    "folder": UserDataset("folder", "folder (with --data_dir D holding train/<class>/ and val/<class>/)"),
    "hf": UserDataset("hf", "hf:<path> (a Hugging Face dataset saved on disk)"),
}


def input_family(input_size: int) -> str:
    """The network and augmentation family of square inputs of ``input_size`` pixels a side."""
    return "cifar" if input_size <= SMALL_INPUT_MAX else "imagenet"


def user_dataset(name: str) -> UserDataset | None:
    """The kind of user dataset ``name`` names (``folder``, ``hf:<path>``), or None."""
    prefix, colon, rest = name.partition(":")
    found = USER_DATASETS.get(prefix.lower())
    if found is None or (found.kind == "hf") != bool(colon) or (colon and not rest):
        return None
    return found


def canonical_name(name: str) -> str:
    """How a dataset is named in settings and checkpoints: lower case, except an ``hf:`` path."""
    user = user_dataset(name)
    if user is not None and user.kind == "hf":
        return f"hf:{name.partition(':')[2]}"
    return name.lower()


def dataset_kind(name: str) -> str:
    """Which loader builds ``name``: its catalog name, or the kind of user data."""
    user = user_dataset(name)
    return user.kind if user is not None else dataset_info(name).name


def dataset_problem(name: str) -> str | None:
    """Why ``name`` is no dataset idml can read, or None."""
    if name.lower() in DATASETS or user_dataset(name) is not None:
        return None
    forms = [*DATASETS, *(u.form for u in USER_DATASETS.values())]
    return f"unknown --dataset {name!r}: choose one of {', '.join(forms)}"


def dataset_info(name: str, input_size: int | None = None) -> DatasetInfo:
    """Facts about ``name``; for a user dataset, those of ``input_size`` (default 32) inputs."""
    if user_dataset(name) is not None:
        size = input_size or DEFAULT_INPUT_SIZE
        return DatasetInfo(canonical_name(name), 0, input_family(size), size)
    try:
        return DATASETS[name.lower()]
    except KeyError as exc:
        raise ConfigError(dataset_problem(name)) from exc
