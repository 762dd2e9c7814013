"""idml bench --input_pipeline: both pipelines timed on the same files, JSON with images_per_second."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from expect import one_error_line
from fake_data import jpeg, photo
from idml import cli

PIPELINE = ["bench", "--input_pipeline", "--dataset", "imagenet", "--batch_size", "4", "--device", "cpu",
            "--steps", "2", "--warmup", "1", "--images", "8", "--net_type", "resnet", "--depth", "18"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for split, n in (("train", 10), ("val", 2)):
        folder = root / "imagenet-1k" / split / "n00000001"
        folder.mkdir(parents=True)
        for i in range(n):
            jpeg(folder / f"{i}.JPEG", photo(500 - 20 * i, 375, index=i % 2), quality=75 + 2 * i)
    return root


@pytest.mark.parametrize("workers", ["0", "1"])
def test_json_has_both_pipelines_and_their_ratio(photos: Path, capsys, workers: str) -> None:
    assert cli.main([*PIPELINE, "--data_dir", str(photos), "-j", workers, "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    # progress on stderr, as for the step benchmark: each stage, and each round with an estimate
    assert all(re.match(r"idml bench \[\d+ s\]: ", line) for line in captured.err.splitlines()), captured.err
    assert len(re.findall(r"round [12]/2 done \(\d+\.\d s\), about \d+ s left", captured.err)) == 2
    assert result["variant"] == "idml" and result["images_per_second"] > 0
    by = {r["variant"]: r for r in result["results"]}
    assert set(by) == {"idml", "official"} and result["config"]["images"] == 8
    assert "idml / official" in result["ratios"] and result["ratios"]["idml / official"] > 0
    for r in by.values():
        assert len(r["turn_seconds"]) == 2 and r["images_per_second"] > 0
        if sys.platform == "linux":  # CPU time of the worker processes, from /proc
            assert r["images_per_cpu_second"] > 0
            assert (r["images_per_worker_cpu_second"] is not None) == (workers == "1")
    assert "official" in by["official"]["settings"] and "in the workers" in by["idml"]["settings"]
    assert {"model", "flags"} <= set(result["cpu"])


def test_table_and_the_gpu_paths_cpu_twin(photos: Path, capsys) -> None:
    assert cli.main([*PIPELINE, "--data_dir", str(photos), "-j", "0", "--variants", "idml", "--decode", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "the GPU path's twin" in out and "idml / official" not in out


@pytest.mark.parametrize(("args", "fragment"), [
    (["--dataset", "cifar10"], "--input_pipeline times the ImageNet input pipeline"),
    (["--variants", "fast"], "unknown --variants 'fast' for --input_pipeline"),
])
def test_bad_requests_are_one_line(photos: Path, capsys, args: list[str], fragment: str) -> None:
    code = cli.main([*PIPELINE, "--data_dir", str(photos), *args])
    one_error_line(capsys.readouterr().err, fragment, code=code)
