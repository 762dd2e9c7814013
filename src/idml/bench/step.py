"""Training throughput of idml's settings against each other, on synthetic data (``idml bench``).

Every variant trains with the trainer's own step (:meth:`idml.training.trainer.Trainer.train_step`: on-device
augmentation, CutMix/Mixup, forward, loss, backward, SGD) on random images of the dataset's shape.
Each variant runs in a worker process of its own (``--isolation process``, the default) and the
variants take turns, one step each per round in a shuffled order (see
:mod:`idml.bench.rounds` for why: variants sharing a process slowed each other down).
After a few warm-up steps per variant (where ``torch.compile`` compiles: reported separately as
``first_step_seconds``), throughput is the batch size over the median step time; ratios between
variants are paired per round. An A/A check runs one variant twice and prints whether the two
agree within 3%; while they do not, more rounds run, up to a cap (:class:`idml.bench.rounds.RoundPlan`).
Peak memory is measured afterwards, one step per variant (see :mod:`idml.device.memory`).

On the CPU, ``default`` (and ``default-linear``) take the memory format a training run of the
same settings would take when no flag forces one: timed on this machine, or cached from an
earlier timing (:mod:`idml.training.format_trial`). It is settled once, in this process, before
the workers start, so that both copies of an A/A pair train in the same format.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import replace

import torch

from idml.bench.options import DATA_ONLY, MODEL_VARIANTS, chosen_aa, chosen_variants
from idml.bench.rounds import (
    RoundPlan,
    RoundsDone,
    Runner,
    Slot,
    aa_check,
    measure_rounds,
    memory_source,
    paired_ratio,
)
from idml.config import TrainConfig
from idml.data.build import imagenet_transforms, in_memory_bundle
from idml.data.catalog import dataset_info
from idml.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from idml.data.loaders import InMemoryLoader
from idml.data.types import DataBundle, DataRequest
from idml.device.memory import training_state_bytes
from idml.device.runtime import build_runtime
from idml.training.compiling import CompiledWithFallback, maybe_compile
from idml.training.format_trial import unforced_cpu_format
from idml.training.setup import place_model, run_runtime
from idml.training.trainer import Meter, Trainer, step_rng

#: batches per timed turn of ``data-only`` (one batch alone is too short to time reliably)
DATA_BATCHES_PER_TURN = 8
POOL_BATCHES = 4


def synthetic_data(cfg: TrainConfig, device: torch.device) -> DataBundle:
    """Random images of the dataset's shape, with the dataset's real on-device transforms."""
    info = dataset_info(cfg.dataset)
    n = cfg.batch_size * POOL_BATCHES
    gen = torch.Generator().manual_seed(cfg.seed)
    labels = torch.randint(0, info.num_classes, (n,), generator=gen)
    names = [str(c) for c in range(info.num_classes)]
    size = (n, 3, info.input_size, info.input_size)
    if "in_memory" in info.can:
        images = torch.randint(0, 256, size, generator=gen, dtype=torch.uint8)
        req = DataRequest(info.name, "", cfg.batch_size, seed=cfg.seed)
        return in_memory_bundle({"train": (images, labels), "test": (images, labels), "class_names": names},
                                req, device)
    # ImageNet: uint8 crops on the host, as the workers ship them; each step copies its batch to the
    # device and runs the real on-device colour jitter, lighting and normalisation (JPEG decoding
    # and cropping in the workers are not timed: they need real files)
    loader = InMemoryLoader(torch.randint(0, 256, size, generator=gen, dtype=torch.uint8), labels, cfg.batch_size,
                            train=True, seed=cfg.seed)
    colour, normalise = imagenet_transforms(device)
    return DataBundle(loader, loader, loader, names, IMAGENET_MEAN, IMAGENET_STD, info.input_size, colour, normalise)


def _pinned(t: torch.Tensor) -> torch.Tensor:
    """A host batch in pinned memory where a GPU can copy it asynchronously (as the DataLoader pins)."""
    return t.pin_memory() if t.device.type == "cpu" and torch.cuda.is_available() else t


def _settings(name: str, trainer: Trainer) -> str:
    if name == DATA_ONLY:
        return "augmentation + mixing only, no model"
    ism = "ISM" if trainer.cfg.ism else "linear head"
    net = trainer.net
    compiled = "compiled" if isinstance(net, CompiledWithFallback) and net.is_compiled else "eager"
    return f"{trainer.rt.describe()}, {compiled}, {ism}"


def variant_runner(cfg: TrainConfig, name: str) -> Runner:
    """One variant's trainer on synthetic data, ready to run turns (built in its worker process)."""
    data = synthetic_data(cfg, build_runtime(cfg.device, "off", False).device)
    batches = [(_pinned(images), _pinned(targets)) for images, targets in data.train]
    vcfg = MODEL_VARIANTS[name](cfg) if name in MODEL_VARIANTS else replace(cfg, ism=True)
    rt = run_runtime(vcfg)
    torch.manual_seed(cfg.seed)
    model = place_model(vcfg, rt, replace(vcfg.model_spec, num_classes=data.num_classes))
    trainer = Trainer(vcfg, model, data, rt, net=maybe_compile(model, vcfg.compile), printer=lambda _msg: None)
    trainer.net.train()
    settings = _settings(name, trainer)
    if name == DATA_ONLY:
        def run_data(turn: int) -> None:
            for k in range(DATA_BATCHES_PER_TURN):
                images, targets = batches[(turn + k) % len(batches)]
                trainer.prepare_batch(images, targets, step_rng(cfg.seed, 0, turn * 1000 + k, 0))
        return Runner(cfg.batch_size * DATA_BATCHES_PER_TURN, settings, rt.device, run_data)
    meter = Meter(rt.device)

    def run_step(turn: int) -> None:
        images, targets = (t.to(rt.device, non_blocking=True) for t in batches[turn % len(batches)])
        trainer.train_step(images, targets, step_rng(cfg.seed, 0, turn, 0), meter)

    return Runner(cfg.batch_size, settings, rt.device, run_step,
                  lambda: training_state_bytes(trainer.model, trainer.optimizer))


