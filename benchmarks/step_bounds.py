"""What bounds idml's training step on this machine: the step timed without its BatchNorm layers.

The 2.5x target of issue 13 (idml's default step against the official one on a bfloat16 CPU) asks
how much of the step is left to win. This script times, side by side in shuffled rounds with one
worker process per variant (the same machinery as ``idml bench``):

- ``official``: the official code's own step, when you give your checkout of it (``--official PATH``
  or ``$IDML_OFFICIAL_DIR``; see ``benchmarks/official_step.py``),
- ``default`` and ``bf16-channels_last``: idml's step as ``idml bench`` runs it,
- the same two with every ``BatchNorm2d`` replaced by the identity (``... no-BN``), in their worker
  process only. These are **bounds, not models anyone should train**: they show how fast the step
  would be if BatchNorm cost nothing, i.e. what no change to BatchNorm alone can beat.

Every ratio is paired per round against ``official`` (or, without a checkout, against ``default``).

    PYTHONPATH=src python benchmarks/step_bounds.py --official /path/to/IDML --steps 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch
from official_step import CODE_FOLDERS, ENV, OFFICIAL, add_step_arguments, find_code, official_config, official_runner

from idml.bench import step as bench
from idml.bench.rounds import Runner, Slot, measure_rounds, paired_ratio
from idml.commands import bench as bench_command
from idml.errors import IdmlError

#: idml variants timed as they are and without BatchNorm
VARIANTS = ("default", "bf16-channels_last")
NO_BN = " no-BN"


def _identity(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x


def without_batchnorm_runner(cfg, name: str) -> Runner:
    """``name``'s runner with every BatchNorm2d an identity.

    The class is patched for good, so this must run in a worker process of its own, which is how
    :func:`measure_rounds` runs every slot (``isolation="process"``, as ``main`` asks).
    """
    torch.nn.BatchNorm2d.forward = _identity
    runner = bench.variant_runner(cfg, name)
    return dataclasses.replace(runner, settings=f"{runner.settings}, every BatchNorm2d replaced by the identity "
                                                "(a bound, not a model)")


def slots_for(cfg, code) -> list[Slot]:
    slots = [Slot(OFFICIAL, official_runner, (str(code), cfg))] if code is not None else []
    slots += [Slot(name, bench.variant_runner, (cfg, name)) for name in VARIANTS]
    slots += [Slot(name + NO_BN, without_batchnorm_runner, (cfg, name)) for name in VARIANTS]
    return slots


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_step_arguments(parser)
    args = parser.parse_args(argv)
    cfg = official_config(args)
    code = find_code(args.official)
    if code is None and args.official:
        print(f"step_bounds.py: {args.official} holds no train.py and pyramidnet.py (looked in "
              f"{', '.join(CODE_FOLDERS)}): give the folder of your checkout of the official classification code",
              file=sys.stderr)
        return 2
    if code is None:
        print(f"step_bounds.py: no checkout of the official code given (--official PATH or ${ENV}): "
              "ratios are against idml's default step", file=sys.stderr)
    slots = slots_for(cfg, code)
    threads = torch.get_num_threads()
    try:
        measure_rounds(slots, args.steps, args.warmup, isolation="process", threads=threads, seed=cfg.seed)
    except IdmlError as exc:
        print(f"step_bounds.py: {exc}", file=sys.stderr)
        return 2
    config = bench.config_fields(cfg, args.steps, args.warmup) | {"official_code": str(code) if code else None}
    result = bench.report(slots, config, torch.device(cfg.device), "process", None, threads)
    reference = slots[0]
    result["ratios"] = {f"{s.label} / {reference.label}": round(paired_ratio(s, reference), 3)
                        for s in slots[1:]}
    print(json.dumps(result) if args.json else bench_command.format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
