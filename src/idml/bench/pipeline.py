"""``idml bench --input_pipeline``: the ImageNet training input pipeline alone, without a model.

What one turn times: an epoch over a fixed, seeded subset of the training files (``--images``),
from the files (in the page cache after the warm-up turn) to the normalised batch on the device:
the DataLoader workers (``-j``) reading, decoding, cropping and flipping, the batches' trip through
shared memory, the host-to-device copy and the on-device colour jitter, lighting and normalisation,
with the device synchronised at the end. Each turn is a whole epoch of a loader with persistent
workers, so a loader's workers sit idle while the other variant's turn runs (a turn cut short
would leave their prefetched work to run during the next one).

Variants (``--variants``): ``idml`` (the run's own pipeline, ``--decode`` as given) and
``official`` (the official worker transform, per image: Pillow decode, RandomResizedCrop, flip,
ToTensor, ColorJitter, Lighting, Normalize; :mod:`idml.bench.official_transform`), each with the
same ``-j`` workers, taking turns in shuffled rounds (:func:`idml.bench.rounds.measure_rounds`,
in this process: a DataLoader's workers cannot be children of a daemonic worker process).
``images_per_second`` is the subset over the median turn; ``images_per_cpu_second`` divides by
the CPU time of this process and its worker processes together (Linux: read from /proc), the
"per core" figure; the paired ratio compares the two per round.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from idml.bench.official_transform import official_train_transform, read_official
from idml.bench.rounds import Runner, Slot, measure_rounds, paired_ratio
from idml.config import TrainConfig
from idml.data.build import imagenet_loaders, training_decode
from idml.data.imagenet import load_imagenet
from idml.data.types import DataRequest
from idml.device.runtime import CPUINFO, resolve_device
from idml.training.trainer import step_rng

#: CPU flags that decide how fast decoding, resizing and the colour step run (listed with each result)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
#: training images per turn when --images is not given: this many batches
DEFAULT_BATCHES = 8


@dataclass
class WorkerClock:
    """CPU seconds used by this process's child processes (the DataLoader workers), by turn."""

    seconds: dict[int, float] = field(default_factory=dict)

    @staticmethod
    def children_cpu() -> float | None:
        """User + system CPU seconds of the live children of this process; None where /proc is missing."""
        me, total = str(os.getpid()), 0
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return None
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if stat[1] == me:  # field 4, ppid
                total += int(stat[11]) + int(stat[12])  # fields 14, 15: utime, stime in clock ticks
        return total / os.sysconf("SC_CLK_TCK")


def subset(folder, count: int, seed: int) -> None:
    """Keep a seeded sample of ``count`` of an ImageFolder's files (all of them if fewer)."""
    if count < len(folder.samples):
        keep = sorted(np.random.default_rng(seed).choice(len(folder.samples), count, replace=False).tolist())
        folder.samples = [folder.samples[i] for i in keep]
        folder.targets = [folder.targets[i] for i in keep]
        folder.imgs = folder.samples


def pipeline_runner(cfg: TrainConfig, variant: str, images: int, clock: WorkerClock) -> Runner:
    """One variant's training loader over ``images`` files and its on-device finish, one epoch a turn."""
    device = resolve_device(cfg.device)
    decode = "gpu" if cfg.decode == "gpu" else training_decode(cfg.decode, device)  # gpu off CUDA: its CPU twin
    data = load_imagenet(cfg.data_dir, "cpu" if variant == "official" else decode)
    subset(data["train"], images, cfg.seed)
    if variant == "official":
        data["train"].transform, data["train"].loader = official_train_transform(), read_official
    req = DataRequest("imagenet", cfg.data_dir, cfg.batch_size, cfg.workers, cfg.seed,
                      skip_bad_images=cfg.skip_bad_images, decode="cpu" if variant == "official" else decode)
    bundle = imagenet_loaders(data, req, device)
    finish = (lambda batch, rng: batch) if variant == "official" else bundle.train_transform

    def run_epoch(turn: int) -> None:
        bundle.train.set_epoch(turn)
        before = clock.children_cpu()
        for step, (batch, _labels) in enumerate(bundle.train):
            finish(batch.to(device, non_blocking=True), step_rng(cfg.seed, turn, step, 0))
        after = clock.children_cpu()
        clock.seconds[turn] = after - before if before is not None and after is not None else float("nan")

    n = len(data["train"])
    per_epoch = n - 1 if n > 1 and n % cfg.batch_size == 1 else n  # as ResumableSampler: no last batch of one
    return Runner(per_epoch, settings(variant, decode, device), device, run_epoch)