#: the variants that train with the given settings' memory format (the others fix their own)
GIVEN_FORMAT = ("default", "default-linear")


def settled_format(cfg: TrainConfig, names: list[str]) -> tuple[TrainConfig, str]:
    """``cfg`` with the memory format a CPU training run of it would take when no flag forces one
    (timed or cached, see the module docstring), and the line that says how; ``cfg`` unchanged
    when a flag forces the format, on a GPU, or when no variant uses the given format."""
    if cfg.channels_last is not None or not set(names) & set(GIVEN_FORMAT):
        return cfg, ""
    rt = run_runtime(cfg)
    if rt.device.type != "cpu":
        return cfg, ""
    data = synthetic_data(cfg, rt.device)
    lines: list[str] = []
    spec = replace(cfg.model_spec, num_classes=data.num_classes)
    channels_last = unforced_cpu_format(cfg, rt, data, spec, None, lines.append)
    return replace(cfg, channels_last=channels_last), " ".join(line.removeprefix("=> ") for line in lines)


def aa_label(name: str) -> str:
    return f"{name} (A/A)"


def aa_pair(slots: list[Slot], aa: str | None) -> tuple[int, int] | None:
    """The positions of the A/A check's original and copy in ``slots``, or None."""
    labels = [s.label for s in slots]
    if aa is None or aa_label(aa) not in labels:
        return None
    return labels.index(aa), labels.index(aa_label(aa))


def variant_slots(cfg: TrainConfig, names: list[str], aa: str | None) -> list[Slot]:
    """One slot per variant, plus a second copy of ``aa`` for the A/A check (right after the original)."""
    slots = []
    for name in names:
        slots.append(Slot(name, variant_runner, (cfg, name)))
        if name == aa:
            slots.append(Slot(aa_label(name), variant_runner, (cfg, name)))
    return slots


def slot_result(slot: Slot) -> dict:
    return {
        "variant": slot.label, "images_per_second": round(slot.images_per_second(), 2),
        "peak_memory_mb": round(slot.peak_bytes / 2**20, 1), "settings": slot.settings,
        "first_step_seconds": round(slot.first_step_seconds, 3),
        "images_per_second_range": [round(slot.images_per_second(max(slot.step_seconds)), 2),
                                    round(slot.images_per_second(min(slot.step_seconds)), 2)],
        "images_per_cpu_second": round(slot.images_per_turn / max(statistics.median(slot.cpu_seconds), 1e-9), 2),
        "step_seconds": [round(t, 4) for t in slot.step_seconds],  # per round, in round order
        "cpu_seconds": [round(t, 4) for t in slot.cpu_seconds],
    }


