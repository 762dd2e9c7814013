"""CPU inference speed of an exported model: PyTorch eager, TorchScript and onnxruntime, images/s.

The network timed is the one ``idml export`` writes (:class:`idml.export.graph.DeployedClassifier`:
uint8 images in; logits, probabilities and the uncertainty score out), randomly initialised (speed
does not depend on the weights' values), for ResNet-50 at 224x224 (ImageNet, 1,000 classes) and
PyramidNet-110 (alpha 48, basic blocks) at 32x32 (CIFAR-10), at batch 1 and batch 64:

- ``eager``: the module itself in float32, NCHW, under ``torch.inference_mode``;
- ``eager-cl``: the same in channels_last, the memory format idml eval/predict use on a CPU in float32;
- ``torchscript``: the bytes ``idml export --format torchscript`` writes, loaded with torch.jit.load;
- ``onnxruntime``: the bytes ``idml export --format onnx`` writes (opset 18), in an onnxruntime CPU
  session with its default (all) graph optimisations.

Timing follows ``idml bench``'s design: every runner is warmed up, then in each round the runners go
in a shuffled order, each timed over enough calls to last about ``--seconds``; images/s is the median
over rounds, and each ratio to eager is the median of the per-round ratios (paired: a round's runners
share the machine's load of that moment). The threads of both libraries are set to ``--threads``.

    PYTHONPATH=src python benchmarks/inference_speed.py --rounds 7 --json out.json
    PYTHONPATH=src python benchmarks/inference_speed.py --models pyramidnet110 --batches 1 --rounds 3  # quick
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Callable

import numpy as np
import onnxruntime
import torch

from idml.export.graph import DeployedClassifier
from idml.export.metadata import ExportMetadata
from idml.export.onnx import export_onnx
from idml.export.torchscript import export_torchscript, load_torchscript
from idml.inference import TrainedModel
from idml.models.registry import build_model

#: name -> (build_model arguments, input size)
MODELS: dict[str, tuple[dict, int]] = {
    "resnet50": ({"net_type": "resnet", "dataset": "imagenet", "depth": 50}, 224),
    "pyramidnet110": ({"net_type": "pyramidnet", "dataset": "cifar10", "depth": 110, "alpha": 48.0,
                       "bottleneck": False}, 32),
}
Runner = Callable[[np.ndarray], object]


def deployed(name: str) -> tuple[DeployedClassifier, ExportMetadata]:
    settings, size = MODELS[name]
    torch.manual_seed(0)
    model = build_model(**settings).eval()
    classes = model.head.fc.out_features
    metadata = ExportMetadata([str(c) for c in range(classes)], size, [0.5] * 3, [0.25] * 3, None, "msp", "cifar",
                              "model", "benchmark", "0" * 64)
    trained = TrainedModel(model, settings["dataset"], metadata.class_names, (0.5,) * 3, (0.25,) * 3, size,
                           torch.device("cpu"))
    return DeployedClassifier(trained, metadata).eval(), metadata


def runners(name: str, threads: int) -> dict[str, Runner]:
    module, metadata = deployed(name)
    torchscript, _ = load_torchscript(export_torchscript(module, metadata, name))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(export_onnx(module, metadata, 18, name), options,
                                           providers=["CPUExecutionProvider"])
    channels_last = copy.deepcopy(module).to(memory_format=torch.channels_last)

    def eager(images: np.ndarray, net=module, cl: bool = False) -> object:
        with torch.inference_mode():
            batch = torch.from_numpy(images)
            return net(batch.contiguous(memory_format=torch.channels_last) if cl else batch)

    def script(images: np.ndarray) -> object:
        with torch.inference_mode():
            return torchscript(torch.from_numpy(images))

    return {
        "eager": eager,
        "eager-cl": lambda images: eager(images, channels_last, True),
        "torchscript": script,
        "onnxruntime": lambda images: session.run(None, {"images": images}),
    }


def time_calls(run: Runner, images: np.ndarray, calls: int) -> float:
    """Seconds per image over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        run(images)
    return (time.perf_counter() - start) / (calls * len(images))


def measure(name: str, batch: int, threads: int, rounds: int, seconds: float, seed: int) -> dict:
    size = MODELS[name][1]
    images = np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
    variants = runners(name, threads)
    calls = {}
    for label, run in variants.items():  # warm-up, and how many calls last about `seconds`
        for _ in range(3):
            run(images)
        calls[label] = max(1, round(seconds / (time_calls(run, images, 2) * batch)))
    order = list(variants)
    rng = random.Random(seed)
    per_image: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(rounds):
        rng.shuffle(order)
        for label in order:
            per_image[label].append(time_calls(variants[label], images, calls[label]))
    rate = {label: 1.0 / statistics.median(times) for label, times in per_image.items()}
    ratio = {label: statistics.median(e / t for e, t in zip(per_image["eager"], times, strict=True))
             for label, times in per_image.items()}
    return {"model": name, "batch": batch, "threads": threads, "rounds": rounds, "calls": calls,
            "images_per_s": rate, "speedup_vs_eager": ratio, "seconds_per_image": per_image}


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        model = info.get("Model name", "").strip()
        flags = set(info.get("Flags", "").split())
    except (OSError, subprocess.CalledProcessError):
        model, flags = platform.processor(), set()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"cpu": model, "flags": [f for f in wanted if f in flags], "cores": os.cpu_count(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="about how long one runner's turn in a round lasts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rounds' shuffled orders")
    parser.add_argument("--json", help="also write every measurement (per-round times included) to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    facts = machine() | {"threads": args.threads, "load_before": os.getloadavg()}
    print(f"# {facts['cpu']} ({', '.join(facts['flags'])}), {facts['cores']} cores, {args.threads} threads; "
          f"torch {facts['torch']}, onnxruntime {facts['onnxruntime']}; {facts['date']}; "
          f"load {facts['load_before'][0]:.2f}")
    results = []
    for name in args.models:
        for batch in args.batches:
            result = measure(name, batch, args.threads, args.rounds, args.seconds, args.seed)
            results.append(result)
            cells = "  ".join(f"{label} {rate:8.1f}/s ({result['speedup_vs_eager'][label]:.2f}x)"
                              for label, rate in result["images_per_s"].items())
            print(f"{name:14s} batch {batch:3d}  {cells}", flush=True)
    facts["load_after"] = os.getloadavg()
    print(f"# load average after: {facts['load_after'][0]:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": facts, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