def settings(variant: str, decode: str, device: torch.device) -> str:
    if variant == "official":
        return "official worker transform (Pillow decode, RandomResizedCrop, flip, ToTensor, ColorJitter, Lighting, "\
               "Normalize per image; float32 batches)"
    twin = "decode_jpeg on the CPU: the GPU path's twin" if device.type != "cuda" else "nvJPEG"
    where = f"on the device ({twin})" if decode == "gpu" else "in the workers"
    return f"idml: JPEGs decoded {where}; uint8 crops; colour, lighting and normalisation on {device.type}"


def cpu_description() -> dict:
    """The CPU's model name and the flags of :data:`CPU_FLAGS` it has (Linux), for the record."""
    try:
        text = CPUINFO.read_text(encoding="utf-8")
    except OSError:
        return {"model": "unknown", "flags": []}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(text.split())
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags], "cores": os.cpu_count()}


def per_second(images: int, seconds: list[float]) -> float | None:
    """Images over the median of ``seconds`` (None where they were not measured)."""
    middle = statistics.median(seconds) if seconds else float("nan")
    return round(images / middle, 1) if middle > 0 else None


def result_of(slot: Slot, clock: WorkerClock, warmup: int) -> dict:
    main_cpu = slot.cpu_seconds
    workers = [clock.seconds[warmup + r] for r in range(len(main_cpu))]  # the timed turns, in round order
    total = [m + w for m, w in zip(main_cpu, workers, strict=True)]
    return {
        "variant": slot.label, "settings": slot.settings, "images_per_turn": slot.images_per_turn,
        "images_per_second": round(slot.images_per_second(), 1),
        "images_per_cpu_second": per_second(slot.images_per_turn, total),
        "images_per_worker_cpu_second": per_second(slot.images_per_turn, workers),
        "cores_busy": round(statistics.median(t / s for t, s in zip(total, slot.step_seconds, strict=True)), 2),
        "turn_seconds": [round(t, 3) for t in slot.step_seconds],
        "main_cpu_seconds": [round(t, 3) for t in main_cpu],
        "worker_cpu_seconds": [round(t, 3) for t in workers],
    }


def measure_pipeline(cfg: TrainConfig, variants: list[str], steps: int, warmup: int, images: int | None,
                     progress: Callable[[str], None] | None = None) -> dict:
    """Time the variants' input pipelines in alternating turns; the JSON object the bench prints.
    ``progress`` receives a line at each stage and round, as for the step benchmark."""
    count = images or cfg.batch_size * DEFAULT_BATCHES
    clocks = {name: WorkerClock() for name in variants}
    slots = [Slot(name, pipeline_runner, (cfg, name, count, clocks[name])) for name in variants]
    warmup = max(warmup, 1)  # the first turn starts the workers and reads the files into the page cache
    measure_rounds(slots, steps, warmup, isolation="none", seed=cfg.seed, report=progress)
    device = resolve_device(cfg.device)
    results = [result_of(slot, clocks[slot.label], warmup) for slot in slots]
    by_label = {slot.label: slot for slot in slots}
    report = {
        "images_per_second": results[0]["images_per_second"], "variant": results[0]["variant"],
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "cpu": cpu_description(),
        "config": {"dataset": "imagenet", "data_dir": str(cfg.data_dir), "workers": cfg.workers,
                   "batch_size": cfg.batch_size, "images": results[0]["images_per_turn"], "decode": cfg.decode,
                   "steps": steps, "warmup": warmup,
                   "timing": "a turn is one epoch over the images; rounds in a shuffled order; images_per_second: "
                             "images over the median turn; images_per_cpu_second: over the CPU seconds of this "
                             "process and its DataLoader workers; ratios paired per round"},
        "results": results,
    }
    if "idml" in by_label and "official" in by_label:
        report["ratios"] = {"idml / official": round(paired_ratio(by_label["idml"], by_label["official"]), 3)}
    return report

