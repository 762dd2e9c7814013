"""What the data layer is asked for (:class:`DataRequest`) and what it returns (:class:`DataBundle`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

TrainTransform = Callable[[Tensor, np.random.Generator], Tensor]
EvalTransform = Callable[[Tensor], Tensor]


@dataclass
class DataBundle:
    """Loaders and what the model needs to know about the data.

    Three splits, named by what they are for:

    - ``train``: what the network trains on;
    - ``selection``: what the best epoch (and the softmax temperature) is chosen on;
    - ``test``: the dataset's own test split, reported as the result.

    Under the official protocol ``selection`` *is* ``test`` (the official code picks its best
    epoch on the test split); with ``--val_split`` it is a held-out share of the training images
    (:attr:`held_out`). ``train_transform`` / ``eval_transform`` run on the training device on each
    batch after it arrives there (for in-memory sets: augmentation and normalisation; for
    ImageNet, whose workers crop and flip: colour jitter, lighting and normalisation).
    """

    train: Iterable
    selection: Iterable
    test: Iterable
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    train_transform: TrainTransform
    eval_transform: EvalTransform
    #: how the data is held and augmented, for the run's console (user datasets)
    note: str = ""
    #: what each split holds (:func:`idml.data.identity.split_identity`), recorded in checkpoints
    identity: dict = field(default_factory=dict)

    @property
    def held_out(self) -> bool:
        """Whether the selection split is held out of the training images (``--val_split``)."""
        return self.selection is not self.test

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class DataRequest:
    """What :func:`idml.data.build.build_data` needs from the run's settings."""

    dataset: str
    data_dir: str | Path
    batch_size: int
    workers: int | None = None  # None: one per CPU core this process may use (see default_workers)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    skip_bad_images: bool = False
    label_noise: float = 0.0
    # user datasets (folder, hf:<path>; see data/user.py)
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image_key: str = "image"
    label_key: str = "label"
    memory_mb: float = 2048.0
    #: False: only the evaluation splits are needed (idml eval), with the given mean and std
    need_train: bool = True
    val_split: float = 0.0
    classes: str | None = None
    #: where ImageNet's training JPEGs are decoded: "cpu" (the workers) or "gpu" (the training device)
    decode: str = "cpu"
