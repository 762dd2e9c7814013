"""What one step checkpoint (``--save_every_steps``) costs, beside what one training step costs.

For each network: build the run with idml's own code (``build_trainer``, the digits data), train one
step (so that the optimiser holds its momentum buffers, as in a real checkpoint), then alternate
``Trainer.train_step`` and ``Trainer.save_position`` (the loss check, the ranks' RNG states, the
weight check, ``torch.save`` to a temporary file, fsync, rename) ``--rounds`` times and print the
median and range of each, with the checkpoint's size. One process, this machine's disk under
``--output_dir``; a network filesystem on a cluster is slower.

    python benchmarks/checkpoint_cost.py --output_dir /tmp/ckpt-cost
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from idml.config import parse_train_args
from idml.training.setup import build_trainer, run_runtime
from idml.training.trainer import Meter, step_rng

NETWORKS = {
    "resnet20-digits (examples/slurm/cpu-gloo.sbatch)": ["--net_type", "resnet", "--depth", "20", "--no-bottleneck",
                                                         "--batch_size", "32"],
    "pyramidnet200-alpha240 (the paper's CIFAR network)": ["--net_type", "pyramidnet", "--depth", "200",
                                                           "--alpha", "240", "--batch_size", "8"],
}


def measure(flags: list[str], output_dir: Path, rounds: int) -> dict:
    cfg = parse_train_args(["--dataset", "digits", "--device", "cpu", "--amp", "off", "--workers", "0",
                            "--output_dir", str(output_dir), "--expname", "ckpt", *flags])
    rt = run_runtime(cfg)
    trainer = build_trainer(cfg, rt)
    trainer.data.train.set_epoch(0)
    images, targets = next(iter(trainer.data.train))
    meter = Meter(rt.device)
    step_s, save_s = [], []
    for step in range(rounds + 1):
        start = time.perf_counter()
        trainer.train_step(images, targets, step_rng(cfg.seed, 0, step, 0), meter, step)
        step_time = time.perf_counter() - start
        start = time.perf_counter()
        trainer.save_position(0, step + 1, meter)
        save_time = time.perf_counter() - start
        if step:  # the first round warms up (allocations, oneDNN kernels)
            step_s.append(step_time)
            save_s.append(save_time)
    size = (cfg.run_dir / "checkpoint.pth.tar").stat().st_size
    params = sum(p.numel() for p in trainer.model.parameters())
    return {"parameters": params, "checkpoint_mb": round(size / 2**20, 1), "batch_size": cfg.batch_size,
            "step_s_median": round(statistics.median(step_s), 4), "step_s_range": [round(min(step_s), 4),
                                                                                     round(max(step_s), 4)],
            "save_s_median": round(statistics.median(save_s), 4), "save_s_range": [round(min(save_s), 4),
                                                                                     round(max(save_s), 4)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--output_dir", default="/tmp/idml-checkpoint-cost")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    for name, flags in NETWORKS.items():
        result = measure(flags, Path(args.output_dir) / name.split()[0], args.rounds)
        print(json.dumps({"network": name, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
