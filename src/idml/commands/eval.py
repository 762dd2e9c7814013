"""``idml eval``: parse the command line, evaluate (:mod:`idml.evaluation`), print the report.

The network and its settings come from the checkpoint; the data from ``--dataset`` (default: the
one it was trained on, with its ``--classes`` subset) under ``--data_dir``. ``--json`` prints the
schema of docs/uncertainty.md; otherwise a header of lines and one row per uncertainty score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from idml.config import AMP_CHOICES, DEVICE_CHOICES, OneLineParser, setting_rule
from idml.errors import ConfigError, printable
from idml.rules import flag_type, integer

#: The most blends --blends may score (they are made and scored a batch at a time).
MAX_BLENDS = 1_000_000


def parse_args(argv: list[str]):
    p = OneLineParser(prog="idml eval", description="Evaluate a checkpoint: accuracy, calibration and every "
                      "uncertainty score (mistakes, selective prediction, OOD, blends).")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by idml train (e.g. model_best.pth.tar)")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the checkpoint's, with its --classes)")
    p.add_argument("--data_dir", help="folder holding the datasets (default: data; for --dataset folder, the "
                   "checkpoint's own)")
    p.add_argument("--ema", action="store_true",
                   help="evaluate the moving average of the weights of a --model_ema run instead of the weights")
    p.add_argument("-b", "--batch_size", type=flag_type(int, setting_rule("batch_size")), default=256,
                   help="images per forward pass (default: %(default)s)")
    p.add_argument("-j", "--workers", type=flag_type(int, setting_rule("workers")), default=None,
                   help="data-loading processes, ImageNet (default: one per available CPU core, less one)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="auto = CUDA when available, else Apple's MPS, else CPU")
    p.add_argument("--amp", choices=AMP_CHOICES, default=None,
                   help="mixed precision (default: the checkpoint's training setting, as in its validation)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object (docs/uncertainty.md)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the reliability diagram, the risk-coverage curves and the ||u||^2 histograms")
    p.add_argument("--ood", metavar="SPEC",
                   help="out-of-distribution images: the test split of another dataset (cifar100) or of some "
                   "classes of one (digits:5-9); reports AUROC, AUPR and FPR95 of every score")
    p.add_argument("--blends", type=flag_type(int, integer(0, MAX_BLENDS)), default=0, metavar="N",
                   help="also score N blends a*x_i + (1-a)*x_j of test images of two classes (Spearman's rho "
                   "of each score with min(a, 1-a)); default 0 = none")
    p.add_argument("--blend_seed", type=flag_type(int, setting_rule("seed")), default=0, metavar="S",
                   help="seed of the blends (default: %(default)s)")
    p.add_argument("--fit_temperature", action="store_true",
                   help="fit the softmax temperature on the checkpoint's validation split now (needs a run "
                   "trained with --val_split; default: use the temperature saved in the checkpoint)")
    args = p.parse_args(argv)
    if args.blend_seed != 0 and args.blends == 0:
        raise ConfigError(f"--blend_seed {args.blend_seed} does nothing without --blends N (no blends are made)")
    return args


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable result: a header of lines, then one row per score."""
    cal = report["calibration"]
    after = cal["after_scaling"]
    lines = [
        f"checkpoint   {printable(report['checkpoint'])}",
        f"dataset      {report['dataset']} ({report['test_images']} test images, "
        f"{len(report['classes'])} classes; ISM {'on' if report['ism'] else 'off'})",
        f"top-1 error  {report['top1_err']:.2f} %   "
        + (f"top-5 error {report['top5_err']:.2f} %   " if len(report["classes"]) > 5 else "")
        + f"mistakes {report['mistakes']['errors']}",
        f"calibration  NLL {cal['before_scaling']['nll']:.4f}  Brier {cal['before_scaling']['brier']:.4f}  "
        f"ECE {cal['before_scaling']['ece']:.2f} %   (before temperature scaling)",
    ]
    if after is None:
        lines.append(f"             no temperature ({report['temperature_source'] or 'train with --val_split'})")
    else:
        lines.append(f"             NLL {after['nll']:.4f}  Brier {after['brier']:.4f}  ECE {after['ece']:.2f} %   "
                     f"(T = {report['temperature']:.3f}, {report['temperature_source']})")
    rho = report["mechanism"]["spearman_u_norm2_f_norm"]
    if rho is not None:
        lines.append(f"mechanism    Spearman rho of ||u||^2 with ||f|| on the test images: {rho:.3f}")
    lines += ["", *score_rows(report), "",
              "mistake detection: errors positive (AUROC/AUPR higher = better, FPR95 lower); AURC: selective "
              f"prediction risk, lower = better (oracle {report['selective']['oracle_aurc']:.4f})"]
    return "\n".join(lines)


def score_rows(report: dict[str, Any]) -> list[str]:
    head = ["score", "err-AUROC", "err-AUPR", "err-FPR95", "AURC"]
    ood, blends = report["ood"], report["blends"]
    if ood:
        head += ["OOD-AUROC", "OOD-AUPR", "OOD-FPR95"]
    if blends:
        head += ["blend-rho"]
    rows = [head]
    for name in report["scores"]:
        m = report["mistakes"]["by_score"][name]
        row = [name, _num(m["auroc"]), _num(m["aupr"]), _num(m["fpr95"]),
               _num(report["selective"]["by_score"][name]["aurc"], 4)]
        if ood:
            o = ood["by_score"][name]
            row += [_num(o["auroc"]), _num(o["aupr"]), _num(o["fpr95"])]
        if blends:
            row += [_num(blends["by_score"][name]["spearman"])]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    text = ["  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]
    if ood:
        text.append(f"OOD: {ood['images']} images of {ood['spec']} (positives) against the test images")
    if blends:
        text.append(f"blends: {blends['images']} blends (seed {blends['seed']}); rho with min(a, 1 - a)")
    return text


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.plot:
        from idml.figures import require_matplotlib

        require_matplotlib()  # before the evaluation, not after it
    from idml.evaluation import EvalRequest, evaluate

    request = EvalRequest(args.checkpoint, args.dataset, args.data_dir, args.ema, args.batch_size, args.workers,
                          args.device, args.amp, args.ood, args.blends, args.blend_seed, args.fit_temperature,
                          notes=not args.json)
    report, outputs, targets = evaluate(request)
    print(json.dumps(report) if args.json else format_report(report))
    if args.plot:
        from idml.figures import evaluation_plot

        path = evaluation_plot(args.plot, outputs, targets, report,
                               f"{Path(args.checkpoint).name} on {report['dataset']}")
        if not args.json:
            print(f"plot: {path}")
    return 0
