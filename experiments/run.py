"""Does the introspective metric help at the scale this machine allows?

Runs the paper's six variants (Baseline, ISM-Baseline, Mixup, IDML-Mixup, CutMix, IDML-CutMix) on
the embedded digits data, on clean labels and with symmetric label noise on the training set,
for several seeds, and writes each run's final metrics as one JSON file:

    experiments/results/<setting>/<variant>/seed<k>.json

Finished runs are skipped, so an interrupted sweep continues where it stopped. Every setting of
the sweep is in the constants below. `python experiments/summarize.py` turns the files into tables.

    python experiments/run.py                 # the whole grid (about 40 min on 2 CPU cores)
    python experiments/run.py --seeds 1 --epochs 1   # a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

# -- the whole experiment, in one visible place ------------------------------------------------------
COMMON = {
    "dataset": "digits", "net_type": "resnet", "depth": 8, "bottleneck": False,
    "epochs": 6, "batch_size": 64, "lr": 0.1, "verbose": False, "amp": "off",
}
SETTINGS = {"clean": {"label_noise": 0.0}, "noise40": {"label_noise": 0.4}}
VARIANTS = {
    "Baseline": {"ism": False},
    "ISM-Baseline": {"ism": True},
    "Mixup": {"ism": False, "mixup_alpha": 1.0, "mixup_prob": 1.0},
    "IDML-Mixup": {"ism": True, "mixup_alpha": 1.0, "mixup_prob": 1.0},
    "CutMix": {"ism": False, "beta": 1.0, "cutmix_prob": 0.5},
    "IDML-CutMix": {"ism": True, "beta": 1.0, "cutmix_prob": 0.5},
}
SEEDS = 5
RESULTS = HERE / "results"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def final_metrics(checkpoint: Path) -> dict:
    """Metrics of the last epoch's model on the clean test split (not the best epoch: choosing the
    epoch on the test split would flatter every variant)."""
    import torch

    from idml.commands.eval import predict_validation_set
    from idml.data import DataRequest, build_data
    from idml.inference import load_trained_model
    from idml.metrics import evaluate_predictions

    trained = load_trained_model(checkpoint, torch.device("cpu"))
    data = build_data(DataRequest("digits", "unused", 256), trained.device)
    outputs, targets = predict_validation_set(trained, data)
    return evaluate_predictions(outputs.logits, targets, outputs.uncertainty).to_dict()


def run_one(job: tuple[str, str, int, dict, Path]) -> Path:
    """Train one cell of the grid in this (single-threaded) worker and write its JSON."""
    setting, variant, seed, overrides, results = job
    import torch

    from idml.checkpoint import CHECKPOINT_NAME
    from idml.commands.train import run_train
    from idml.config import TrainConfig

    torch.set_num_threads(1)
    out = results / setting / variant / f"seed{seed}.json"
    settings = {**COMMON, **SETTINGS[setting], **VARIANTS[variant], **overrides, "seed": seed}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(**settings, expname="run", output_dir=tmp)
        start = time.perf_counter()
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            best_err1, _ = run_train(cfg)
        seconds = time.perf_counter() - start
        metrics = final_metrics(Path(tmp) / "run" / CHECKPOINT_NAME)
    record = {"setting": setting, "variant": variant, "seed": seed, "settings": settings,
              **metrics, "best_top1_err_during_training": best_err1, "train_seconds": round(seconds, 1),
              "commit": commit(), "date": time.strftime("%Y-%m-%d")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(record, indent=1))
    tmp_out.replace(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds per cell (default {SEEDS})")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (default 2)")
    parser.add_argument("--epochs", type=int, help="override the number of epochs (smoke tests)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    args = parser.parse_args()
    overrides = {"epochs": args.epochs} if args.epochs else {}
    jobs = [(s, v, k, overrides, args.results) for k in range(args.seeds) for s in SETTINGS for v in VARIANTS
            if not (args.results / s / v / f"seed{k}.json").exists()]
    print(f"{len(jobs)} runs to do ({args.jobs} at a time); results in {args.results}", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for done, path in enumerate(pool.map(run_one, jobs), 1):
            minutes = (time.perf_counter() - start) / 60
            print(f"[{done}/{len(jobs)}] {path}  ({minutes:.1f} min)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
