"""docs/input-pipeline.md's way to measure your own machine, run as written (in an empty folder whose
``.venv/bin`` runs this checkout and whose ``benchmarks`` is this checkout's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from doc_blocks import ROOT, code_blocks, run_block
from runs import fake_venv

DOC = ROOT / "docs" / "input-pipeline.md"


@pytest.mark.slow
def test_the_measurement_block_runs_as_written(tmp_path: Path) -> None:
    (block,) = [b for b in code_blocks("bash", DOC.read_text(encoding="utf-8")) if "--input_pipeline" in b]
    fake_venv(tmp_path)
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    run = run_block(block, tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert len(list((tmp_path / "photos" / "imagenet-1k" / "train").rglob("*.JPEG"))) == 256
    assert re.search(r"^idml\s+[\d.]+\s+[\d.]+", run.stdout, re.M) and "idml / official:" in run.stdout
