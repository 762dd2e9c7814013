"""``idml train``: parse the settings, then train (:func:`idml.training.setup.run_train`), or start
one process per device that each do (:mod:`idml.training.launch`)."""

from __future__ import annotations

import sys
from pathlib import Path

from idml.config import CommandLine, parse_train_args
from idml.training.preflight import preflight


def main(argv: list[str]) -> int:
    cfg = parse_train_args(argv)  # a bad flag is refused here, before torch is imported
    preflight(cfg)  # so is what this machine lacks (data, an optional part); run_train checks it again
    from idml.training.launch import plan_launch, run_processes

    plan = plan_launch(cfg)
    if plan.processes > 1:  # --devices: one process per device, each this command with its share of the batch
        print(plan.describe(cfg.batch_size), flush=True)
        status, why = run_processes(argv, plan, cfg.stop_signal)
        if why:
            print(f"idml train: {why}", file=sys.stderr)
        return status
    from idml.training.setup import run_train

    prog = "python train.py" if Path(sys.argv[0]).name == "train.py" else "idml train"
    run_train(cfg, CommandLine(prog, tuple(argv)))
    return 0
