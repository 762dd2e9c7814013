"""The walk-through "Train on your own images" of docs/own-data.md, run as a new user would: its
bash blocks, as written, in an empty folder with a ``.venv/bin`` that runs this checkout (only
``--epochs 30`` is shortened to 2, for time)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from doc_blocks import ROOT, code_blocks, run_block, section
from runs import fake_venv

DOC = ROOT / "docs" / "own-data.md"


def walkthrough() -> tuple[str, str]:
    """(the block that makes the example PNGs, the block of the three commands)."""
    blocks = code_blocks("bash", section(DOC.read_text(encoding="utf-8"), "Train on your own images"))
    assert len(blocks) == 2, blocks
    return blocks[0], blocks[1]


def test_the_walkthrough_has_three_commands() -> None:
    _, commands = walkthrough()
    lines = commands.replace("\\\n", " ").strip().splitlines()
    assert [line.split()[:2] for line in lines] == [[".venv/bin/idml", c] for c in ("train", "eval", "predict")]


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    make_images, commands = walkthrough()
    fake_venv(tmp_path)
    made = run_block(make_images, tmp_path)
    assert made.returncode == 0, made.stderr
    pngs = sorted((tmp_path / "my_images").rglob("*.png"))
    assert len(pngs) == 375 and {p.parent.name for p in pngs} == {"circle", "square", "triangle"}

    shortened = re.sub(r"--epochs 30\b", "--epochs 2", commands)
    assert shortened != commands
    run = run_block(shortened, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    out = run.stdout
    # the first line of the run is the one the page quotes
    quoted = re.search(r"`(=> data: folder my_images:.*?)`", DOC.read_text(encoding="utf-8"), flags=re.S)[1]
    assert " ".join(quoted.split()) in out
    assert (tmp_path / "runs" / "my_images" / "model_best.pth.tar").is_file()
    assert re.search(r"^dataset\s+folder \(75 test images, 3 classes; ISM on\)$", out, flags=re.M)  # idml eval
    table = out[out.index("file ") :].splitlines()  # idml predict
    assert table[0].split() == ["file", "uncertainty", "(msp)", "top-1", "top-2", "top-3"]
    assert len(table) == 26 and all(row.startswith("my_images/val/circle/") for row in table[1:])
    assert all(name in out for name in ("circle", "square", "triangle"))
