"""Timing several variants of a step fairly: each in its own process, taking turns in rounds.

Why processes: variants that share a process share state that makes one slow another down. The
one measured is oneDNN's primitive cache (1024 entries by default): a PyramidNet-110 training
step needs about 640 convolution and reorder primitives per precision, so a float32 and a
bfloat16 variant in one process evict each other's, and every step then re-creates ~640 of
them (counted with ``ONEDNN_VERBOSE=profile_create``). Raising the capacity removes that (see
:func:`idml.device.runtime.build_runtime`), but allocator state, cached weight casts and
thread pools are shared too; a process per variant shares none of it, so no variant's result
depends on which others run.

How the turns go: a worker process holds one variant (model, optimiser, data) and runs one turn
when the parent asks; only one worker runs at a time. Each round visits every variant once, in a
freshly shuffled order (seeded), so that none always follows the same other one and load from
other processes hits all alike. Ratios between variants are the median over rounds of the
per-round ratio of their turn times (paired: both turns of a pair ran a few seconds apart, under
nearly the same load), which is far less load-sensitive than a ratio of two medians.

An A/A check runs one variant twice (two processes, same settings): its paired ratio should be
1.00; within :data:`AA_TOLERANCE` it passes. It is the benchmark's own error bar.

How many rounds (:class:`RoundPlan`): at least ``--steps``; then, while the A/A check fails, more
rounds until it passes or a cap (``--max_rounds``, ``--max_minutes``) is reached. A noisy machine
thus gets the rounds it needs, and the report says whether the check passed and after how many
rounds, or that it did not pass within the cap (then no ratio of the run is trustworthy at the
tolerance). Without an A/A check the run has exactly ``--steps`` rounds.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from idml.bench.options import ISOLATIONS, RoundPlan
from idml.device.memory import PeakMemory
from idml.device.runtime import synchronize
from idml.errors import IdmlError, describe, one_line

#: the A/A check passes when the paired ratio of a variant against itself is within 3% of 1.00
AA_TOLERANCE = 0.03


@dataclass
class Runner:
    """One variant, built where it runs: ``run_turn(turn)`` runs one turn of its work."""

    images_per_turn: int
    settings: str
    device: torch.device
    run_turn: Callable[[int], None]
    resident_bytes: Callable[[], int] = lambda: 0


#: builds a Runner; for a worker process it must be picklable (a module-level function)
RunnerFactory = Callable[..., Runner]


@dataclass
class Slot:
    """A variant to time: its label, how to build its runner, and what was measured."""

    label: str
    factory: RunnerFactory
    args: tuple = ()
    settings: str = ""
    images_per_turn: int = 0
    first_step_seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0

    def images_per_second(self, seconds: float | None = None) -> float:
        return self.images_per_turn / (statistics.median(self.step_seconds) if seconds is None else seconds)


def timed_turn(runner: Runner, turn: int) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one turn (the device is synchronised around it)."""
    synchronize(runner.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    runner.run_turn(turn)
    synchronize(runner.device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def peak_of_turn(runner: Runner, turn: int) -> int:
    """Resident training state plus the peak memory of one more turn (see :mod:`idml.device.memory`)."""
    memory = PeakMemory(runner.device)
    memory.start()
    runner.run_turn(turn)
    return runner.resident_bytes() + memory.stop()


def memory_source(device: torch.device) -> str:
    return PeakMemory(device).source


class _Local:
    """A runner in this process (``--isolation none``)."""

    def __init__(self, slot: Slot, threads: int) -> None:
        self.runner = slot.factory(*slot.args)

    def ask(self, command: str, turn: int = 0) -> Any:
        if command == "info":
            return self.runner.images_per_turn, self.runner.settings, str(self.runner.device)
        if command == "turn":
            return timed_turn(self.runner, turn)
        return peak_of_turn(self.runner, turn)

    def close(self) -> None:
        del self.runner


def _serve(conn, factory: RunnerFactory, args: tuple, threads: int) -> None:
    """A worker process: build the runner, then answer the parent's commands until it closes."""
    try:
        torch.set_num_threads(threads)
        runner = factory(*args)
        conn.send(("ok", (runner.images_per_turn, runner.settings, str(runner.device))))
        while True:
            command, turn = conn.recv()
            if command == "close":
                return
            result = timed_turn(runner, turn) if command == "turn" else peak_of_turn(runner, turn)
            conn.send(("ok", result))
    except (EOFError, KeyboardInterrupt):
        return
    except Exception as exc:  # reported by the parent as one line
        conn.send(("error", f"{type(exc).__name__}: {one_line(exc)}\n{traceback.format_exc()}"))


class _Worker:
    """A runner in its own process (spawned: nothing inherited from the parent but the arguments)."""

    def __init__(self, slot: Slot, threads: int) -> None:
        self.label = slot.label
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, slot.factory, slot.args, threads), daemon=True)
        self.process.start()
        child.close()
        self.info = None

    def _answer(self) -> Any:
        try:
            status, value = self.conn.recv()
        except EOFError as exc:
            raise IdmlError(f"the worker process of variant {self.label} ended unexpectedly (exit code "
                            f"{self.process.exitcode}; out of memory?): try fewer variants or a smaller "
                            "--batch_size") from exc
        if status == "error":
            first, _, detail = value.partition("\n")
            raise IdmlError(f"variant {self.label} failed in its worker process: {first}") from RuntimeError(detail)
        return value

    def ask(self, command: str, turn: int = 0) -> Any:
        if command == "info":
            if self.info is None:
                self.info = self._answer()
            return self.info
        self.conn.send((command, turn))
        return self._answer()

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self.conn.send(("close", 0))
            self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.conn.close()


