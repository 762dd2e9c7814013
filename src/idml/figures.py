"""The figures of ``idml plot`` and ``idml eval --plot``, drawn with matplotlib's Agg backend.

matplotlib is part of the base install; where it is missing all the same (an install without
dependencies), these functions stop with one line saying how to install it, before any work.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from idml.errors import IdmlError, describe, one_line
from idml.files import atomic_write
from idml.metrics import ReliabilityBins, reliability_bins, risk_coverage, softmax
from idml.training.run_log import best_row

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from idml.inference import Outputs

MISSING_MATPLOTLIB = ("plots need matplotlib, part of idml's base install (not installed here): pip install -e . "
                      "in the idml checkout (or pip install matplotlib)")


def require_matplotlib() -> None:
    """Stop with one line, before any work, when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise IdmlError(MISSING_MATPLOTLIB)


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (works without a display)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_path(path: str | Path, formats: Iterable[str]) -> tuple[Path, str]:
    """Where a figure asked for as ``path`` is written, and in which format: the format its suffix
    names when matplotlib writes it (``.png``, ``.pdf``, ``.svg``, ...), else PNG with ``.png``
    added to the name (so that the name printed is the file written)."""
    path = Path(path)
    if path.name in ("", ".", ".."):  # "", ".", "/", "runs/..": no file name to write to, nor to add .png to
        raise IdmlError(f"cannot write a figure to {describe(str(path))}: it names a folder, not a file; give a "
                        "file name such as curves.png")
    suffix = path.suffix.lower().lstrip(".")
    if suffix in formats:
        return path, suffix
    return path.with_name(path.name + ".png"), "png"


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` (any folders created) and free it; returns the path written (see
    :func:`figure_path`); one-line error if impossible."""
    plt = _pyplot()
    path, fmt = figure_path(path, fig.canvas.get_supported_filetypes())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=120, bbox_inches="tight"))
    except OSError as exc:
        raise IdmlError(f"cannot write the figure to {path}: {one_line(exc)}") from exc
    finally:
        plt.close(fig)
    return path


SCORE = r"$\|u\|^2$"


def _reliability_panel(ax, bins: ReliabilityBins, ece: float) -> None:
    width = np.diff(bins.edges)
    left = bins.edges[:-1]
    filled = bins.counts > 0
    ax.bar(left[filled], bins.accuracy[filled], width[filled], align="edge", color="tab:blue",
           edgecolor="white", label="accuracy")
    gap_low = np.fmin(bins.accuracy, bins.confidence)[filled]
    ax.bar(left[filled], np.abs(bins.confidence - bins.accuracy)[filled], width[filled], bottom=gap_low,
           align="edge", fill=False, hatch="///", edgecolor="tab:red", label="gap to mean confidence")
    for x, w, top, n in zip(left[filled], width[filled], np.fmax(bins.accuracy, bins.confidence)[filled],
                            bins.counts[filled], strict=True):
        ax.text(x + w / 2, top + 0.01, str(n), ha="center", va="bottom", fontsize=7, color="dimgrey")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence (max softmax probability)", ylabel="accuracy",
           title=f"Reliability diagram ({len(left)} bins), ECE = {ece:.2f} %")
    ax.legend(loc="upper left", title="numbers: images per bin", title_fontsize=8)


def _uncertainty_panel(
    ax, scores: np.ndarray | None, wrong: np.ndarray, aurocs: tuple[float | None, float | None]
) -> None:
    ax.set(title=f"Uncertainty score {SCORE} by outcome", xlabel=f"uncertainty score {SCORE}",
           ylabel="share of images in the group")
    if scores is None:
        ax.text(0.5, 0.5, "no uncertainty embedding\n(model trained with --no-ism)", ha="center", va="center",
                transform=ax.transAxes, fontsize=12)
        return
    edges = np.histogram_bin_edges(scores, bins=30)
    for group, name, colour in ((scores[~wrong], "correct", "tab:green"), (scores[wrong], "wrong", "tab:red")):
        if len(group):
            weights = np.full(len(group), 1.0 / len(group))
            ax.hist(group, bins=edges, weights=weights, histtype="stepfilled", alpha=0.45, color=colour,
                    edgecolor=colour, label=f"{name} (n = {len(group)})")
    notes = ["n/a" if a is None else f"{a:.3f}" for a in aurocs]
    ax.legend(loc="best", title=f"AUROC for errors: {SCORE} {notes[0]}, 1 - max prob {notes[1]}", title_fontsize=9)


def _risk_coverage_panel(ax, curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Selective prediction: the error rate among the images each score is surest about."""
    for name, (coverage, risk) in curves.items():
        ax.plot(coverage, 100 * risk, label=f"{name} (AURC {risk.mean():.4f})", lw=1.5,
                ls="-" if name in ("msp", "u_norm2") else "--")
    ax.set(title="Risk-coverage (keep the least uncertain images)", xlabel="coverage (share of images kept)",
           ylabel="error among kept images (%)", xlim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)


def evaluation_figure(
    bins: ReliabilityBins, ece: float, scores: np.ndarray | None, wrong: np.ndarray,
    aurocs: tuple[float | None, float | None], title: str,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Figure:
    """Reliability diagram beside histograms of the uncertainty score for correct and wrong images,
    and (with ``curves``: score name -> (coverage, risk)) the risk-coverage curve of every score.

    ``aurocs``: how well the uncertainty score and 1 - max softmax probability flag the errors.
    """
    plt = _pyplot()
    panels = 3 if curves else 2
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5))
    _reliability_panel(axes[0], bins, ece)
    _uncertainty_panel(axes[1], scores, wrong, aurocs)
    if curves:
        _risk_coverage_panel(axes[2], curves)
    fig.suptitle(title)
    return fig


def _style_legend(fig, names: list[str], colours) -> None:
    """One legend for the whole figure: a colour per run, dashed = train, solid = validation."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours(i % 10), lw=3, label=name) for i, name in enumerate(names)]
    handles += [Line2D([], [], color="black", ls="--", label="train"),
                Line2D([], [], color="black", ls="-", marker="o", markersize=3, label="validation")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)


def training_curves_figure(runs: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Loss and top-1 error per epoch of each run (train dashed, validation solid, one colour per run)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    colours = plt.get_cmap("tab10")
    for i, table in enumerate(runs.values()):
        colour = colours(i % 10)
        for ax, key in ((loss_ax, "loss"), (err_ax, "top1_err")):
            ax.plot(table["epoch"], table[f"train_{key}"], "--", color=colour)
            ax.plot(table["epoch"], table[f"val_{key}"], "-", color=colour, marker="o", markersize=3)
        best, _ = best_row(table)
        at = (table["epoch"][best], table["val_top1_err"][best])
        err_ax.plot(*at, marker="*", markersize=12, color=colour)
        err_ax.annotate(f"{at[1]:.2f}", at, textcoords="offset points", xytext=(0, 8), ha="center", color=colour,
                        fontsize=9, fontweight="bold")
    loss_ax.set(title="Loss (train: training objective; validation: cross-entropy)", xlabel="epoch",
                ylabel="loss (log scale)", yscale="log")
    err_ax.set(title="Top-1 error (star: the best epoch, model_best.pth.tar)", xlabel="epoch",
               ylabel="top-1 error (%)")
    for ax in (loss_ax, err_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _style_legend(fig, list(runs), colours)
    return fig


def evaluation_plot(path: str | Path, outputs: Outputs, targets: np.ndarray, report: dict, title: str) -> Path:
    """``idml eval --plot``: the figure of :func:`evaluation_figure` for an evaluation report."""
    probs = softmax(outputs.logits)
    wrong = probs.argmax(axis=1) != targets
    bins = reliability_bins(probs.max(axis=1), ~wrong)
    curves = {name: risk_coverage(score, wrong) for name, score in outputs.scores().items()}
    by_score = report["mistakes"]["by_score"]
    aurocs = (by_score.get("u_norm2", {}).get("auroc"), by_score["msp"]["auroc"])
    ece = report["calibration"]["before_scaling"]["ece"]
    fig = evaluation_figure(bins, ece, outputs.uncertainty, wrong, aurocs, title, curves)
    return save_figure(fig, path)
