"""``idml bench``: training throughput of idml's settings against the official code's, on synthetic data.

Every variant trains with the trainer's own step (:meth:`idml.training.trainer.Trainer.train_step`: on-device
augmentation, CutMix/Mixup, forward, loss, backward, SGD) on random images of the dataset's shape.
After a few warm-up steps per variant (where ``torch.compile`` compiles: reported separately as
``first_step_seconds``) the variants take turns, one step each per round with the starting variant
rotating, so that load from other processes and clock changes hit all of them alike. Throughput is
the batch size over the median step time. Peak memory is measured afterwards, one step per variant
(see :mod:`idml.training.memory`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from idml.commands.train import place_model
from idml.config import OneLineParser, TrainConfig, add_train_arguments, config_from_args
from idml.data import IN_MEMORY, DataBundle, DataRequest, imagenet_transforms, in_memory_bundle
from idml.data.catalog import dataset_info
from idml.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from idml.data.loaders import InMemoryLoader
from idml.errors import ConfigError
from idml.training.compiling import CompiledWithFallback, maybe_compile
from idml.training.memory import PeakMemory, training_state_bytes
from idml.training.runtime import build_runtime, synchronize
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
    "fp16": lambda c: replace(c, amp="fp16", channels_last=False, compile=False, ism=True),
}
DATA_ONLY = "data-only"
STANDARD = ("fp32-eager", "default", "default-linear", DATA_ONLY)
#: batches per timed turn of ``data-only`` (one batch alone is too short to time reliably)
DATA_BATCHES_PER_TURN = 8
POOL_BATCHES = 4


@dataclass
class Variant:
    name: str
    trainer: Trainer
    images_per_turn: int
    run_turn: Callable[[int], None]
    first_step_seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0

    @property
    def settings(self) -> str:
        if self.name == DATA_ONLY:
            return "augmentation + mixing only, no model"
        ism = "ISM" if self.trainer.cfg.ism else "linear head"
        net = self.trainer.net
        compiled = "compiled" if isinstance(net, CompiledWithFallback) and net.is_compiled else "eager"
        return f"{self.trainer.rt.describe()}, {compiled}, {ism}"


def parse_bench_args(argv: list[str]) -> tuple[TrainConfig, argparse.Namespace]:
    parser = OneLineParser(prog="idml bench", description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--steps", type=int, default=10, help="timed steps per variant (default: 10)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default: 2)")
    bench.add_argument("--variants", default=None,
                       help=f"comma-separated, from {', '.join([*MODEL_VARIANTS, DATA_ONLY])} "
                            f"(default: {', '.join(STANDARD)}; data-only for 32x32 datasets only)")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.steps < 1 or args.warmup < 0:
        raise ConfigError("--steps must be at least 1 and --warmup at least 0")
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


def build_variants(cfg: TrainConfig, names: list[str], data: DataBundle) -> list[Variant]:
    batches = [(_pinned(images), _pinned(targets)) for images, targets in data.train]
    variants: list[Variant] = []
    for name in names:
        vcfg = MODEL_VARIANTS[name](cfg) if name in MODEL_VARIANTS else replace(cfg, ism=True)
        rt = build_runtime(vcfg.device, vcfg.amp, vcfg.channels_last, vcfg.deterministic)
        torch.manual_seed(cfg.seed)
        model = place_model(vcfg, rt, replace(vcfg.model_spec, num_classes=data.num_classes))
        trainer = Trainer(vcfg, model, data, rt, net=maybe_compile(model, vcfg.compile), printer=lambda _msg: None)
        trainer.net.train()
        meter = Meter(rt.device)
        if name == DATA_ONLY:
            def run_turn(turn: int, trainer: Trainer = trainer) -> None:
                for k in range(DATA_BATCHES_PER_TURN):
                    images, targets = batches[(turn + k) % len(batches)]
                    trainer.prepare_batch(images, targets, step_rng(cfg.seed, 0, turn * 1000 + k, 0))
            variants.append(Variant(name, trainer, cfg.batch_size * DATA_BATCHES_PER_TURN, run_turn))
            continue

        def run_turn(turn: int, trainer: Trainer = trainer, meter: Meter = meter) -> None:
            images, targets = (t.to(trainer.rt.device, non_blocking=True) for t in batches[turn % len(batches)])
            trainer.train_step(images, targets, step_rng(cfg.seed, 0, turn, 0), meter)
        variants.append(Variant(name, trainer, cfg.batch_size, run_turn))
    return variants


def _timed(variant: Variant, turn: int) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one turn."""
    device = variant.trainer.rt.device
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    variant.run_turn(turn)
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def measure(variants: list[Variant], steps: int, warmup: int, memory: PeakMemory) -> None:
    """Warm up each variant, time them in rotating round-robin order, then measure peak memory."""
    for v in variants:
        v.first_step_seconds = _timed(v, 0)[0]
        for turn in range(1, warmup):
            _timed(v, turn)
    for turn in range(steps):
        shift = turn % len(variants)
        for v in variants[shift:] + variants[:shift]:
            wall, cpu = _timed(v, warmup + turn)
            v.step_seconds.append(wall)
            v.cpu_seconds.append(cpu)
    for v in variants:
        memory.start()
        v.run_turn(warmup + steps)
        step_peak = memory.stop()
        resident = 0 if v.name == DATA_ONLY else training_state_bytes(v.trainer.model, v.trainer.optimizer)
        v.peak_bytes = resident + step_peak


