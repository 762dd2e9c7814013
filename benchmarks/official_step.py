"""Time the official code's training step beside idml's, on this machine's CPU (or GPU).

The official classification code is not part of idml: point this script at your own checkout
of it (the folder holding its ``train.py`` and ``pyramidnet.py``, or a clone of the official
repository at a commit that still has ``image_classification/code``):

    PYTHONPATH=src python benchmarks/official_step.py --official /path/to/IDML
    IDML_OFFICIAL_DIR=/path/to/IDML PYTHONPATH=src python benchmarks/official_step.py --json

What is timed for the official code is its own ``train()`` function from its ``train.py``, called
on one batch per turn with its own model (``PyramidNet`` from its ``pyramidnet.py``, wrapped in
``DataParallel`` as its ``main()`` does), loss and optimiser built as its ``main()`` builds them,
and its own argument parser given the official CIFAR IDML-CutMix flags. Its batches are
already augmented and normalised float tensors, i.e. its DataLoader workers are taken as free.
idml's variants run the whole step of ``idml train`` including the on-device augmentation.

The official code is CUDA-only (``.cuda()`` calls, ``torch.cuda.FloatTensor``) and uses
``np.int`` (removed in NumPy 1.24). So that it runs unchanged on a CPU, its worker process (and
only that process) makes ``.cuda()`` return its tensor or module unchanged, makes
``torch.cuda.FloatTensor`` allocate a CPU float tensor and restores ``np.int = int``.

Every variant runs in a worker process of its own and the variants take turns (see
``idml.bench.rounds``); the A/A check (``--aa``, default: official) runs one of them twice.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from idml.bench import options as bench_options
from idml.bench import step as bench
from idml.bench.rounds import Runner, Slot, measure_rounds
from idml.commands import bench as bench_command
from idml.config import TrainConfig
from idml.device.memory import training_state_bytes
from idml.errors import IdmlError

ENV = "IDML_OFFICIAL_DIR"
OFFICIAL = "official"
#: where a checkout keeps train.py and pyramidnet.py, relative to the folder given
CODE_FOLDERS = (".", "code", "image_classification/code")
NO_CHECKOUT = (
    f"official_step.py: no checkout of the official IDML classification code: pass --official PATH or set {ENV} "
    "to the folder holding its train.py and pyramidnet.py (or a clone of the official repository at a "
    "commit with image_classification/code); idml does not ship that code"
)


def find_code(folder: str | None) -> Path | None:
    """The folder of the official ``train.py`` + ``pyramidnet.py`` under ``folder``, or None."""
    if not folder:
        return None
    for sub in CODE_FOLDERS:
        code = Path(folder).expanduser() / sub
        if (code / "train.py").is_file() and (code / "pyramidnet.py").is_file():
            return code.resolve()
    return None


def run_on_cpu() -> None:
    """Let the CUDA-only official code run on the CPU, unchanged (this worker process only)."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.cuda.FloatTensor = lambda *size: torch.empty(*size, dtype=torch.float32)
    if not hasattr(np, "int"):
        np.int = int


def official_flags(cfg: TrainConfig) -> list[str]:
    """The official CIFAR IDML-CutMix command's flags, at this benchmark's model size."""
    flags = ["--net_type", "pyramidnet", "--dataset", cfg.dataset, "--depth", str(cfg.depth),
             "--alpha", f"{cfg.alpha:g}", "--batch_size", str(cfg.batch_size), "--lr", str(cfg.lr),
             "--expname", "bench", "--epochs", str(cfg.epochs), "--beta", f"{cfg.beta:g}",
             "--cutmix_prob", f"{cfg.cutmix_prob:g}", "--no-verbose"]
    return flags if cfg.bottleneck else [*flags, "--no-bottleneck"]


