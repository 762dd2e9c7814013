"""Checkpoint files: atomic replacement, ordinary permissions, safe loading with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from idml.checkpoint.io import load_checkpoint, save_checkpoint
from idml.checkpoint.schema import Checkpoint
from idml.errors import IdmlError
from idml.files import atomic_write

MODEL = {"net_type": "resnet", "dataset": "cifar10", "depth": 1}


def test_permissions_follow_the_umask(tmp_path: Path) -> None:
    path = save_checkpoint(Checkpoint(model=MODEL, state_dict={}), tmp_path / "checkpoint.pth.tar")
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_failed_save_keeps_the_previous_file(tmp_path: Path) -> None:
    path = save_checkpoint(Checkpoint(model=MODEL, state_dict={"w": torch.ones(2)}), tmp_path / "checkpoint.pth.tar")
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an unpicklable object
        atomic_write(path, lambda fh: torch.save({"bad": lambda: None}, fh))

    assert torch.equal(load_checkpoint(path).state_dict["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth.tar"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "does not exist"), (b"not a checkpoint", "cannot load"), ("list", "not an idml checkpoint")],
    ids=["missing", "garbage", "foreign"],
)
def test_load_errors_are_one_line(tmp_path: Path, content, fragment: str) -> None:
    path = tmp_path / "c.pth.tar"
    if content == "list":
        torch.save([1, 2], path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(IdmlError) as info:
        load_checkpoint(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)
