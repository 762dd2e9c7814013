"""Count the oneDNN kernels (primitives) a training step creates, per variant, all in one process.

A step that finds its kernels in oneDNN's primitive cache creates none; when several variants
share a process and the cache is too small, each step re-creates hundreds of them. Counting
creations does not depend on the machine's load, unlike timings. Run it with oneDNN's verbose
output on, once per capacity:

    ONEDNN_VERBOSE=profile_create ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024 \
      PYTHONPATH=src python benchmarks/onednn_cache.py fp32-eager,default,default-linear
    ONEDNN_VERBOSE=profile_create ONEDNN_PRIMITIVE_CACHE_CAPACITY=8192 \
      PYTHONPATH=src python benchmarks/onednn_cache.py fp32-eager,default,default-linear

Further arguments are ``idml bench`` flags (default: PyramidNet-110, alpha 48, basic, batch 16).
It prints one line per step: which variant ran and how many primitives it created.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile

from idml.bench import step as bench
from idml.commands import bench as bench_command

DEFAULT_FLAGS = ["--net_type", "pyramidnet", "--dataset", "cifar10", "--depth", "110", "--alpha", "48",
                 "--no-bottleneck", "--batch_size", "16", "--beta", "1.0", "--cutmix_prob", "0.5", "--device", "cpu"]


@contextlib.contextmanager
def captured_stdout(path: str):
    """oneDNN prints from C: redirect file descriptor 1 itself, not just ``sys.stdout``."""
    libc = ctypes.CDLL(None)
    libc.fflush(None)
    saved = os.dup(1)
    with open(path, "w") as sink:
        os.dup2(sink.fileno(), 1)
    try:
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def created(run, turn: int) -> int:
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        with captured_stdout(log.name):
            run(turn)
        return sum("cache_miss" in line for line in open(log.name))


def main(argv: list[str]) -> int:
    if "profile_create" not in os.environ.get("ONEDNN_VERBOSE", ""):
        print("onednn_cache.py: set ONEDNN_VERBOSE=profile_create (see the docstring)", file=sys.stderr)
        return 2
    names = argv[0].split(",") if argv else ["fp32-eager", "default", "default-linear"]
    cfg, _ = bench_command.parse_bench_args(argv[1:] or DEFAULT_FLAGS)
    runners = {name: bench.variant_runner(cfg, name) for name in names}
    capacity = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024 (oneDNN's default)")
    print(f"# primitive cache capacity {capacity}; variants {', '.join(names)} in one process")
    for phase, turns in (("warm-up", range(2)), ("round", range(2, 5))):
        for turn in turns:
            for name, runner in runners.items():
                print(f"{phase} {turn}: {name} created {created(runner.run_turn, turn)} primitives", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
