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

import json
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from idml.data.catalog import MAX_CLASSES
from idml.data.image_files import read_training_image
from idml.data.types import DataBundle, DataRequest
from idml.data.user import UserData, user_bundle
from idml.errors import DataError, describe, listing, one_line
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
    except Exception as exc:  # a damaged folder fails anywhere inside datasets (TypeError, IndexError, ...)
        empty = _empty_saved_splits(path)
        if empty:  # datasets cannot load a saved split of no rows (IndexError): say what it is
            raise DataError(f"hf:{path}: the {listing(empty)} split holds no rows; a run needs images to train "
                            "on and to validate on") from exc
        raise DataError(f"cannot read the Hugging Face dataset at {path}: {type(exc).__name__}: "
                        f"{one_line(exc)[:200]}") from exc


def _empty_saved_splits(path: Path) -> list[str]:
    """The splits of a save_to_disk folder that hold no data file (best effort: [] if unsure)."""
    empty = []
    for state in sorted(path.glob("*/state.json"))[:100]:
        try:
            if json.loads(state.read_text(encoding="utf-8")).get("_data_files") == []:
                empty.append(repr(state.parent.name))
        except (OSError, ValueError, AttributeError):
            continue
    return empty


class HFImages:
    """One split of a Hugging Face dataset as an image source (see :class:`idml.data.user.ImageSource`).

    The image column is read undecoded (``datasets.Image(decode=False)``: the file's bytes, or its
    path) and decoded by :func:`idml.data.image_files.read_training_image`, the one image opener,
    so that an hf dataset's images meet the same decoders, pixel limit and bit-depth scaling as
    image files (``datasets`` itself would let Pillow try every decoder it has).
    """

    def __init__(self, table: Any, image_key: str, labels: list[int], name: str) -> None:
        self.table, self.image_key, self.labels, self.name = table, image_key, labels, name
        self._facts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        try:
            value = self.table[index][self.image_key]
        except Exception as exc:  # a damaged Arrow file fails while it is read
            raise DataError(f"cannot read image {self.where(index)}: {one_line(exc)[:200]}") from exc
        if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
            return read_training_image(value["bytes"], self.where(index))
        if isinstance(value, dict) and isinstance(value.get("path"), str) and value["path"]:
            return read_training_image(value["path"], f"{self.where(index)} ({value['path']})")
        raise DataError(f"{self.where(index)}: column {describe(self.image_key)} holds {type(value).__name__} "
                        f"({describe(value)}), not an image; pass the image column with --image_key")

    def where(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def key(self, index: int) -> str:
        """Row ``index`` as its split's identity names it: rows have no names, so its number and what
        the image column says of the image without reading it (:meth:`image_facts`)."""
        if self._facts is None:
            self._facts = self.image_facts()
        return f"{index}\t{self._facts[index]}" if self._facts else str(index)

    def image_facts(self) -> list[str]:
        """Each row's image path and byte count, read from the Arrow column's paths and offsets (no
        image is read): a row whose image was replaced changes the identity, although its label is
        the same (an image replaced by one of exactly as many bytes, at the same path, is not seen).
        Empty for a column of another shape, or a table with an index mapping."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = self.table.data.column(self.image_key) if getattr(self.table, "_indices", None) is None else None
        if column is None or not pa.types.is_struct(column.type) or column.type.get_field_index("bytes") < 0:
            return []
        sizes = pc.binary_length(pc.struct_field(column, "bytes")).to_pylist()
        paths = pc.struct_field(column, "path").to_pylist() if column.type.get_field_index("path") >= 0 else []
        return [f"{paths[i] if paths else None}\t{sizes[i]}" for i in range(len(sizes))]


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
    """Split ``name`` as an image source (its images left undecoded), and its label feature."""
    table = dataset[name]
    for key, flag in ((req.image_key, "--image_key"), (req.label_key, "--label_key")):
        if key not in table.column_names:
            columns = ", ".join(describe(c) for c in table.column_names[:20])
            raise DataError(f"{where}[{name}] has no column {describe(key)} (columns: {columns}); "
                            f"name the right one with {flag}")
    if isinstance(table.features[req.image_key], _datasets().Image):
        table = table.cast_column(req.image_key, _datasets().Image(decode=False))
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
    for name, source in (("train", train), (val_name, val)):
        if len(source) == 0:
            raise DataError(f"{where}: the {describe(name)} split holds no rows; a run needs images to train on and to "
                            "validate on")
    names = class_names(feature, train.labels + val.labels, where)
    bad = [v for v in train.labels + val.labels if not 0 <= v < len(names)][:1]
    if bad:
        raise DataError(f"{where}: label {bad[0]} lies outside the {len(names)} classes")
    return UserData(train, val, names, where)


def build_hf(req: DataRequest, device: torch.device) -> DataBundle:
    """``--dataset hf:<path>``: treated like a folder dataset once read."""
    return user_bundle(load_hf(req), req, device)
