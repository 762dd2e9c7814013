"""benchmarks/cli_startup.py: it times real starts of the idml command, paired with a baseline."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SRC = BENCHMARKS.parent / "src"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / "cli_startup.py"), *args], capture_output=True,
                          text=True, timeout=300)


def test_it_times_this_checkout_against_a_baseline_round_by_round():
    done = run("--baseline", str(SRC), "--rounds", "2", "--json", "--", "--version")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["args"] == ["--version"] and len(report["rounds"]) == 2
    for pair in report["rounds"]:
        assert pair["this"]["exit"] == 0 and pair["baseline"]["exit"] == 0
        assert pair["this"]["cpu_s"] > 0 and pair["this"]["peak_mib"] > 1
    # the same checkout on both sides: the paired CPU ratio is near 1 (help-sized starts vary by tens of %)
    assert 0.3 < report["this_over_baseline_cpu"] < 3


def test_a_refused_flag_is_timed_with_its_exit_status():
    done = run("--rounds", "1", "--json", "--", "train", "--no-such-flag")
    assert done.returncode == 0, done.stderr
    (pair,) = json.loads(done.stdout)["rounds"]
    assert pair["this"]["exit"] == 2 and "baseline" not in pair


def test_rounds_out_of_range_are_refused():
    done = run("--rounds", "0")
    assert done.returncode == 2 and "--rounds must be between 1 and 100" in done.stderr