def official_runner(code: str, cfg: TrainConfig) -> Runner:
    """The official ``train()`` on one synthetic batch per turn (built in its worker process)."""
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if not use_cuda:
        run_on_cpu()
    sys.path.insert(0, code)
    with contextlib.redirect_stdout(io.StringIO()):
        import pyramidnet as official_pyramidnet  # the user's checkout
        import train as official_train
    official_train.args = official_train.parser.parse_args(official_flags(cfg))
    args = official_train.args
    classes = 100 if cfg.dataset == "cifar100" else 10
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = official_pyramidnet.PyramidNet(args.dataset, args.depth, args.alpha, classes, args.bottleneck)
    model = torch.nn.DataParallel(model).cuda()
    criterion = torch.nn.CrossEntropyLoss().cuda()
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (bench.POOL_BATCHES, cfg.batch_size, 3, 32, 32)
    images = torch.randn(shape, generator=gen)
    labels = torch.randint(0, classes, shape[:2], generator=gen)

    def run_turn(turn: int) -> None:
        k = turn % bench.POOL_BATCHES
        batch = (images[k].clone(), labels[k])  # the official step writes CutMix into its input
        with contextlib.redirect_stdout(io.StringIO()):  # its end-of-epoch line
            official_train.train([batch], model, criterion, optimizer, 0)

    device = torch.device("cuda" if use_cuda else "cpu")
    settings = f"official train.py step: float32, NCHW, eager, ISM ({code})"
    return Runner(cfg.batch_size, settings, device, run_turn, lambda: training_state_bytes(model, optimizer))


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The official checkout, the model size and the timing flags (shared with step_bounds.py)."""
    parser.add_argument("--official", default=os.environ.get(ENV), metavar="PATH",
                        help=f"your checkout of the official code (default: ${ENV})")
    parser.add_argument("--depth", type=int, default=110)
    parser.add_argument("--alpha", type=float, default=48.0)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--bottleneck", action="store_true", help="bottleneck blocks (default: basic)")
    parser.add_argument("--steps", type=int, default=10, help="timed rounds at least")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                        help="idml's precision (the official step is float32 whatever this says)")
    parser.add_argument("--json", action="store_true")


def official_config(args: argparse.Namespace) -> TrainConfig:
    """The official CIFAR IDML-CutMix command: CutMix beta 1.0 with probability 0.5, lr 0.25, 300 epochs."""
    return TrainConfig(net_type="pyramidnet", dataset="cifar10", depth=args.depth, alpha=args.alpha,
                       bottleneck=args.bottleneck, batch_size=args.batch_size, lr=0.25, epochs=300, beta=1.0,
                       cutmix_prob=0.5, device=args.device, amp=args.amp)


def parse(argv: list[str]) -> tuple[TrainConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_step_arguments(parser)
    parser.add_argument("--variants", default="default",
                        help="idml variants timed beside the official step (default: default)")
    parser.add_argument("--aa", default=OFFICIAL, help="the variant run twice for the A/A check (none: skip)")
    parser.add_argument("--max_rounds", type=int, default=40,
                        help="while the A/A check fails, more rounds up to this many in all")
    parser.add_argument("--max_minutes", type=float, default=None, help="and at most this long")
    args = parser.parse_args(argv)
    return official_config(args), args


def main(argv: list[str]) -> int:
    cfg, args = parse(argv)
    code = find_code(args.official)
    if code is None:
        print(NO_CHECKOUT if not args.official else
              f"official_step.py: {args.official} holds no train.py and pyramidnet.py (looked in "
              f"{', '.join(CODE_FOLDERS)}): give the folder of your checkout of the official classification code",
              file=sys.stderr)
        return 2
    try:
        names = bench_options.chosen_variants(args.variants, cfg.dataset)
        aa = None if args.aa == "none" else args.aa
        if aa is not None and aa not in [OFFICIAL, *names]:
            raise IdmlError(f"--aa {aa} is not among the variants run ({OFFICIAL}, {', '.join(names)})")
        cfg, how = bench.settled_format(cfg, names)
        slots = [Slot(OFFICIAL, official_runner, (str(code), cfg))]
        if aa == OFFICIAL:
            slots.append(Slot(bench.aa_label(OFFICIAL), official_runner, (str(code), cfg)))
        slots += bench.variant_slots(cfg, names, aa)
        threads = torch.get_num_threads()
        plan = bench_command.round_plan(args)
        done = measure_rounds(slots, args.steps, args.warmup, threads=threads, seed=cfg.seed, plan=plan,
                              aa=bench.aa_pair(slots, aa))
    except IdmlError as exc:
        print(f"official_step.py: {exc}", file=sys.stderr)
        return 2
    config = bench.config_fields(cfg, args.steps, args.warmup, how) | {"official_code": str(code)}
    result = bench.report(slots, config, torch.device(cfg.device), "process", aa, threads,
                          bench.rounds_fields(done, plan))
    print(json.dumps(result) if args.json else bench_command.format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
