"""How long the ``idml`` command takes to start, beside another checkout of idml.

Each round runs ``python -m idml ARGS`` once with this checkout's ``src`` first on the path and,
with ``--baseline SRC``, once with that checkout's (an older commit in a ``git worktree``), in turn;
the pair's ratio is taken round by round, so a machine whose speed drifts still gives a fair ratio.
Wall-clock time is a monotonic clock around the child; CPU seconds and peak memory are the
kernel's accounting of the finished child (``os.wait4``). On a shared machine the CPU seconds are
the figure to compare: waiting for a core adds to the wall clock, not to them.

    python benchmarks/cli_startup.py --rounds 7 -- --help
    python benchmarks/cli_startup.py --baseline ../old/src --rounds 5 -- train --help
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def run_once(src: str, args: list[str]) -> dict[str, float]:
    """One start of ``python -m idml ARGS`` with ``src`` first on the path: wall, CPU, peak MiB."""
    env = os.environ | {"PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "idml", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024,
            "exit": child.returncode}


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median, min and max of each figure over the rounds."""
    out = {}
    for key in ("wall_s", "cpu_s", "peak_mib"):
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--baseline", help="the src folder of another idml checkout to time beside this one")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the rounds and summaries as JSON")
    parser.add_argument("args", nargs="*", help="the idml arguments, after --")
    opts = parser.parse_args(argv)
    if not 1 <= opts.rounds <= 100:
        parser.error("--rounds must be between 1 and 100")
    sources = {"this": str(SRC)} | ({"baseline": opts.baseline} if opts.baseline else {})
    for src in sources.values():
        run_once(src, opts.args)  # warm-up: the files into the page cache
    rounds = [{name: run_once(src, opts.args) for name, src in sources.items()} for _ in range(opts.rounds)]
    report = {"args": opts.args, "load_average": os.getloadavg(), "rounds": rounds,
              "summary": {name: summary([r[name] for r in rounds]) for name in sources}}
    if opts.baseline:
        report["this_over_baseline_cpu"] = statistics.median(r["this"]["cpu_s"] / r["baseline"]["cpu_s"]
                                                             for r in rounds)
        report["this_over_baseline_wall"] = statistics.median(r["this"]["wall_s"] / r["baseline"]["wall_s"]
                                                              for r in rounds)
    if opts.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"idml {' '.join(opts.args)}: {opts.rounds} rounds, load average {report['load_average'][0]:.2f}")
    for name, figures in report["summary"].items():
        print(f"  {name:9s} wall {figures['wall_s']['median']:.3f} s ({figures['wall_s']['min']:.3f}-"
              f"{figures['wall_s']['max']:.3f})  CPU {figures['cpu_s']['median']:.3f} s  "
              f"peak {figures['peak_mib']['median']:.1f} MiB")
    if opts.baseline:
        print(f"  this / baseline (paired medians): CPU {report['this_over_baseline_cpu']:.3f}, "
              f"wall {report['this_over_baseline_wall']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