RATIOS = (("default", "fp32-eager"), ("default", "default-linear"), ("default", "official"),
          ("default", "channels_last"), ("default", "bf16"), ("default", "bf16-channels_last"),
          ("bf16-channels_last", "bf16"), ("channels_last", "fp32-eager"), ("bf16-compile", "bf16"),
          ("bf16-channels_last-compile", "bf16"), (DATA_ONLY, "default"))


def rounds_fields(done: RoundsDone, plan: RoundPlan) -> dict:
    """How many rounds ran and why they stopped, for the report (``rounds`` in the JSON)."""
    return {"timed": done.rounds, "stopped": done.stopped, "min": plan.min_rounds, "max": plan.cap,
            "max_minutes": None if plan.max_seconds is None else round(plan.max_seconds / 60, 3),
            "seconds": round(done.seconds, 1)}


def report(slots: list[Slot], config: dict, device: torch.device, isolation: str, aa: str | None,
           threads: int, rounds: dict | None = None) -> dict:
    """The JSON object ``idml bench --json`` prints (benchmarks/official_step.py prints one too)."""
    name = {"cuda": lambda: torch.cuda.get_device_name(device), "mps": lambda: "Apple MPS"}.get(
        device.type, lambda: "cpu")()
    by_label = {s.label: s for s in slots}
    config |= {
        "isolation": isolation,
        "throughput": "images per median step time; " + (
            "each variant in its own worker process, " if isolation == "process" else
            "all variants in one process, ") + "one step per variant per round, in a shuffled order each round "
        "(images_per_cpu_second: per median process CPU time, all threads, less load-sensitive)",
        "ratios": "speed ratios are paired: the median over rounds of the ratio of the two step times of that round",
        "peak_memory": "parameters + gradients + buffers + optimizer state, plus " + memory_source(device),
    }
    copy = by_label.get(aa_label(aa)) if aa else None
    result = {
        "device": f"{device.type}: {name}", "torch": torch.__version__, "threads": threads,
        "load_average": [round(x, 2) for x in load_average()], "config": config,
        "results": [slot_result(s) for s in slots if s is not copy],
        "ratios": {f"{a} / {b}": round(paired_ratio(by_label[a], by_label[b]), 3)
                   for a, b in RATIOS if a in by_label and b in by_label},
    }
    if copy is not None:
        result["aa"] = aa_check(by_label[aa], copy)
    if rounds is not None:
        result["rounds"] = rounds
    return result


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def config_fields(cfg: TrainConfig, steps: int, warmup: int, memory_format: str = "") -> dict:
    """The settings of the run, for the report; ``steps`` is the least number of timed rounds."""
    fields = {
        "net_type": cfg.net_type, "dataset": cfg.dataset, "depth": cfg.depth, "alpha": cfg.alpha,
        "bottleneck": cfg.bottleneck, "batch_size": cfg.batch_size, "steps": steps,
        "warmup": warmup, "beta": cfg.beta, "cutmix_prob": cfg.cutmix_prob,
        "mixup_alpha": cfg.mixup_alpha, "mixup_prob": cfg.mixup_prob,
    }
    return fields | ({"memory_format": memory_format} if memory_format else {})


def run_bench(cfg: TrainConfig, variants: str | None, aa_spec: str, plan: RoundPlan, warmup: int,
              isolation: str, progress: Callable[[str], None] | None = None) -> dict:
    """Time the chosen variants of one training step (see the module docstring): the report that
    ``idml bench --json`` prints. ``progress`` receives a line at each stage and round."""
    run_runtime(cfg)  # settings this machine cannot run (--amp fp16 on a CPU): one line before any worker starts
    names = chosen_variants(variants, cfg.dataset)
    aa = chosen_aa(aa_spec, names)
    cfg, how = settled_format(cfg, names)
    slots = variant_slots(cfg, names, aa)
    threads = torch.get_num_threads()
    done = measure_rounds(slots, plan.min_rounds, warmup, isolation=isolation, threads=threads, seed=cfg.seed,
                          plan=plan, aa=aa_pair(slots, aa), report=progress)
    device = build_runtime(cfg.device, "off", False).device
    return report(slots, config_fields(cfg, plan.min_rounds, warmup, how), device, isolation, aa, threads,
                  rounds_fields(done, plan))