def images_per_second(v: Variant, seconds: float | None = None) -> float:
    return v.images_per_turn / (statistics.median(v.step_seconds) if seconds is None else seconds)


def report(cfg: TrainConfig, args: argparse.Namespace, variants: list[Variant], memory: PeakMemory) -> dict:
    device = variants[0].trainer.rt.device
    name = {"cuda": lambda: torch.cuda.get_device_name(device), "mps": lambda: "Apple MPS"}.get(
        device.type, lambda: "cpu")()
    config = {
        "net_type": cfg.net_type, "dataset": cfg.dataset, "depth": cfg.depth, "alpha": cfg.alpha,
        "bottleneck": cfg.bottleneck, "batch_size": cfg.batch_size, "steps": args.steps,
        "warmup": args.warmup, "beta": cfg.beta, "cutmix_prob": cfg.cutmix_prob,
        "mixup_alpha": cfg.mixup_alpha, "mixup_prob": cfg.mixup_prob,
        "throughput": "images per median step time; variants interleaved round-robin "
                      "(images_per_cpu_second: per median process CPU time, all threads, less load-sensitive)",
        "peak_memory": "parameters + gradients + buffers + optimizer state, plus " + memory.source,
    }
    results = [
        {
            "variant": v.name, "images_per_second": round(images_per_second(v), 2),
            "peak_memory_mb": round(v.peak_bytes / 2**20, 1), "settings": v.settings,
            "first_step_seconds": round(v.first_step_seconds, 3),
            "images_per_second_range": [round(images_per_second(v, max(v.step_seconds)), 2),
                                        round(images_per_second(v, min(v.step_seconds)), 2)],
            "images_per_cpu_second": round(v.images_per_turn / max(statistics.median(v.cpu_seconds), 1e-9), 2),
        }
        for v in variants
    ]
    return {"device": f"{device.type}: {name}", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "config": config, "results": results}


RATIOS = (("default", "fp32-eager"), ("default", "default-linear"), (DATA_ONLY, "default"))


def format_table(result: dict) -> str:
    cfg = result["config"]
    alpha = f"alpha {cfg['alpha']:g}, " if cfg["net_type"] == "pyramidnet" else ""
    lines = [
        f"idml bench: {cfg['net_type']}-{cfg['depth']} ({alpha}"
        f"{'bottleneck' if cfg['bottleneck'] else 'basic'}), {cfg['dataset']}, batch {cfg['batch_size']}; "
        f"{result['device']}, {result['threads']} threads, torch {result['torch']}",
        f"{'variant':<16}{'images/s':>10}{'range':>20}{'img/CPU-s':>11}{'peak MB':>9}{'1st step s':>12}  settings",
    ]
    for r in result["results"]:
        low, high = r["images_per_second_range"]
        lines.append(f"{r['variant']:<16}{r['images_per_second']:>10.1f}{f'{low:.1f}-{high:.1f}':>20}"
                     f"{r['images_per_cpu_second']:>11.1f}{r['peak_memory_mb']:>9.0f}"
                     f"{r['first_step_seconds']:>12.2f}  {r['settings']}")
    speed = {r["variant"]: r["images_per_second"] for r in result["results"]}
    lines += [f"{a} / {b}: {speed[a] / speed[b]:.2f}" for a, b in RATIOS if a in speed and b in speed]
    lines.append(f"peak memory: {cfg['peak_memory']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    cfg, args = parse_bench_args(argv)
    names = chosen_variants(args.variants, cfg.dataset)
    device = build_runtime(cfg.device, "off", False).device
    variants = build_variants(cfg, names, synthetic_data(cfg, device))
    memory = PeakMemory(device)
    measure(variants, args.steps, args.warmup, memory)
    result = report(cfg, args, variants, memory)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
