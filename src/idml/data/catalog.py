"""Static facts about the supported datasets, shared by models, data loaders and the CLI.

Two kinds of dataset exist. The *catalog* datasets (CIFAR-10/100, ImageNet, digits) have fixed
classes and input sizes. *User* datasets (``folder``, ``hf:<path>``) take their classes from the
data and their input size from ``--input_size``, which also picks the network family and the
augmentation: at most :data:`SMALL_INPUT_MAX` pixels a side is "small" (CIFAR-style networks,
padded-crop augmentation), larger is "large" (ImageNet stems, RandomResizedCrop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from idml.errors import ConfigError, describe

#: What a dataset can do beyond training and evaluation (:attr:`DatasetInfo.can`):
#: ``in_memory``: held in memory as tensors, whole (so ``--classes``, ``--label_noise``, and
#: ``idml eval --blends`` / ``--ood`` work on it); ``val_split``: ``--val_split`` can hold out a
#: share of its training images as the validation split.
CAPABILITIES = ("in_memory", "val_split")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    #: 0 for user datasets, whose classes are read from the data.
    num_classes: int
    #: "cifar" = CIFAR-style networks and augmentation, "imagenet" = ImageNet stems and augmentation.
    family: str
    input_size: int
    #: the :data:`CAPABILITIES` it has
    can: frozenset[str] = frozenset()
    #: a dataset of the official code (its commands, defaults and console lines apply unchanged)
    official: bool = False


_IN_MEMORY = frozenset({"in_memory", "val_split"})
DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, "cifar", 32, _IN_MEMORY, official=True),
    "cifar100": DatasetInfo("cifar100", 100, "cifar", 32, _IN_MEMORY, official=True),
    "imagenet": DatasetInfo("imagenet", 1000, "imagenet", 224, official=True),
    "digits": DatasetInfo("digits", 10, "cifar", 32, _IN_MEMORY),
}

#: The network of a run on idml's own datasets (digits, folder, hf:<path>) that names neither
#: --net_type nor --depth, by input family: (net_type, depth, bottleneck). The official default,
#: PyramidNet-32 with bottleneck blocks, is no network at all (32 is not 9n+2), and a ResNet-20 of
#: basic blocks (the quick start's) trains the small datasets in minutes on a CPU. The official
#: datasets keep the official defaults.
OWN_DEFAULT_NETWORK = {"cifar": ("resnet", 20, False), "imagenet": ("resnet", 18, True)}

#: Uncertainty-embedding width K of the official models, by input family.
DEFAULT_UNCERTAINTY_DIM = {"cifar": 128, "imagenet": 512}

#: Largest ``--input_size`` that gets the CIFAR-style network family and augmentation.
SMALL_INPUT_MAX = 64
#: ``--input_size`` of a user dataset when none is given, and the sizes it may take.
DEFAULT_INPUT_SIZE = 32
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 4096
#: Most classes a dataset may have (ImageNet-21k has 21,841), and the longest class name (a
#: folder's name, a ClassLabel's name): what a checkpoint holds of them is bounded the same way.
MAX_CLASSES = 1_000_000
MAX_CLASS_NAME = 1000
#: The smallest per-channel standard deviation (in [0, 1] units) idml normalises by: measured on
#: the data it is raised to this (a channel of one value has none), and given it must be at least this.
MIN_STD = 1e-3

#: Most class indices a ``--classes`` spec may expand to when the dataset's classes are unknown
#: (a spec like 0-1000000000 is refused before a list of that length is built).
MAX_CLASS_INDICES = 100_000


@dataclass(frozen=True)
class UserDataset:
    """A kind of dataset whose images and classes come from the user's own data."""

    kind: str
    #: how the ``--dataset`` value is spelled, for messages
    form: str
    #: the :data:`CAPABILITIES` it has
    can: frozenset[str] = frozenset()


#: ``--dataset`` value (``folder``) or prefix before a colon (``hf:<path>``) -> kind of user data.
USER_DATASETS = {
    "folder": UserDataset("folder", "folder (with --data_dir D holding train/<class>/ and val/<class>/)",
                          frozenset({"val_split"})),
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
    return f"unknown --dataset {describe(name)}: choose one of {', '.join(forms)}"


def dataset_info(name: str, input_size: int | None = None) -> DatasetInfo:
    """Facts about ``name``; for a user dataset, those of ``input_size`` (default 32) inputs."""
    user = user_dataset(name)
    if user is not None:
        size = input_size or DEFAULT_INPUT_SIZE
        return DatasetInfo(canonical_name(name), 0, input_family(size), size, user.can)
    try:
        return DATASETS[name.lower()]
    except KeyError as exc:
        raise ConfigError(dataset_problem(name)) from exc


def default_network(name: str, input_size: int | None = None) -> tuple[str, int, bool] | None:
    """idml's default (net_type, depth, bottleneck) for ``name``; None for an official dataset."""
    info = dataset_info(name, input_size)
    return None if info.official else OWN_DEFAULT_NETWORK[info.family]


def datasets_that_can(capability: str) -> list[str]:
    """The ``--dataset`` values with ``capability`` (for messages: "works on cifar10, ...")."""
    return [name for name, info in DATASETS.items() if capability in info.can] + [
        kind for kind, user in USER_DATASETS.items() if capability in user.can]


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_classes(spec: str, num_classes: int | None = None, flag: str = "--classes") -> list[int]:
    """Class indices from ``"0-4"``, ``"0,3,7"`` or ``"0-2,5"`` (in the order written, no repeats).

    ``num_classes`` (when known) bounds the indices; every mistake is a one-line ConfigError.
    """
    classes: list[int] = []
    for part in str(spec).replace(" ", "").split(","):
        match = _RANGE.match(part)
        if not match:
            raise ConfigError(f"{flag} {describe(spec)}: write class indices as ranges and lists, e.g. 0-4 or 0,3,7")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ConfigError(f"{flag} {describe(spec)}: the range {part} runs backwards (write {last}-{first})")
        if num_classes is not None and last >= num_classes:
            raise ConfigError(f"{flag} {describe(spec)}: class {last} does not exist (the dataset has classes "
                              f"0-{num_classes - 1})")
        if len(classes) + last - first + 1 > max(num_classes or 0, MAX_CLASS_INDICES):  # counted before it is built
            raise ConfigError(f"{flag} {describe(spec)} names more classes than any dataset holds")
        classes.extend(range(first, last + 1))
    if len(set(classes)) != len(classes):
        raise ConfigError(f"{flag} {describe(spec)} names a class twice")
    if num_classes is not None and len(classes) < 2:
        raise ConfigError(f"{flag} {describe(spec)}: a classifier needs at least 2 classes")
    return classes


def decode_problem(decode: str, device_type: str) -> str | None:
    """Why ``--decode`` cannot be honoured on a run training on ``device_type`` ("cpu", "cuda",
    "mps"), or None: the GPU decoding path is CUDA's (nvJPEG). Checked on the settings when
    ``--device`` names the device, and again on the device a run resolves."""
    if decode == "gpu" and device_type != "cuda":
        return (f"--decode gpu decodes the training JPEGs on a CUDA GPU, but this run trains on {device_type}: "
                "use --decode cpu")
    return None
