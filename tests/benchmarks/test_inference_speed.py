"""benchmarks/inference_speed.py on a tiny network: every runner computes the same outputs, and the
report's rates and paired ratios are consistent with its own per-round times."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "inference_speed.py"


def load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("inference_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "inference_speed", module)
    spec.loader.exec_module(module)
    tiny = ({"net_type": "resnet", "dataset": "cifar10", "depth": 8, "bottleneck": False}, 32)
    monkeypatch.setattr(module, "MODELS", {"resnet8": tiny})
    return module


def test_the_runners_agree_and_the_report_adds_up(monkeypatch, tmp_path: Path, capsys) -> None:
    bench = load_script(monkeypatch)
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    outputs = {label: run(images) for label, run in bench.runners("resnet8", 1).items()}
    reference = outputs.pop("eager")[0].numpy()
    for label, out in outputs.items():
        logits = out[0].numpy() if isinstance(out[0], torch.Tensor) else out[0]
        np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4, err_msg=label)

    out_json = tmp_path / "speed.json"
    monkeypatch.setattr(sys, "argv", ["inference_speed.py", "--batches", "1", "2", "--rounds", "3", "--seconds", "0.02",
                                      "--threads", "1", "--json", str(out_json)])
    bench.main()
    printed = capsys.readouterr().out
    assert "resnet8        batch   1" in printed and "onnxruntime" in printed and "load average after" in printed
    report = json.loads(out_json.read_text())
    assert {"cpu", "flags", "date", "load_before", "load_after", "torch", "onnxruntime"} <= set(report["machine"])
    for result in report["results"]:
        times = result["seconds_per_image"]
        assert set(times) == {"eager", "eager-cl", "torchscript", "onnxruntime"}
        assert all(len(t) == 3 for t in times.values())
        for label, seconds in times.items():
            assert result["images_per_s"][label] == 1 / statistics.median(seconds)
            paired = statistics.median(e / s for e, s in zip(times["eager"], seconds, strict=True))
            assert result["speedup_vs_eager"][label] == paired
        assert result["speedup_vs_eager"]["eager"] == 1.0
