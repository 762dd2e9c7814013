"""Where the time of one batch-1 inference goes: PyTorch eager against onnxruntime, for the networks of
benchmarks/inference_speed.py.

- onnxruntime: the exported graph's operators before and after onnxruntime's graph optimisations
  (which fold BatchNorm into the convolutions and fuse activations), and its own profile of one
  run: time per operator kind.
- eager: torch.profiler over one forward: how many operators are dispatched and the time per kind.

    PYTHONPATH=src python benchmarks/inference_profile.py --model pyramidnet110 --threads 1
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from inference_speed import MODELS, deployed

from idml.export.onnx import export_onnx


def operator_counts(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def onnxruntime_profile(data: bytes, images: np.ndarray, threads: int, folder: Path, runs: int) -> dict:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.optimized_model_filepath = str(folder / "optimised.onnx")
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "ort")
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"images": images})
    trace = json.loads(Path(session.end_profiling()).read_text())
    per_kind: collections.Counter = collections.Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_kind[event["args"]["op_name"]] += event["dur"] / runs
    optimised = onnx.load(str(folder / "optimised.onnx"))
    return {"operators_after": operator_counts(optimised), "microseconds_per_kind": per_kind}


def eager_profile(module: torch.nn.Module, images: np.ndarray, runs: int) -> dict:
    batch = torch.from_numpy(images)
    with torch.inference_mode():
        module(batch)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                module(batch)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    calls = sum(e.count for e in events if e.key in {"aten::conv2d", "aten::batch_norm", "aten::relu", "aten::relu_",
                                                      "aten::add", "aten::linear", "aten::avg_pool2d", "aten::pad",
                                                      "aten::max_pool2d", "aten::adaptive_avg_pool2d"}) / runs
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {"module_level_ops_per_forward": calls,
            "self_microseconds_per_kind": {e.key: e.self_cpu_time_total / runs for e in top},
            "total_microseconds": sum(e.self_cpu_time_total for e in events) / runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", choices=list(MODELS), default="pyramidnet110")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module, metadata = deployed(args.model)
    images = np.random.default_rng(0).integers(0, 256, (1, 3, metadata.input_size, metadata.input_size), np.uint8)
    data = export_onnx(module, metadata, 18, args.model)
    before = operator_counts(onnx.load_from_string(data))
    with tempfile.TemporaryDirectory() as folder:
        ort = onnxruntime_profile(data, images, args.threads, Path(folder), args.runs)
    eager = eager_profile(module, images, args.runs)
    print(f"# {args.model}, batch 1, {args.threads} thread(s), load {os.getloadavg()[0]:.2f}")
    print(f"exported graph: {sum(before.values())} operators {dict(before.most_common(8))}")
    after = ort["operators_after"]
    print(f"after onnxruntime's optimisations: {sum(after.values())} operators {dict(after.most_common(8))}")
    kinds = ort["microseconds_per_kind"]
    print(f"onnxruntime kernel time per run: {sum(kinds.values()):.0f} us "
          f"{ {k: round(v) for k, v in kinds.most_common(6)} }")
    print(f"eager: {eager['module_level_ops_per_forward']:.0f} module-level operators per forward, "
          f"{eager['total_microseconds']:.0f} us of aten self time "
          f"{ {k: round(v) for k, v in eager['self_microseconds_per_kind'].items()} }")


if __name__ == "__main__":
    main()
