"""The experiments of experiments/RESULTS.md, on the embedded digits data (no download).

Two grids, each a set of (setting, variant, seed) cells; every cell trains one model and writes
one JSON file, so an interrupted sweep continues where it stopped:

* ``uncertainty`` (the default; issue 10): does any uncertainty score work, and does ISM help it?
  Six variants (Baseline, ISM-Baseline, Mixup, IDML-Mixup, CutMix, IDML-CutMix), ResNet-20,
  10 epochs, with a 10% validation split (best epoch and temperature chosen on it), 5 seeds, in
  two settings: ``all10`` (all ten classes: mistakes, selective prediction, calibration, blends)
  and ``seen0-4`` (trained on classes 0-4; the test images of 5-9 are the out-of-distribution set).
  Each cell's JSON is the ``idml eval --json`` report of its best-validation checkpoint plus the
  training record. Files: ``experiments/results/uncertainty/<setting>/<variant>/seed<k>.json``.
* ``robustness``: the earlier six-variant grid (ResNet-8, 6 epochs, clean and 40% label noise,
  official protocol, last epoch evaluated). Files: ``experiments/results/<setting>/<variant>/...``.

    python experiments/run.py                        # the uncertainty grid (see RESULTS.md for its time)
    python experiments/run.py --seeds 1 --epochs 1 --results /tmp/smoke   # a smoke test
    python experiments/summarize.py                  # tables and paired CIs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

# -- the whole experiment, in one visible place ------------------------------------------------------
VARIANTS = {
    "Baseline": {"ism": False},
    "ISM-Baseline": {"ism": True},
    "Mixup": {"ism": False, "mixup_alpha": 1.0, "mixup_prob": 1.0},
    "IDML-Mixup": {"ism": True, "mixup_alpha": 1.0, "mixup_prob": 1.0},
    "CutMix": {"ism": False, "beta": 1.0, "cutmix_prob": 0.5},
    "IDML-CutMix": {"ism": True, "beta": 1.0, "cutmix_prob": 0.5},
}
GRIDS = {
    "uncertainty": {
        "common": {"dataset": "digits", "net_type": "resnet", "depth": 20, "bottleneck": False, "epochs": 10,
                   "batch_size": 64, "lr": 0.1, "verbose": False, "amp": "off", "val_split": 0.1},
        "settings": {"all10": {}, "seen0-4": {"classes": "0-4"}},
        # what idml eval adds per setting: blends on all ten classes, the unseen classes as OOD
        "eval": {"all10": {"blends": 2000, "ood": None}, "seen0-4": {"blends": 0, "ood": "digits:5-9"}},
        "results": HERE / "results" / "uncertainty",
    },
    "robustness": {
        "common": {"dataset": "digits", "net_type": "resnet", "depth": 8, "bottleneck": False, "epochs": 6,
                   "batch_size": 64, "lr": 0.1, "verbose": False, "amp": "off"},
        "settings": {"clean": {"label_noise": 0.0}, "noise40": {"label_noise": 0.4}},
        "eval": {"clean": {"blends": 0, "ood": None}, "noise40": {"blends": 0, "ood": None}},
        "results": HERE / "results",
    },
}
SEEDS = 5
#: every cell's run folder (checkpoints, metrics.csv) is kept in <results>/../checkpoints/<results name>/,
#: so that a cell can be evaluated again without training (--reevaluate); not committed (.gitignore)
CHECKPOINTS = "checkpoints"
COMMON = GRIDS["robustness"]["common"]
SETTINGS = GRIDS["robustness"]["settings"]
RESULTS = GRIDS["robustness"]["results"]


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def evaluate(checkpoint: Path, blends: int, ood: str | None, val_split: float = 0.0) -> dict:
    """``idml eval --json`` of ``checkpoint`` (in this process), with the old grid's flat keys too."""
    from idml.evaluation import EvalRequest, evaluate

    # the temperature is fitted on the validation split here, as training fits it for the saved
    # model (so that --reevaluate applies the current fitting rule to kept checkpoints)
    request = EvalRequest(str(checkpoint), data_dir="unused", workers=0, device="cpu", ood=ood, blends=blends,
                          fit_temperature=bool(val_split), notes=False)
    report, _, _ = evaluate(request)
    by_score = report["mistakes"]["by_score"]
    before = report["calibration"]["before_scaling"]
    flat = {"images": report["test_images"], "top1_err": report["top1_err"], "top5_err": report["top5_err"],
            "nll": before["nll"], "ece": before["ece"],
            "auroc_msp": by_score["msp"]["auroc"], "auroc_uncertainty": by_score.get("u_norm2", {}).get("auroc")}
    return report | flat