def order_stream(n: int, seed: int) -> Iterator[list[int]]:
    """Shuffled visiting orders, one per round, for as many rounds as are asked (seeded)."""
    rng = np.random.default_rng([seed, n])
    while True:
        yield [int(i) for i in rng.permutation(n)]


def round_orders(n: int, rounds: int, seed: int) -> list[list[int]]:
    """The first ``rounds`` orders of :func:`order_stream`."""
    return list(itertools.islice(order_stream(n, seed), rounds))


@dataclass
class RoundsDone:
    """What :func:`measure_rounds` ran: timed rounds, why it stopped, and their wall-clock seconds."""

    rounds: int
    stopped: str
    seconds: float


def clock(seconds: float) -> str:
    """A duration as people read it: 42 s, 3 min 05 s, 1 h 02 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Where a benchmark stands, for people waiting on it: one line per stage and per round
    (variant or round, steps, elapsed time, an estimate of the rest), through ``report``."""

    def __init__(self, report: Callable[[str], None] | None, rounds: int, cap: int | None = None) -> None:
        self.report = report
        self.rounds = rounds
        self.cap = rounds if cap is None else cap
        self.start = time.perf_counter()
        self.round_seconds: list[float] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, text: str) -> None:
        if self.report is not None:
            self.report(f"idml bench [{clock(self.elapsed())}]: {text}")

    def estimate(self, round_seconds: float, rounds_left: int) -> str:
        """The rest of the run: ``rounds_left`` rounds and the memory measurement (about one more)."""
        left = round_seconds * (rounds_left + 1)
        return f"about {clock(left)} left, {clock(self.elapsed() + left)} in all"

    def warmed(self, slots: list[Slot], last_turns: list[float]) -> None:
        self.say(f"warm-up done ({', '.join(f'{s.label} {s.first_step_seconds:.1f} s' for s in slots)} for the "
                 f"first step); {self.rounds} timed rounds of one step per variant next, "
                 f"{self.estimate(sum(last_turns), self.rounds)}")

    def round_done(self, turn: int, seconds: float) -> None:
        self.round_seconds.append(seconds)
        if turn < self.rounds:
            mean = sum(self.round_seconds) / len(self.round_seconds)
            rest = self.estimate(mean, self.rounds - turn - 1)
            self.say(f"round {turn + 1}/{self.rounds} done ({seconds:.1f} s), {rest}")
        else:  # past the planned rounds: the A/A check has not passed yet
            self.say(f"round {turn + 1} done ({seconds:.1f} s), an extra one because the A/A check has not passed "
                     f"yet (at most {self.cap} rounds)")


