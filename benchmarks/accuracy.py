"""Accuracy is not traded for speed: the digits quick start under each precision, over 5 seeds.

Runs ``idml train --dataset digits --net_type resnet --depth 20 --no-bottleneck --epochs 10
--batch_size 64 --lr 0.1`` (the README's quick start) for seeds 0-4 with ``--amp off`` (fp32),
``--amp auto`` (the default) and ``--amp bf16``, and prints each run's best top-1 test error and
the mean per precision, as one JSON object. Where ``auto`` resolves to the same precision as
another setting (fp32 on CPUs without fast bfloat16), its runs are that setting's, not repeated.

    PYTHONPATH=src python benchmarks/accuracy.py [--seeds 5] [--amp off auto bf16] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time

import torch

from idml.config import parse_train_args
from idml.device.runtime import build_runtime
from idml.training.setup import run_train

QUICK_START = ["--dataset", "digits", "--net_type", "resnet", "--depth", "20", "--no-bottleneck",
               "--epochs", "10", "--batch_size", "64", "--lr", "0.1", "--no-verbose"]


def one_run(amp: str, seed: int, out_dir: str) -> dict:
    cfg = parse_train_args([*QUICK_START, "--amp", amp, "--seed", str(seed), "--output_dir", out_dir,
                            "--expname", f"{amp}-seed{seed}"])
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        best_err1, _ = run_train(cfg)
    run = {"amp": amp, "seed": seed, "top1_error": best_err1, "accuracy": 100.0 - best_err1,
           "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(run), file=sys.stderr, flush=True)  # progress: one line per finished run
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--amp", nargs="+", default=["off", "auto", "bf16"])
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args()
    dtypes = {amp: str(build_runtime("auto", amp, None).amp_dtype or torch.float32) for amp in args.amp}
    distinct: list[str] = []  # the first setting of each precision
    for amp in args.amp:
        if dtypes[amp] not in {dtypes[d] for d in distinct}:
            distinct.append(amp)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one_run(amp, seed, args.out or tmp) for seed in range(args.seeds) for amp in distinct]
    summary = {}
    for amp, dtype in dtypes.items():
        ran_as = next(a for a in distinct if dtypes[a] == dtype)
        accs = [r["accuracy"] for r in runs if r["amp"] == ran_as]
        summary[amp] = {"resolves_to": dtype, "runs_of": ran_as, "mean_accuracy": round(statistics.mean(accs), 3),
                        "accuracies": accs}
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "summary": summary,
                      "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