def run_one(job: tuple[str, str, str, int, dict, Path, bool]) -> Path:
    """Train one cell of the grid in this (single-threaded) worker and write its JSON (with
    ``reevaluate``: evaluate its kept checkpoint again, training only where there is none)."""
    grid_name, setting, variant, seed, overrides, results, reevaluate = job
    import torch

    from idml.checkpoint.io import load_checkpoint
    from idml.checkpoint.schema import BEST_NAME, CHECKPOINT_NAME
    from idml.config import TrainConfig
    from idml.files import write_text
    from idml.training.setup import run_train

    torch.set_num_threads(1)
    grid = GRIDS[grid_name]
    out = results / setting / variant / f"seed{seed}.json"
    settings = {**grid["common"], **grid["settings"][setting], **VARIANTS[variant], **overrides, "seed": seed}
    run_dir = results.parent / CHECKPOINTS / results.name / setting / variant / f"seed{seed}"
    # the uncertainty grid evaluates the best-validation model; the robustness grid the last epoch
    # (it has no validation split, and choosing the epoch on the test split would flatter it)
    name = BEST_NAME if settings.get("val_split") else CHECKPOINT_NAME
    seconds = None
    if not (reevaluate and (run_dir / name).is_file()):
        cfg = TrainConfig(**settings, expname=run_dir.name, output_dir=str(run_dir.parent))
        start = time.perf_counter()
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            run_train(cfg)
        seconds = round(time.perf_counter() - start, 1)
    elif out.is_file():
        seconds = json.loads(out.read_text()).get("train_seconds")
    ckpt = load_checkpoint(run_dir / name)
    metrics = evaluate(run_dir / name, **grid["eval"][setting], val_split=settings.get("val_split", 0.0))
    metrics["checkpoint"] = str((run_dir / name).relative_to(HERE.parent)) if run_dir.is_relative_to(HERE.parent) \
        else str(run_dir / name)
    record = {"grid": grid_name, "setting": setting, "variant": variant, "seed": seed, "settings": settings,
              **metrics, "evaluated": name, "best_top1_err_during_training": ckpt.best_err1,
              "test_at_best": ckpt.test_at_best, "test_at_last": ckpt.test_at_last,

              "train_seconds": seconds, "commit": commit(), "date": time.strftime("%Y-%m-%d")}
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text(out, json.dumps(record, indent=1))  # atomic, never through a planted link


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--grid", choices=list(GRIDS), default="uncertainty",
                        help="which experiment (default: uncertainty)")
    parser.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds per cell (default {SEEDS})")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (default 2)")
    parser.add_argument("--epochs", type=int, help="override the number of epochs (smoke tests)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="variants to run (default: all six)")
    parser.add_argument("--results", type=Path, help="output folder (default: the grid's folder under results/)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="evaluate the kept checkpoints again (rewrites the JSON files; trains missing cells)")
    args = parser.parse_args()
    results = args.results or GRIDS[args.grid]["results"]
    overrides = {"epochs": args.epochs} if args.epochs else {}
    settings = GRIDS[args.grid]["settings"]
    # seed-major order: an interrupted sweep leaves complete seeds of every cell
    jobs = [(args.grid, s, v, k, overrides, results, args.reevaluate) for k in range(args.seeds) for s in settings
            for v in args.variants if args.reevaluate or not (results / s / v / f"seed{k}.json").exists()]
    print(f"{len(jobs)} runs to do ({args.jobs} at a time); results in {results}", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for done, path in enumerate(pool.map(run_one, jobs), 1):
            minutes = (time.perf_counter() - start) / 60
            print(f"[{done}/{len(jobs)}] {path}  ({minutes:.1f} min)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
