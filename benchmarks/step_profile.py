"""Where one training step's time goes: PyTorch operators, or oneDNN's kernels, for one variant.

    PYTHONPATH=src python benchmarks/step_profile.py default
    PYTHONPATH=src python benchmarks/step_profile.py bf16-channels_last --steps 2
    PYTHONPATH=src python benchmarks/step_profile.py default --onednn

The first argument is an ``idml bench`` variant; further arguments are ``idml bench`` flags, which
override the defaults (PyramidNet-110, alpha 48, basic, CIFAR shape, batch 128, the official
CutMix, CPU).
After two warm-up steps it profiles ``--steps`` steps and prints, per step, the self time of the
operators that take most of it (``torch.profiler``). With ``--onednn`` it instead runs the steps
under oneDNN's verbose mode (``ONEDNN_VERBOSE=1``, set for a child process) and prints the time of
each kind of oneDNN kernel (convolution, reorder, ...) per step: reorders are the copies between
PyTorch's memory layout and the blocked layouts oneDNN computes in.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from onednn_cache import captured_stdout  # same folder

from idml.bench import options as bench_options
from idml.bench import step as bench
from idml.commands import bench as bench_command

DEFAULT_FLAGS = ["--net_type", "pyramidnet", "--dataset", "cifar10", "--depth", "110", "--alpha", "48",
                 "--no-bottleneck", "--batch_size", "128", "--beta", "1.0", "--cutmix_prob", "0.5", "--device", "cpu"]
WARMUP = 2
CHILD = "_STEP_PROFILE_CHILD"


def onednn_times(lines: list[str], steps: int) -> dict[str, tuple[float, float]]:
    """Kernel kind -> (calls, milliseconds) per step, from oneDNN's verbose ``exec`` lines."""
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for line in lines:
        fields = line.strip().split(",")
        if len(fields) > 6 and fields[0] == "onednn_verbose" and "exec" in fields:
            kind = fields[fields.index("exec") + 2]
            totals[kind][0] += 1
            totals[kind][1] += float(fields[-1])
    return {kind: (n / steps, ms / steps) for kind, (n, ms) in totals.items()}


def profile_operators(run, steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for turn in range(WARMUP, WARMUP + steps):
            run(turn)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) / steps / 1e3
    print(f"{'operator':<48}{'ms/step':>10}{'share':>8}{'calls/step':>12}")
    for e in rows[:15]:
        ms = e.self_cpu_time_total / steps / 1e3
        print(f"{e.key[:47]:<48}{ms:>10.1f}{ms / total:>8.1%}{e.count / steps:>12.0f}")
    print(f"{'all operators (self time)':<48}{total:>10.1f}")


def profile_onednn(run, steps: int) -> None:
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        with captured_stdout(log.name):
            for turn in range(WARMUP, WARMUP + steps):
                run(turn)
        lines = Path(log.name).read_text().splitlines()
    times = onednn_times(lines, steps)
    print(f"{'oneDNN kernel':<24}{'ms/step':>10}{'calls/step':>12}  (ONEDNN_VERBOSE=1 adds its own overhead)")
    for kind, (calls, ms) in sorted(times.items(), key=lambda kv: -kv[1][1]):
        print(f"{kind:<24}{ms:>10.1f}{calls:>12.0f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("variant", choices=list(bench_options.MODEL_VARIANTS))
    parser.add_argument("--steps", type=int, default=2, help="steps profiled (default: %(default)s)")
    parser.add_argument("--onednn", action="store_true", help="oneDNN kernel times instead of operators")
    args, flags = parser.parse_known_args(argv)
    if args.onednn and os.environ.get(CHILD) != "1":
        # oneDNN reads ONEDNN_VERBOSE once, when it loads: set it for a fresh process
        env = dict(os.environ, ONEDNN_VERBOSE="1", **{CHILD: "1"})
        return subprocess.call([sys.executable, __file__, *argv], env=env)
    cfg, _ = bench_command.parse_bench_args(DEFAULT_FLAGS + flags)  # the flags given override the defaults
    with captured_stdout(os.devnull) if args.onednn else contextlib.nullcontext():  # no warm-up kernels
        runner = bench.variant_runner(cfg, args.variant)
        for turn in range(WARMUP):
            runner.run_turn(turn)
    print(f"# {args.variant}: {runner.settings}; {args.steps} steps after {WARMUP} warm-up steps")
    (profile_onednn if args.onednn else profile_operators)(runner.run_turn, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
