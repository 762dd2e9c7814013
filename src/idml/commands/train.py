"""``idml train``: parse the settings, then train (:func:`idml.training.setup.run_train`), or start
one process per device that each do (:mod:`idml.training.launch`)."""

from __future__ import annotations

import sys

from idml.config import parse_train_args


def main(argv: list[str]) -> int:
    cfg = parse_train_args(argv)  # a bad flag is refused here, before torch is imported
    from idml.training.launch import plan_launch, run_processes

    plan = plan_launch(cfg)
    if plan.processes > 1:  # --devices: one process per device, each this command with its share of the batch
        print(plan.describe(cfg.batch_size), flush=True)
        status, why = run_processes(argv, plan, cfg.stop_signal)
        if why:
            print(f"idml train: {why}", file=sys.stderr)
        return status
    from idml.training.setup import run_train

    run_train(cfg)
    return 0
