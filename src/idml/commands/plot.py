"""``idml plot``: loss and top-1 error curves of one or more runs, side by side, from metrics.csv."""

from __future__ import annotations

from pathlib import Path

from idml.config import OneLineParser
from idml.errors import IdmlError, printable
from idml.training.run_log import best_row, read_run


def parse_args(argv: list[str]):
    p = OneLineParser(prog="idml plot", description="Plot the training curves of runs (their metrics.csv).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by idml train (runs/<expname>)")
    p.add_argument("--out", default="figures/curves.png", metavar="FILE.png",
                   help="image to write (default: %(default)s; folders are created)")
    return p.parse_args(argv)


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's folder name, or its full path where two runs share a name."""
    names = [d.resolve().name for d in run_dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, run_dirs, strict=True)]


def best_line(label: str, table: dict[str, list[float]]) -> str:
    """Which epoch the run's best model is (the star of the figure), as the trainer chose it."""
    row, recorded = best_row(table)
    source = "model_best.pth.tar" if recorded else \
        "the lowest validation error, later epoch on a tie: this metrics.csv predates the best column"
    return (f"{label}: best epoch {int(table['epoch'][row])}, validation top-1 error "
            f"{table['val_top1_err'][row]:.2f} % ({source})")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from idml.figures import require_matplotlib, save_figure, training_curves_figure

    require_matplotlib()  # before any work
    run_dirs = [Path(r) for r in args.runs]
    runs = {label: read_run(d) for label, d in zip(run_labels(run_dirs), run_dirs, strict=True)}
    if len(runs) < len(run_dirs):
        raise IdmlError("the same run folder was given twice")
    for label, table in runs.items():
        print(best_line(printable(label), table))
    print(f"plot: {save_figure(training_curves_figure(runs), args.out)}")
    return 0
