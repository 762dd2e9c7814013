"""``idml bench``: training throughput of idml's settings against each other, on synthetic data.

Parses the command line (every ``idml train`` flag, plus the benchmark's own), runs
:func:`idml.bench.step.run_bench` and prints its report as a table or JSON. How it times, and
why: :mod:`idml.bench.step` and :mod:`idml.bench.rounds`, and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from idml.bench.options import (
    AA_PASSED,
    DATA_ONLY,
    ISOLATIONS,
    MODEL_VARIANTS,
    ROUNDS_CAP,
    STANDARD,
    TIME_CAP,
    RoundPlan,
    chosen_aa,
    chosen_variants,
    pipeline_variants,
)
from idml.config import OneLineParser, TrainConfig, add_train_arguments, config_from_args
from idml.errors import ConfigError
from idml.rules import flag_type, integer, number

#: The most timed (or warm-up) steps per variant: a benchmark, not a training run.
MAX_BENCH_STEPS = 100_000
#: The longest --max_minutes: a week.
MAX_BENCH_MINUTES = 7 * 24 * 60
#: The most training files --input_pipeline times per turn (a folder holding fewer is timed whole).
MAX_BENCH_IMAGES = 1_000_000_000


def parse_bench_args(argv: list[str]) -> tuple[TrainConfig, argparse.Namespace]:
    parser = OneLineParser(prog="idml bench", description=__doc__.splitlines()[0].split(": ", 1)[1])
    add_train_arguments(parser)
    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--steps", type=flag_type(int, integer(1, MAX_BENCH_STEPS)), default=10,
                       help="timed rounds (one step per variant each) at least (default: %(default)s)")
    bench.add_argument("--max_rounds", type=flag_type(int, integer(1, MAX_BENCH_STEPS)), default=40, metavar="N",
                       help="while the A/A check fails, more rounds up to N in all (default: %(default)s)")
    bench.add_argument("--max_minutes", type=flag_type(float, number(above=0, high=MAX_BENCH_MINUTES)), default=None,
                       metavar="M",
                       help="and stop adding rounds once the timed rounds took M minutes (default: no limit)")
    bench.add_argument("--warmup", type=flag_type(int, integer(0, MAX_BENCH_STEPS)), default=2,
                       help="untimed steps per variant first (default: %(default)s)")
    bench.add_argument("--variants", default=None,
                       help=f"comma-separated, from {', '.join([*MODEL_VARIANTS, DATA_ONLY])} "
                            f"(default: {', '.join(STANDARD)}; data-only for 32x32 datasets only)")
    bench.add_argument("--aa", default="auto", metavar="VARIANT",
                       help="run this variant twice and print the A/A check (auto: default; none: skip)")
    bench.add_argument("--isolation", default="process", metavar="{process,none}",
                       help="process: each variant in its own worker process (default); none: all in this "
                            "process (faster to start, but variants can slow each other down)")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    bench.add_argument("--input_pipeline", action="store_true",
                       help="time the ImageNet training input pipeline alone (files to normalised batches on "
                            "--device, -j workers; variants idml,official), no model; see docs/input-pipeline.md")
    bench.add_argument("--images", type=flag_type(int, integer(1, MAX_BENCH_IMAGES)), default=None,
                       help="--input_pipeline: training images per timed turn (default: 8 batches)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.input_pipeline:
        pipeline_variants(args.variants, cfg.dataset)  # a bad choice is refused before any work
        return cfg, args
    if args.isolation not in ISOLATIONS:
        raise ConfigError(f"--isolation {args.isolation}: choose process or none")
    chosen_aa(args.aa, chosen_variants(args.variants, cfg.dataset))  # a bad choice is refused before any work
    return cfg, args


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
    if cfg.get("memory_format"):
        lines.append(f"default's {cfg['memory_format']}")
    if "aa" in result:
        lines.append(aa_line(result["aa"]))
    if "rounds" in result:
        lines.append(rounds_line(result["rounds"], result.get("aa")))
    lines += [f"{pair}: {ratio:.2f} (paired)" for pair, ratio in result["ratios"].items()]
    lines.append(f"peak memory: {cfg['peak_memory']}")
    return "\n".join(lines)


def rounds_line(rounds: dict, aa: dict | None) -> str:
    """How many rounds ran and why: the A/A check passed, or did not within the cap, or no check ran."""
    n = rounds["timed"]
    if rounds["stopped"] == AA_PASSED:
        return f"A/A passed after {n} rounds"
    if rounds["stopped"] in (ROUNDS_CAP, TIME_CAP):
        cap = (f"{rounds['max']} rounds" if rounds["stopped"] == ROUNDS_CAP
               else f"{rounds['max_minutes']:g} minutes ({n} rounds)")
        tolerance = f" at {aa['tolerance']:.0%}" if aa else ""
        return f"A/A did not pass within the cap of {cap}: ratios below are not trustworthy{tolerance}"
    return f"{n} rounds (no A/A check)"


def aa_line(aa: dict) -> str:
    verdict = "PASS" if aa["passed"] else "FAIL"
    return (f"A/A check ({aa['variant']} twice): {aa['ratio']:.3f} "
            f"({aa['images_per_second'][0]:.1f} vs {aa['images_per_second'][1]:.1f} images/s): {verdict} "
            f"(within {aa['tolerance']:.0%} of 1.00 passes)")


def round_plan(args: argparse.Namespace) -> RoundPlan:
    """``--steps`` rounds at least, more while the A/A check fails, up to ``--max_rounds`` / ``--max_minutes``."""
    return RoundPlan(args.steps, args.max_rounds, None if args.max_minutes is None else 60 * args.max_minutes)


def format_pipeline(result: dict) -> str:
    """The --input_pipeline result as a few lines."""
    cpu, cfg = result["cpu"], result["config"]
    lines = [f"idml bench --input_pipeline: {cfg['images']} images per turn, batch {cfg['batch_size']}, "
             f"-j {cfg['workers']}, {result['device']}; CPU {cpu['model']} ({' '.join(cpu['flags'])}); "
             f"load average {result['load_average']}",
             f"{'variant':<10}{'images/s':>10}{'img/CPU-s':>11}{'cores':>7}  settings"]
    for r in result["results"]:
        per_cpu = "-" if r["images_per_cpu_second"] is None else f"{r['images_per_cpu_second']:.1f}"
        lines.append(f"{r['variant']:<10}{r['images_per_second']:>10.1f}{per_cpu:>11}{r['cores_busy']:>7.2f}  "
                     f"{r['settings']}")
    lines += [f"{pair}: {ratio:.2f} (paired)" for pair, ratio in result.get("ratios", {}).items()]
    return "\n".join(lines)


def progress(line: str) -> None:
    """Progress goes to stderr, so that stdout holds the table or the JSON object alone."""
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    cfg, args = parse_bench_args(argv)
    if args.input_pipeline:
        from idml.bench.pipeline import measure_pipeline

        variants = pipeline_variants(args.variants, cfg.dataset)
        result = measure_pipeline(cfg, variants, args.steps, args.warmup, args.images, progress)
        print(json.dumps(result) if args.json else format_pipeline(result))
        return 0
    from idml.training.preflight import preflight

    preflight(cfg, data=False)  # synthetic data; an impossible network or a missing part: one line first
    from idml.bench.step import run_bench

    plan = round_plan(args)
    result = run_bench(cfg, args.variants, args.aa, plan, args.warmup, args.isolation, progress)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
