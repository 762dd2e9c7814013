"""What a dataset's splits hold, in a few bytes: how a checkpoint knows that the data changed.

The held-out validation split of ``--val_split`` and the order of every epoch are computed from
the data as it is when a command runs: the sorted file list of a folder dataset (or ImageNet's
ImageFolder), the rows of a Hugging Face dataset, the labels of an in-memory one. A file added
to ``train/`` after training reshuffles the held-out split (``idml eval`` would then validate
on images the model trained on) and the order of an epoch (a run resumed inside it would continue
another order). So each split's identity is recorded in the checkpoint (field ``data``): how many
images it holds and a SHA-256 digest of its images' names (paths relative to the data folder; row
numbers for datasets without file names) and labels. Bounded: 100 bytes per split, whatever the
data's size. Rows of a Hugging Face dataset are named by their number, image path and byte count
(:meth:`idml.data.hf.HFImages.key`). No torch here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from idml.rules import Rule

#: The splits of a :class:`idml.data.types.DataBundle` that an identity names.
SPLITS = ("train", "selection", "test")
_DIGEST = re.compile(r"[0-9a-f]{64}")
#: Most images a split may declare (ImageNet-21k has 14 million).
MAX_IMAGES = 10**12


def split_identity(keys: Iterable[Any], labels: Iterable[Any]) -> dict[str, Any]:
    """``{"count": n, "digest": sha256}`` of the (name, label) pairs of a split, in its order."""
    digest = hashlib.sha256()
    count = 0
    lines: list[str] = []
    for key, label in zip(keys, labels, strict=True):
        lines.append(f"{int(label)}\t{key}\n")
        count += 1
        if len(lines) == 65536:  # hashed in blocks: fast, and memory stays that of one block
            digest.update("".join(lines).encode("utf-8", "surrogateescape"))
            lines.clear()
    digest.update("".join(lines).encode("utf-8", "surrogateescape"))
    return {"count": count, "digest": digest.hexdigest()}


def _is_identity(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) <= set(SPLITS) and all(
        isinstance(entry, dict) and set(entry) == {"count", "digest"} and type(entry["count"]) is int
        and 0 <= entry["count"] <= MAX_IMAGES and isinstance(entry["digest"], str)
        and _DIGEST.fullmatch(entry["digest"]) is not None for entry in value.values()))


#: The rule of a checkpoint's ``data`` field.
DATA_IDENTITY = Rule("name the data's splits (train, selection, test), each with an image count and a SHA-256 "
                     "digest", _is_identity)


def changed_splits(saved: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Each split that both identities name and whose content differs: (images then, images now).
    Nothing when ``saved`` is None (a checkpoint of an idml that did not record it)."""
    if not saved:
        return {}
    return {split: (saved[split]["count"], now[split]["count"]) for split in SPLITS
            if split in saved and split in now and saved[split] != now[split]}


def change_words(split: str, counts: tuple[int, int]) -> str:
    """"the training images changed since the checkpoint was written (1200 then, 1203 now)"."""
    what = {"train": "training images", "selection": "validation images", "test": "test images"}[split]
    before, after = counts
    detail = f"{before} then, {after} now" if before != after else f"{before} images, other files or labels"
    return f"the {what} changed since the checkpoint was written ({detail})"
