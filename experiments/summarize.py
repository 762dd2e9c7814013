"""Tables (Markdown) from the JSON files that `experiments/run.py` wrote.

The uncertainty grid (default): every score's mistake detection, selective prediction, blend
correlation (all ten classes) and OOD detection (classes 0-4 against 5-9), mean +- standard
deviation over seeds; calibration before and after temperature scaling; paired differences with
95% confidence intervals (Student's t) for "with ISM minus without" (same seed: same split, data
order and augmentation) and for "score minus 1 - max softmax" on the same runs.

The robustness grid (--grid robustness): the earlier clean / 40% label-noise tables and figure.

    python experiments/summarize.py [--grid uncertainty|robustness] [--results DIR] [--figure FILE.png]
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

from run import GRIDS, SETTINGS, VARIANTS  # noqa: E402

METRICS = {  # key in the JSON -> column title, format
    "top1_err": ("top-1 err %", "{:.2f}"),
    "nll": ("NLL", "{:.3f}"),
    "ece": ("ECE %", "{:.2f}"),
    "auroc_msp": ("AUROC MSP", "{:.3f}"),
    "auroc_uncertainty": ("AUROC ||u||^2", "{:.3f}"),
}
PAIRS = {"Baseline": "ISM-Baseline", "Mixup": "IDML-Mixup", "CutMix": "IDML-CutMix"}
ISM_VARIANTS = ("ISM-Baseline", "IDML-Mixup", "IDML-CutMix")


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

    from idml.files import atomic_write

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
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120))  # never through a planted link


# -- the uncertainty grid ------------------------------------------------------------------------------

#: (title, setting, path into a report's JSON given a score name, format, lower is better)
SCORE_METRICS = [
    ("mistakes: AUROC (errors positive)", "all10", ("mistakes", "by_score", None, "auroc"), "{:.3f}", False),
    ("mistakes: AUPR", "all10", ("mistakes", "by_score", None, "aupr"), "{:.3f}", False),
    ("mistakes: FPR at 95% TPR", "all10", ("mistakes", "by_score", None, "fpr95"), "{:.3f}", True),
    ("selective: AURC", "all10", ("selective", "by_score", None, "aurc"), "{:.4f}", True),
    ("blends: Spearman rho with min(a, 1-a)", "all10", ("blends", "by_score", None, "spearman"), "{:.3f}", False),
    ("OOD 5-9: AUROC", "seen0-4", ("ood", "by_score", None, "auroc"), "{:.3f}", False),
    ("OOD 5-9: AUPR", "seen0-4", ("ood", "by_score", None, "aupr"), "{:.3f}", False),
    ("OOD 5-9: FPR at 95% TPR", "seen0-4", ("ood", "by_score", None, "fpr95"), "{:.3f}", True),
]


def dig(record: dict, path: tuple, score: str | None = None):
    value = record
    for key in path:
        value = value.get(score if key is None else key) if isinstance(value, dict) else None
    return value


def load_grid(results: Path) -> dict[tuple[str, str], dict[int, dict]]:
    cells: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for path in sorted(results.glob("*/*/seed*.json")):
        record = json.loads(path.read_text())
        cells[(record["setting"], record["variant"])][record["seed"]] = record
    return cells


def score_names(cells: dict) -> list[str]:
    names: list[str] = []
    for runs in cells.values():
        for record in runs.values():
            names += [n for n in record["scores"] if n not in names]
    return names


def present(cells: dict) -> list[str]:
    return [v for v in VARIANTS if any(v == variant for _, variant in cells)]


def runs_values(runs: dict[int, dict], path: tuple, score: str | None = None) -> np.ndarray:
    return np.array([v for r in runs.values() if (v := dig(r, path, score)) is not None], dtype=float)


def fmt_ci(mean: float, lo: float, hi: float, fmt: str) -> str:
    return f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}]"


COMPACT = ("mistakes: AUROC (errors positive)", "selective: AURC", "blends: Spearman rho with min(a, 1-a)",
           "OOD 5-9: AUROC")


def every_score_table(cells: dict, only: tuple[str, ...] | None = None) -> str:
    """The one table of every score: each metric pooled over the ISM variants' runs (the models on
    which every score exists), mean +- sd over runs; best per column in bold. ``only``: those metrics."""
    names = score_names(cells)
    metrics = [m for m in SCORE_METRICS if only is None or m[0] in only]
    head = "| score | " + " | ".join(t for t, *_ in metrics) + " |"
    rows = [head, "|" + "---|" * (1 + len(metrics))]
    cols = []
    for _, setting, path, fmt, lower in metrics:
        pooled = {n: np.concatenate([runs_values(cells.get((setting, v), {}), path, n) for v in ISM_VARIANTS])
                  for n in names}
        means = {n: x.mean() for n, x in pooled.items() if x.size}
        best = (min if lower else max)(means, key=means.get) if means else None
        cols.append({n: ("**" + mean_sd(x, fmt) + "**" if n == best else mean_sd(x, fmt)) for n, x in pooled.items()})
    for n in names:
        rows.append(f"| {n} | " + " | ".join(c[n] for c in cols) + " |")
    return "\n".join(rows)


def per_variant_table(cells: dict, title: str, setting: str, path: tuple, fmt: str) -> str:
    variants = present(cells)
    rows = [f"| {title} | " + " | ".join(variants) + " |", "|" + "---|" * (1 + len(variants))]
    for n in score_names(cells):
        rows.append(f"| {n} | " + " | ".join(mean_sd(runs_values(cells.get((setting, v), {}), path, n), fmt)
                                             for v in variants) + " |")
    return "\n".join(rows)


CALIBRATION = [
    ("top-1 err % (test, best-val epoch)", ("top1_err",), "{:.2f}"),
    ("NLL before", ("calibration", "before_scaling", "nll"), "{:.3f}"),
    ("NLL after", ("calibration", "after_scaling", "nll"), "{:.3f}"),
    ("Brier before", ("calibration", "before_scaling", "brier"), "{:.4f}"),
    ("Brier after", ("calibration", "after_scaling", "brier"), "{:.4f}"),
    ("ECE % before", ("calibration", "before_scaling", "ece"), "{:.2f}"),
    ("ECE % after", ("calibration", "after_scaling", "ece"), "{:.2f}"),
    ("temperature (runs with one)", ("temperature",), "{:.2f}"),
    ("rho(||u||^2, ||f||)", ("mechanism", "spearman_u_norm2_f_norm"), "{:.3f}"),
]


def calibration_table(cells: dict) -> str:
    rows = ["| setting | variant | n | " + " | ".join(t for t, *_ in CALIBRATION) + " |",
            "|" + "---|" * (3 + len(CALIBRATION))]
    for setting in ("all10", "seen0-4"):
        for v in present(cells):
            runs = cells.get((setting, v), {})
            cols = [mean_sd(runs_values(runs, p), f) for _, p, f in CALIBRATION]
            cols[-2] += f" ({len(runs_values(runs, ('temperature',)))})"
            rows.append(f"| {setting} | {v} | {len(runs)} | " + " | ".join(cols) + " |")
    return "\n".join(rows)


PAIRED = [
    ("Δ top-1 err %", "all10", ("top1_err",), None, "{:.2f}"),
    ("Δ NLL after T", "all10", ("calibration", "after_scaling", "nll"), None, "{:.3f}"),
    ("Δ ECE % before T", "all10", ("calibration", "before_scaling", "ece"), None, "{:.2f}"),
    ("Δ mistakes AUROC (msp)", "all10", ("mistakes", "by_score", None, "auroc"), "msp", "{:.3f}"),
    ("Δ AURC (msp)", "all10", ("selective", "by_score", None, "aurc"), "msp", "{:.4f}"),
    ("Δ blend rho (msp)", "all10", ("blends", "by_score", None, "spearman"), "msp", "{:.3f}"),
    ("Δ OOD AUROC (msp)", "seen0-4", ("ood", "by_score", None, "auroc"), "msp", "{:.3f}"),
]


def ism_pair_table(cells: dict) -> str:
    rows = ["| ISM minus plain | n | " + " | ".join(t for t, *_ in PAIRED) + " |", "|" + "---|" * (2 + len(PAIRED))]
    for plain, ism in PAIRS.items():
        cols, n = [], 0
        for _, setting, path, score, fmt in PAIRED:
            a, b = cells.get((setting, plain), {}), cells.get((setting, ism), {})
            diffs = [dig(b[s], path, score) - dig(a[s], path, score) for s in sorted(set(a) & set(b))
                     if dig(b[s], path, score) is not None and dig(a[s], path, score) is not None]
            n = max(n, len(diffs))
            cols.append(fmt_ci(*paired_ci(np.array(diffs)), fmt) if diffs else "n/a")
        if n:
            rows.append(f"| {ism} − {plain} | {n} | " + " | ".join(cols) + " |")
    return "\n".join(rows)


def score_vs_msp_table(cells: dict) -> str:
    """Each score minus msp on the very same runs (all variants where the score exists)."""
    metrics = [m for m in SCORE_METRICS if m[0] in ("mistakes: AUROC (errors positive)", "selective: AURC",
                                                     "blends: Spearman rho with min(a, 1-a)", "OOD 5-9: AUROC")]
    rows = ["| score minus msp | " + " | ".join(f"Δ {t} [95% CI] (n)" for t, *_ in metrics) + " |",
            "|" + "---|" * (1 + len(metrics))]
    for n in score_names(cells):
        if n == "msp":
            continue
        cols = []
        for _, setting, path, fmt, _ in metrics:
            diffs = [dig(r, path, n) - dig(r, path, "msp") for (s, _v), runs in cells.items() if s == setting
                     for r in runs.values() if dig(r, path, n) is not None and dig(r, path, "msp") is not None]
            cols.append(f"{fmt_ci(*paired_ci(np.array(diffs)), fmt)} ({len(diffs)})" if diffs else "n/a")
        rows.append(f"| {n} | " + " | ".join(cols) + " |")
    return "\n".join(rows)


def uncertainty_summary(cells: dict) -> None:
    runs = [r for rs in cells.values() for r in rs.values()]
    first = runs[0]
    commits = sorted({r["commit"] for r in runs})
    dates = sorted({r["date"] for r in runs})
    settings = {k: v for k, v in first["settings"].items() if k not in ("seed", "ism", "classes")}
    print(f"{len(runs)} runs; commit(s) {', '.join(commits)}; date(s) {', '.join(dates)}; common settings "
          f"{settings}; evaluated checkpoint: {first['evaluated']}\n")
    print("### Every score (pooled over the ISM variants' runs: " + ", ".join(ISM_VARIANTS) + ")\n")
    print(every_score_table(cells), "\n")
    print("### Each score minus msp, paired on the same runs\n")
    print(score_vs_msp_table(cells), "\n")
    print("### Accuracy, calibration (before / after temperature scaling) and the mechanism probe\n")
    print(calibration_table(cells), "\n")
    print("### ISM minus plain, paired by seed (95% CI)\n")
    print(ism_pair_table(cells), "\n")
    for title, setting, path, fmt, _ in SCORE_METRICS:
        print(f"### {title}, per variant (setting {setting})\n")
        print(per_variant_table(cells, "score", setting, path, fmt), "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--grid", choices=list(GRIDS), default="uncertainty")
    parser.add_argument("--results", type=Path)
    parser.add_argument("--figure", type=Path, help="robustness grid: also draw the top-1 errors to this PNG")
    parser.add_argument("--compact", action="store_true", help="uncertainty grid: only the README's short table")
    args = parser.parse_args()
    results = args.results or GRIDS[args.grid]["results"]
    if args.grid == "uncertainty":
        cells = load_grid(results)
        if not cells:
            print(f"no results under {results}: run experiments/run.py first", file=sys.stderr)
            return 2
        if args.compact:
            print(every_score_table(cells, COMPACT))
        else:
            uncertainty_summary(cells)
        return 0
    cells = load(results)
    if not cells:
        print(f"no results under {results}: run experiments/run.py first", file=sys.stderr)
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