def measure_rounds(slots: list[Slot], steps: int, warmup: int, *, isolation: str = "process",
                   threads: int | None = None, seed: int = 0, plan: RoundPlan | None = None,
                   aa: tuple[int, int] | None = None, clock: Callable[[], float] = time.monotonic,
                   report: Callable[[str], None] | None = None) -> RoundsDone:
    """Warm every slot up, time rounds in shuffled order as ``plan`` says (default: exactly
    ``steps``), then measure peak memory.

    ``aa`` = the indices of the A/A pair in ``slots`` (original, copy), whose check decides
    whether more rounds are needed. With ``isolation="process"`` each slot runs in a worker
    process of its own, else all in this one. ``report`` receives a line at each stage and after
    each round (:class:`Progress`).
    """
    if isolation not in ISOLATIONS:
        raise IdmlError(f"unknown isolation {describe(isolation)}: choose from {', '.join(ISOLATIONS)}")
    plan = RoundPlan(steps) if plan is None else plan
    threads = torch.get_num_threads() if threads is None else threads
    kind = _Worker if isolation == "process" else _Local
    progress = Progress(report, plan.min_rounds, plan.cap)
    hosts: list[_Worker | _Local] = []
    try:
        where = "a worker process each" if isolation == "process" else "in this process"
        progress.say(f"building {len(slots)} variants ({', '.join(s.label for s in slots)}), {where}")
        for slot in slots:  # workers build their models concurrently; local runners one by one
            hosts.append(kind(slot, threads))
        for slot, host in zip(slots, hosts, strict=True):
            slot.images_per_turn, slot.settings, _ = host.ask("info")
        last_turns = []
        for i, (slot, host) in enumerate(zip(slots, hosts, strict=True)):
            progress.say(f"warming up {slot.label} ({i + 1}/{len(slots)}): {warmup} untimed step(s)")
            slot.first_step_seconds = last = host.ask("turn", 0)[0]
            for turn in range(1, warmup):
                last = host.ask("turn", turn)[0]
            last_turns.append(last)
        progress.warmed(slots, last_turns)
        done = _timed_rounds(slots, hosts, warmup, seed, plan, aa, clock, progress)
        progress.say("measuring peak memory (one more step per variant)")
        for slot, host in zip(slots, hosts, strict=True):
            slot.peak_bytes = host.ask("memory", warmup + done.rounds)
        return done
    finally:
        for host in hosts:
            host.close()


def _timed_rounds(slots: list[Slot], hosts: list, warmup: int, seed: int, plan: RoundPlan,
                  aa: tuple[int, int] | None, clock: Callable[[], float], progress: Progress) -> RoundsDone:
    """Rounds until ``plan`` says stop, the A/A check judged after each."""
    start, rounds, stopped = clock(), 0, None
    orders = order_stream(len(slots), seed)
    while stopped is None:
        round_start = time.perf_counter()
        for i in next(orders):
            wall, cpu = hosts[i].ask("turn", warmup + rounds)
            slots[i].step_seconds.append(wall)
            slots[i].cpu_seconds.append(cpu)
        progress.round_done(rounds, time.perf_counter() - round_start)
        rounds += 1
        passed = None if aa is None else aa_check(slots[aa[0]], slots[aa[1]])["passed"]
        stopped = plan.stop_reason(rounds, clock() - start, passed)
    return RoundsDone(rounds, stopped, clock() - start)


def paired_ratio(fast: Slot, slow: Slot) -> float:
    """Speed of ``fast`` over speed of ``slow``: the median over rounds of the per-round time ratio."""
    per_round = [
        (b / slow.images_per_turn) / (a / fast.images_per_turn)
        for a, b in zip(fast.step_seconds, slow.step_seconds, strict=True)
    ]
    return statistics.median(per_round)


def aa_check(original: Slot, copy: Slot) -> dict:
    """The A/A check: the same variant twice should run at the same speed."""
    ratio = paired_ratio(copy, original)
    return {
        "variant": original.label,
        "ratio": round(ratio, 3),
        "images_per_second": [round(original.images_per_second(), 2), round(copy.images_per_second(), 2)],
        "tolerance": AA_TOLERANCE,
        "passed": abs(ratio - 1.0) <= AA_TOLERANCE,
        "step_seconds": [[round(t, 4) for t in original.step_seconds], [round(t, 4) for t in copy.step_seconds]],
    }
