"""Tables and a figure from the JSON files that `experiments/run.py` wrote.

Prints (Markdown) one table of mean +- standard deviation per cell (setting x variant) and one
table of paired differences "with ISM minus without" (same seed: same initial backbone, data
order, augmentation and label noise) with 95% confidence intervals from Student's t.

    python experiments/summarize.py [--results DIR] [--figure FILE.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import RESULTS, SETTINGS, VARIANTS  # noqa: E402

METRICS = {  # key in the JSON -> column title, format
    "top1_err": ("top-1 err %", "{:.2f}"),
    "nll": ("NLL", "{:.3f}"),
    "ece": ("ECE %", "{:.2f}"),
    "auroc_msp": ("AUROC MSP", "{:.3f}"),
    "auroc_uncertainty": ("AUROC ||u||^2", "{:.3f}"),
}
PAIRS = {"Baseline": "ISM-Baseline", "Mixup": "IDML-Mixup", "CutMix": "IDML-CutMix"}


def load(results: Path) -> dict[tuple[str, str], dict[int, dict]]:
    cells: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for path in sorted(results.glob("*/*/seed*.json")):
        record = json.loads(path.read_text())
        cells[(record["setting"], record["variant"])][record["seed"]] = record
    return cells


def values(runs: dict[int, dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in runs.values() if r.get(key) is not None], dtype=float)


def mean_sd(x: np.ndarray, fmt: str) -> str:
    if x.size == 0:
        return "n/a"
    sd = x.std(ddof=1) if x.size > 1 else float("nan")
    return f"{fmt.format(x.mean())} ± {fmt.format(sd)}"


def paired_ci(diffs: np.ndarray) -> tuple[float, float, float]:
    """Mean paired difference and its 95% confidence interval (Student's t, n - 1 dof)."""
    mean = float(diffs.mean())
    if diffs.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, diffs.size - 1) * diffs.std(ddof=1) / np.sqrt(diffs.size))
    return mean, mean - half, mean + half


def cell_table(cells: dict) -> str:
    head = "| setting | variant | n | " + " | ".join(t for t, _ in METRICS.values()) + " |"
    rows = [head, "|" + "---|" * (3 + len(METRICS))]
    for setting in SETTINGS:
        for variant in VARIANTS:
            runs = cells.get((setting, variant), {})
            cols = [mean_sd(values(runs, k), fmt) for k, (_, fmt) in METRICS.items()]
            rows.append(f"| {setting} | {variant} | {len(runs)} | " + " | ".join(cols) + " |")
    return "\n".join(rows)


def pair_table(cells: dict) -> str:
    keys = ["top1_err", "nll", "ece"]
    head = "| setting | ISM minus plain | n | " + " | ".join(f"Δ {METRICS[k][0]} [95% CI]" for k in keys) + " |"
    rows = [head, "|" + "---|" * (3 + len(keys))]
    for setting in SETTINGS:
        for plain, ism in PAIRS.items():
            a, b = cells.get((setting, plain), {}), cells.get((setting, ism), {})
            seeds = sorted(set(a) & set(b))
            cols = []
            for k in keys:
                fmt = METRICS[k][1]
                mean, lo, hi = paired_ci(np.array([b[s][k] - a[s][k] for s in seeds], dtype=float))
                cols.append(f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}]" if seeds else "n/a")
            rows.append(f"| {setting} | {ism} − {plain} | {len(seeds)} | " + " | ".join(cols) + " |")
    return "\n".join(rows)


def figure(cells: dict, path: Path) -> None:
    """Top-1 error of every run, one panel per setting, plain and ISM side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(5.5 * len(SETTINGS), 4), squeeze=False)
    for ax, setting in zip(axes[0], SETTINGS, strict=True):
        for i, (plain, ism) in enumerate(PAIRS.items()):
            for offset, variant, colour in ((-0.17, plain, "tab:gray"), (0.17, ism, "tab:blue")):
                err = values(cells.get((setting, variant), {}), "top1_err")
                if err.size:
                    ax.scatter(np.full(err.size, i + offset), err, color=colour, alpha=0.6, s=18)
                    ax.errorbar(i + offset, err.mean(), yerr=err.std(ddof=1) if err.size > 1 else 0,
                                fmt="_", color="black", markersize=18, capsize=4)
        ax.set_xticks(range(len(PAIRS)), [f"{p}\nvs {q}" for p, q in PAIRS.items()])
        noise = SETTINGS[setting]["label_noise"]
        ax.set_title(f"digits, {noise:.0%} of training labels wrong" if noise else "digits, clean labels")
        ax.set_ylabel("final top-1 error (%)")
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=lbl)
               for c, lbl in (("tab:gray", "without ISM"), ("tab:blue", "with ISM"))]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=Path, help="also draw the top-1 errors to this PNG")
    args = parser.parse_args()
    cells = load(args.results)
    if not cells:
        print(f"no results under {args.results}: run experiments/run.py first", file=sys.stderr)
        return 2
    any_run = next(iter(next(iter(cells.values())).values()))
    print(f"Measured with commit {any_run['commit']} on {any_run['date']}; settings: {any_run['settings']}\n")
    print(cell_table(cells), "\n")
    print(pair_table(cells))
    if args.figure:
        figure(cells, args.figure)
        print(f"\nfigure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
