"""``--dataset hf:<path>``: a Hugging Face dataset stored on this machine (``pip install 'idml[hf]'``).

``<path>`` is one of

- a folder written by ``DatasetDict.save_to_disk`` (it holds ``dataset_dict.json``), read with
  ``datasets.load_from_disk``;
- a folder of parquet files, read with ``load_dataset("parquet", data_dir=<path>)``;
- any other folder, read with ``load_dataset("imagefolder", data_dir=<path>)`` (for example
  ``train/<class>/*.png`` and ``validation/<class>/*.png``).

Nothing is downloaded: ``HF_DATASETS_OFFLINE=1`` is set before ``datasets`` is imported. The
training split is ``train``; the validation split the first of ``validation``, ``val``, ``test``.
``--image_key`` names the image column, ``--label_key`` the label column; a ``ClassLabel`` label
names the classes (integer labels are named 0, 1, ...). From there on the images are treated
exactly like a folder dataset's (:mod:`idml.data.user`: input size, augmentation, statistics,
in memory or streamed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from idml.data.catalog import MAX_CLASSES
from idml.data.types import DataBundle, DataRequest
from idml.data.user import UserData, user_bundle
from idml.errors import DataError, one_line
from idml.extras import require

VAL_SPLITS = ("validation", "val", "test")


def _datasets() -> Any:
    require("hf", "--dataset hf:<path>")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before the first import of datasets
    import datasets

    return datasets


def open_dataset(path: Path) -> Any:
    """The DatasetDict stored at ``path`` (save_to_disk folder, parquet folder or image folder)."""
    if not path.is_dir():  # before importing datasets, which takes seconds
        raise DataError(f"--dataset hf:{path}: no such folder (save a dataset there with save_to_disk, or put an "
                        "imagefolder or parquet files there)")
    datasets = _datasets()
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path))
        builder = "parquet" if any(path.rglob("*.parquet")) else "imagefolder"
        return datasets.load_dataset(builder, data_dir=str(path))
    except (OSError, ValueError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise DataError(f"cannot read the Hugging Face dataset at {path}: {one_line(exc)}") from exc


class HFImages:
    """One split of a Hugging Face dataset as an image source (see :class:`idml.data.user.ImageSource`)."""

    def __init__(self, table: Any, image_key: str, labels: list[int], name: str) -> None:
        self.table, self.image_key, self.labels, self.name = table, image_key, labels, name

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        try:
            value = self.table[index][self.image_key]
        except Exception as exc:  # a corrupt image fails while datasets decodes it
            raise DataError(f"cannot read image {self.where(index)}: {one_line(exc)}") from exc
        if not isinstance(value, Image.Image):
            raise DataError(f"{self.where(index)}: column {self.image_key!r} holds {type(value).__name__}, not an "
                            "image; pass the image column with --image_key")
        return value.convert("RGB")

    def where(self, index: int) -> str:
        return f"{self.name}[{index}]"


def class_names(feature: Any, labels: list[int], where: str) -> list[str]:
    """The names of a ClassLabel feature, or 0..max for integer labels."""
    names = getattr(feature, "names", None)
    if names:
        return [str(n) for n in names]
    if not all(isinstance(v, int) for v in labels) or not labels or min(labels) < 0:
        raise DataError(f"{where}: the labels must be a ClassLabel or integers >= 0; pass the label column with "
                        "--label_key")
    if max(labels) >= MAX_CLASSES:
        raise DataError(f"{where}: the integer label {max(labels)} would make {max(labels) + 1} classes, more than "
                        f"the {MAX_CLASSES} idml supports; check the label column (--label_key)")
    return [str(i) for i in range(max(labels) + 1)]


def split(dataset: Any, name: str, req: DataRequest, where: str) -> tuple[HFImages, Any]:
    """Split ``name`` as an image source, and its label feature."""
    table = dataset[name]
    for key, flag in ((req.image_key, "--image_key"), (req.label_key, "--label_key")):
        if key not in table.column_names:
            raise DataError(f"{where}[{name}] has no column {key!r} (columns: {', '.join(table.column_names)}); "
                            f"name the right one with {flag}")
    labels = [int(v) if isinstance(v, int | bool | torch.Tensor) else v for v in table[req.label_key]]
    return HFImages(table, req.image_key, labels, f"{where}[{name}]"), table.features[req.label_key]


def load_hf(req: DataRequest) -> UserData:
    """The train and validation splits of ``hf:<path>``, with their class names."""
    path = Path(req.dataset.partition(":")[2])
    dataset = open_dataset(path)
    where = f"hf:{path}"
    splits = list(dataset.keys()) if hasattr(dataset, "keys") else []
    val_name = next((s for s in VAL_SPLITS if s in splits), None)
    if "train" not in splits or val_name is None:
        raise DataError(f"{where} must hold a 'train' split and a 'validation' (or 'val', 'test') split; it holds "
                        f"{', '.join(splits) or 'a single split'}")
    train, feature = split(dataset, "train", req, where)
    val, _ = split(dataset, val_name, req, where)
    names = class_names(feature, train.labels + val.labels, where)
    bad = [v for v in train.labels + val.labels if not 0 <= v < len(names)][:1]
    if bad:
        raise DataError(f"{where}: label {bad[0]} lies outside the {len(names)} classes")
    return UserData(train, val, names, where)


def build_hf(req: DataRequest, device: torch.device) -> DataBundle:
    """``--dataset hf:<path>``: treated like a folder dataset once read."""
    return user_bundle(load_hf(req), req, device)
