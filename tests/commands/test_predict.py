"""idml predict streams: files are decoded -b at a time and each batch's rows are printed before the
next batch is read, in every format; memory stays that of one batch however many files there are."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import idml.inference
from child import in_child
from idml.cli import main as cli_main
from idml.inference import Outputs
from idml.models.registry import build_from_spec
from idml.models.spec import ModelSpec
from runs import one_thread, run_idml  # noqa: F401 - one_thread: autouse fixture

NAMES = ["cat", "dog", "a-much-longer-class-name"]


def checkpoint(path: Path, input_size: int) -> Path:
    """A random-weights ResNet checkpoint for 3 classes of a folder dataset of ``input_size`` pixels."""
    depth = 8 if input_size <= 64 else 18
    spec = ModelSpec("resnet", "folder", depth, 0.0, False, 3, True, 16, 5.0, input_size)
    torch.manual_seed(0)
    torch.save({"model": spec.to_dict(), "state_dict": build_from_spec(spec).state_dict(), "mean": [0.5] * 3,
                "std": [0.25] * 3, "input_size": input_size, "class_names": NAMES}, path)
    return path


def pictures(folder: Path, n: int, size: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_rows_are_printed_before_the_next_batch_is_read(tmp_path, monkeypatch, fmt: str) -> None:
    ckpt = checkpoint(tmp_path / "c.pth", 32)
    folder = pictures(tmp_path / "imgs", 12)
    events: list[str] = []
    read = idml.inference.read_image

    def reading(path, *args):
        events.append(f"read {Path(path).name}")
        return read(path, *args)

    class Recorder(io.StringIO):
        def write(self, text: str) -> int:
            if text.strip():
                events.append("printed")
            return super().write(text)

    monkeypatch.setattr(idml.inference, "read_image", reading)
    out = Recorder()
    with contextlib.redirect_stdout(out):
        assert cli_main(["predict", "--checkpoint", str(ckpt), str(folder), "-b", "4", "--format", fmt,
                         "--device", "cpu"]) == 0
    assert events.index("printed") < events.index("read 0004.png")  # batch 1 printed before batch 2 is read
    assert events.index("read 0004.png") < len(events) - 1 - events[::-1].index("printed")
    text = out.getvalue()
    if fmt == "json":
        records = json.loads(text)
        assert len(records) == 12 and text == json.dumps(records, indent=2) + "\n"  # the same text as before
    elif fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(text)))) == 12
    else:
        lines = text.splitlines()
        top1 = lines[0].index("top-1")  # every row's first class starts under it: the columns line up
        assert len(lines) == 13 and all(line[top1 - 2:top1] == "  " and line[top1] != " " for line in lines)
        assert lines[0].split()[:3] == ["file", "uncertainty", "(msp)"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to measure a child's memory")
def test_memory_is_that_of_one_batch_not_of_all_files(tmp_path, monkeypatch) -> None:
    """400 files of 224 x 224 inputs cost what 40 do: together as float tensors they would take 240 MB,
    one batch of -b 4 2.4 MB. (The network is replaced by a stand-in that averages each image: the
    data path is what is measured, not the cost of loading a ResNet-18.)"""
    ckpt = checkpoint(tmp_path / "c.pth", 224)
    folder = pictures(tmp_path / "imgs", 400, size=256)
    seen: list[int] = []

    def stand_in(trained, batches):
        logits = np.concatenate([b.float().mean(dim=(2, 3)).numpy().astype(np.float64) for b in batches])
        seen.append(len(logits))
        return Outputs(logits, None)

    monkeypatch.setattr(idml.inference, "run_model", stand_in)

    def predict(files: list[str]) -> str:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            code = cli_main(["predict", "--checkpoint", str(ckpt), *files, "-b", "4", "--format", "csv",
                             "--device", "cpu"])
        return f"{code} {max(seen)}"

    files = sorted(str(f) for f in folder.iterdir())
    _, few, grown_few = in_child(lambda: predict(files[:40]))
    status, many, grown_many = in_child(lambda: predict(files))
    assert os.WIFEXITED(status) and few == many == "returned 0 4", (few, many)
    assert grown_many - grown_few < 30 * 2**20, f"{grown_few >> 20} MiB for 40 files, {grown_many >> 20} MiB for 400"


def test_an_unreadable_file_after_the_first_batch_keeps_the_rows_printed(tmp_path, capsys) -> None:
    ckpt = checkpoint(tmp_path / "c.pth", 32)
    folder = pictures(tmp_path / "imgs", 6)
    (folder / "0005.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    code, out, err = run_idml(["predict", "--checkpoint", str(ckpt), str(folder), "-b", "2", "--format", "csv",
                               "--device", "cpu"], capsys)
    assert code == 2 and err.count("\n") == 1 and "0005.png" in err
    assert [row["file"].rsplit("/", 1)[-1] for row in csv.DictReader(io.StringIO(out))] == [
        "0000.png", "0001.png", "0002.png", "0003.png"]
