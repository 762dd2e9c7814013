"""``idml bench``: training throughput of idml's settings against the official code's, on synthetic data.

Every variant trains with the trainer's own step (:meth:`idml.training.trainer.Trainer.train_step`: on-device
augmentation, CutMix/Mixup, forward, loss, backward, SGD) on random images of the dataset's shape.
Each variant runs in a worker process of its own (``--isolation process``, the default) and the
variants take turns, one step each per round in a shuffled order (see
:mod:`idml.commands.bench_rounds` for why: variants sharing a process slowed each other down).
After a few warm-up steps per variant (where ``torch.compile`` compiles: reported separately as
``first_step_seconds``), throughput is the batch size over the median step time; ratios between
variants are paired per round. An A/A check runs one variant twice and prints whether the two
agree within 3%. Peak memory is measured afterwards, one step per variant (see :mod:`idml.training.memory`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from dataclasses import replace

import torch

from idml.commands.bench_rounds import (
    ISOLATIONS,
    Runner,
    Slot,
    aa_check,
    aa_line,
    measure_rounds,
    memory_source,
    paired_ratio,
)
from idml.commands.train import place_model, run_runtime
from idml.config import OneLineParser, TrainConfig, add_train_arguments, config_from_args
from idml.data import IN_MEMORY, DataBundle, DataRequest, imagenet_transforms, in_memory_bundle
from idml.data.catalog import dataset_info
from idml.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from idml.data.loaders import InMemoryLoader
from idml.errors import ConfigError
from idml.training.compiling import CompiledWithFallback, maybe_compile
from idml.training.memory import training_state_bytes
from idml.training.runtime import build_runtime
from idml.training.trainer import Meter, Trainer, step_rng

#: model variants: name -> the settings it trains with, derived from the command line's.
MODEL_VARIANTS: dict[str, Callable[[TrainConfig], TrainConfig]] = {
    "fp32-eager": lambda c: replace(c, amp="off", channels_last=False, compile=False, ism=True),
    "default": lambda c: replace(c, ism=True),
    "default-linear": lambda c: replace(c, ism=False),
    # one change at a time from fp32-eager (opt-in with --variants), to see what each brings
    "channels_last": lambda c: replace(c, amp="off", channels_last=True, compile=False, ism=True),
    "compile": lambda c: replace(c, amp="off", channels_last=False, compile=True, ism=True),
    "bf16": lambda c: replace(c, amp="bf16", channels_last=False, compile=False, ism=True),
    "bf16-channels_last": lambda c: replace(c, amp="bf16", channels_last=True, compile=False, ism=True),
    # one change at a time from bf16 (opt-in): does torch.compile pay on a bfloat16 CPU or GPU?
    "bf16-compile": lambda c: replace(c, amp="bf16", channels_last=False, compile=True, ism=True),
    "bf16-channels_last-compile": lambda c: replace(c, amp="bf16", channels_last=True, compile=True, ism=True),
    "fp16": lambda c: replace(c, amp="fp16", channels_last=False, compile=False, ism=True),
}
DATA_ONLY = "data-only"
STANDARD = ("fp32-eager", "default", "default-linear", DATA_ONLY)
#: batches per timed turn of ``data-only`` (one batch alone is too short to time reliably)
DATA_BATCHES_PER_TURN = 8
POOL_BATCHES = 4


def parse_bench_args(argv: list[str]) -> tuple[TrainConfig, argparse.Namespace]:
    parser = OneLineParser(prog="idml bench", description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--steps", type=int, default=10, help="timed steps per variant (default: %(default)s)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default: %(default)s)")
    bench.add_argument("--variants", default=None,
                       help=f"comma-separated, from {', '.join([*MODEL_VARIANTS, DATA_ONLY])} "
                            f"(default: {', '.join(STANDARD)}; data-only for 32x32 datasets only)")
    bench.add_argument("--aa", default="auto", metavar="VARIANT",
                       help="run this variant twice and print the A/A check (auto: default; none: skip)")
    bench.add_argument("--isolation", default="process", metavar="{process,none}",
                       help="process: each variant in its own worker process (default); none: all in this "
                            "process (faster to start, but variants can slow each other down)")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.steps < 1 or args.warmup < 0:
        raise ConfigError("--steps must be at least 1 and --warmup at least 0")
    if args.isolation not in ISOLATIONS:
        raise ConfigError(f"--isolation {args.isolation}: choose process or none")
    return cfg, args


def chosen_variants(spec: str | None, dataset: str) -> list[str]:
    in_memory = dataset_info(dataset).name in IN_MEMORY
    if spec is None:
        return [v for v in STANDARD if v != DATA_ONLY or in_memory]
    names = [v.strip() for v in spec.split(",") if v.strip()]
    known = [*MODEL_VARIANTS, DATA_ONLY]
    unknown = [v for v in names if v not in known]
    if unknown or not names:
        raise ConfigError(f"unknown --variants {', '.join(unknown) or spec!r}: choose from {', '.join(known)}")
    if DATA_ONLY in names and not in_memory:
        raise ConfigError("the data-only variant needs an in-memory dataset (cifar10, cifar100, digits)")
    return list(dict.fromkeys(names))


def synthetic_data(cfg: TrainConfig, device: torch.device) -> DataBundle:
    """Random images of the dataset's shape, with the dataset's real on-device transforms."""
    info = dataset_info(cfg.dataset)
    n = cfg.batch_size * POOL_BATCHES
    gen = torch.Generator().manual_seed(cfg.seed)
    labels = torch.randint(0, info.num_classes, (n,), generator=gen)
    names = [str(c) for c in range(info.num_classes)]
    size = (n, 3, info.input_size, info.input_size)
    if info.name in IN_MEMORY:
        images = torch.randint(0, 256, size, generator=gen, dtype=torch.uint8)
        req = DataRequest(info.name, "", cfg.batch_size, seed=cfg.seed)
        return in_memory_bundle({"train": (images, labels), "val": (images, labels), "class_names": names},
                                req, device)
    # ImageNet: uint8 crops on the host, as the workers ship them; each step copies its batch to the
    # device and runs the real on-device colour jitter, lighting and normalisation (JPEG decoding
    # and cropping in the workers are not timed: they need real files)
    loader = InMemoryLoader(torch.randint(0, 256, size, generator=gen, dtype=torch.uint8), labels, cfg.batch_size,
                            train=True, seed=cfg.seed)
    colour, normalise = imagenet_transforms(device)
    return DataBundle(loader, loader, names, IMAGENET_MEAN, IMAGENET_STD, info.input_size, colour, normalise)


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


def aa_label(name: str) -> str:
    return f"{name} (A/A)"


def variant_slots(cfg: TrainConfig, names: list[str], aa: str | None) -> list[Slot]:
    """One slot per variant, plus a second copy of ``aa`` for the A/A check (right after the original)."""
    slots = []
    for name in names:
        slots.append(Slot(name, variant_runner, (cfg, name)))
        if name == aa:
            slots.append(Slot(aa_label(name), variant_runner, (cfg, name)))
    return slots


def chosen_aa(spec: str, names: list[str]) -> str | None:
    """The variant the A/A check repeats: ``spec``, or with ``auto`` default (else the first model variant)."""
    if spec == "none":
        return None
    models = [n for n in names if n != DATA_ONLY]
    if spec == "auto":
        return "default" if "default" in models else (models[0] if models else names[0])
    if spec not in names:
        raise ConfigError(f"--aa {spec} is not among the variants run ({', '.join(names)}): "
                          "choose one of them, auto or none")
    return spec


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
          ("bf16-channels_last", "bf16"), ("channels_last", "fp32-eager"), ("bf16-compile", "bf16"),
          ("bf16-channels_last-compile", "bf16"), (DATA_ONLY, "default"))


def report(slots: list[Slot], config: dict, device: torch.device, isolation: str, aa: str | None,
           threads: int) -> dict:
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
    return result


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def format_table(result: dict) -> str:
    cfg = result["config"]
    alpha = f"alpha {cfg['alpha']:g}, " if cfg["net_type"] == "pyramidnet" else ""
    load = ", ".join(f"{x:.2f}" for x in result.get("load_average", []))
    lines = [
        f"idml bench: {cfg['net_type']}-{cfg['depth']} ({alpha}"
        f"{'bottleneck' if cfg['bottleneck'] else 'basic'}), {cfg['dataset']}, batch {cfg['batch_size']}; "
        f"{result['device']}, {result['threads']} threads, torch {result['torch']}; isolation {cfg['isolation']}; "
        f"load average at the end {load}",
        f"{'variant':<20}{'images/s':>10}{'range':>20}{'img/CPU-s':>11}{'peak MB':>9}{'1st step s':>12}  settings",
    ]
    for r in result["results"]:
        low, high = r["images_per_second_range"]
        lines.append(f"{r['variant']:<20}{r['images_per_second']:>10.1f}{f'{low:.1f}-{high:.1f}':>20}"
                     f"{r['images_per_cpu_second']:>11.1f}{r['peak_memory_mb']:>9.0f}"
                     f"{r['first_step_seconds']:>12.2f}  {r['settings']}")
    lines += [f"{pair}: {ratio:.2f} (paired)" for pair, ratio in result["ratios"].items()]
    if "aa" in result:
        lines.append(aa_line(result["aa"]))
    lines.append(f"peak memory: {cfg['peak_memory']}")
    return "\n".join(lines)


def config_fields(cfg: TrainConfig, steps: int, warmup: int) -> dict:
    return {
        "net_type": cfg.net_type, "dataset": cfg.dataset, "depth": cfg.depth, "alpha": cfg.alpha,
        "bottleneck": cfg.bottleneck, "batch_size": cfg.batch_size, "steps": steps,
        "warmup": warmup, "beta": cfg.beta, "cutmix_prob": cfg.cutmix_prob,
        "mixup_alpha": cfg.mixup_alpha, "mixup_prob": cfg.mixup_prob,
    }


def main(argv: list[str]) -> int:
    cfg, args = parse_bench_args(argv)
    names = chosen_variants(args.variants, cfg.dataset)
    aa = chosen_aa(args.aa, names)
    slots = variant_slots(cfg, names, aa)
    config = config_fields(cfg, args.steps, args.warmup)
    threads = torch.get_num_threads()
    measure_rounds(slots, args.steps, args.warmup, isolation=args.isolation, threads=threads, seed=cfg.seed)
    device = build_runtime(cfg.device, "off", False).device
    result = report(slots, config, device, args.isolation, aa, threads)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
