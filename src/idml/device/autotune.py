"""The CPU memory format of a training run, chosen by timing both on the CPU that trains.

Which of NCHW and channels_last trains faster on a CPU depends on the CPU and the network, and no
fixed rule got it right everywhere: channels_last won in float32 with AVX-512 code and with AVX2
code *emulated* on that same machine, and then lost by 12-17% on a real AVX2-only AMD EPYC
(issue 20); under bfloat16 it depends on the network's BatchNorm widths (:mod:`idml.models.layout`).
So a CPU run that was not given ``--channels_last`` / ``--no-channels_last`` times a few training
steps of each candidate on its own batch shape, alternating the two so that load from other
processes hits both alike, and keeps the faster (:func:`time_formats`).

The answer is cached per machine and network (:class:`FormatCache`): a small JSON file in the
user's cache folder, keyed by what decides the speed (:func:`cache_key`): the CPU model, its
vector-instruction flags and any variable that restricts them, the torch version, the number of
threads, the precision and the network's shape (its settings, batch size and input size). A
corrupt, oversized or planted cache file is ignored with a note; it never stops a run.

The caller supplies the step to time (:data:`StepFactory`): :mod:`idml.training.format_trial`
builds the trainer's real step on a scratch copy of the model, so that the run's own weights,
random streams and data order are untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from idml.errors import IdmlError, one_line
from idml.files import write_text

CACHE_NAME = "memory_format.json"
CACHE_VERSION = 1
#: a cache file larger than this is not read (its entries are a few hundred bytes each)
MAX_CACHE_BYTES = 256 * 1024
#: entries kept; the oldest go first (one per machine setting and network shape)
MAX_ENTRIES = 64
#: /proc/cpuinfo flags that change which kernels PyTorch's and oneDNN's CPU code runs
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
#: variables that restrict those kernels to an older instruction set (they emulate another CPU)
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
CPUINFO = Path("/proc/cpuinfo")

#: one training step of one candidate; built by a :data:`StepFactory`
Step = Callable[[], None]
#: builds the step of a candidate: ``factory(channels_last)``
StepFactory = Callable[[bool], Step]
NAMES = {False: "NCHW", True: "channels_last"}


@dataclass(frozen=True)
class Budget:
    """How long the timing may take. One untimed warm-up step per candidate (oneDNN builds its
    kernels there), then rounds of one step each, alternating which goes first. It stops after
    ``min_rounds`` when every round had the same winner, else goes on while they disagree (the two
    are close, or the machine is noisy) up to ``max_rounds``; and after any round once
    ``max_seconds`` have passed, warm-up included, so that a large network (PyramidNet-110 at
    batch 128 takes 4-6 s a step on one core) costs about half a minute, not minutes."""

    warmup_steps: int = 1
    min_rounds: int = 3
    max_rounds: int = 8
    max_seconds: float = 30.0

    def done(self, ratios: list[float], elapsed: float) -> bool:
        """``ratios``: NCHW's step time over channels_last's, per round so far."""
        rounds = len(ratios)
        unanimous = all(r > 1 for r in ratios) or all(r < 1 for r in ratios)
        return (rounds >= self.max_rounds or (rounds >= 1 and elapsed >= self.max_seconds)
                or (rounds >= self.min_rounds and unanimous))


@dataclass
class Timing:
    """What the timing found: the winner, each candidate's median seconds per step, channels_last's
    speed over NCHW's (the median of the per-round ratios, which decides), the rounds, how long it
    all took (warm-up included), and why a candidate could not be timed."""

    channels_last: bool
    seconds_per_step: dict[str, float] = field(default_factory=dict)
    speed_ratio: float = 1.0
    rounds: int = 0
    total_seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)


def _build(make_step: StepFactory, channels_last: bool, warmup: int, failures: dict[str, str]) -> Step | None:
    """The candidate's step after its warm-up, or None (the reason in ``failures``) if it failed."""
    try:
        step = make_step(channels_last)
        for _ in range(warmup):
            step()
        return step
    except Exception as exc:  # out of memory, a network without channels_last support: the other candidate runs
        failures[NAMES[channels_last]] = f"{type(exc).__name__}: {one_line(exc)[:160]}"
        return None


def time_formats(make_step: StepFactory, budget: Budget = Budget(),
                 clock: Callable[[], float] = time.perf_counter) -> Timing | None:
    """Time both candidates' steps in alternating rounds; the faster by the median of the per-round
    ratios (paired: both steps of a round ran seconds apart, under nearly the same load).

    None when neither candidate could run a step; a single candidate that ran wins untimed.
    """
    start = clock()
    failures: dict[str, str] = {}
    steps = {cl: _build(make_step, cl, budget.warmup_steps, failures) for cl in (False, True)}
    working = [cl for cl, step in steps.items() if step is not None]
    if not working:
        return None
    if len(working) == 1:
        return Timing(working[0], {}, 1.0, 0, clock() - start, failures)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    ratios: list[float] = []
    while not budget.done(ratios, clock() - start):
        for cl in ((False, True) if len(ratios) % 2 == 0 else (True, False)):
            began = clock()
            steps[cl]()
            seconds[cl].append(clock() - began)
        ratios.append(seconds[False][-1] / max(seconds[True][-1], 1e-12))
    per_step = {NAMES[cl]: statistics.median(times) for cl, times in seconds.items()}
    ratio = statistics.median(ratios)
    return Timing(ratio > 1.0, per_step, ratio, len(ratios), clock() - start, failures)


# -- the cache ------------------------------------------------------------------------------------
def cache_folder() -> Path:
    """``$XDG_CACHE_HOME/idml``, or ``~/.cache/idml`` (the XDG default; a relative value is ignored,
    as the XDG specification asks)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "idml"


def cpu_identity() -> dict:
    """The CPU model, the flags of :data:`CPU_FLAGS` it has, and any :data:`ISA_VARIABLES` set."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                model = value.strip()
            elif name.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags],
            "isa_limits": {v: os.environ[v] for v in ISA_VARIABLES if v in os.environ}}


def cache_key(network: dict, amp_dtype: torch.dtype | None) -> dict:
    """What decides which format is faster: this CPU, torch, threads, precision and the network."""
    return {"cpu": cpu_identity(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "precision": "float32" if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
            "network": network}


def key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def valid_entry(entry: object, key: dict) -> bool:
    """An entry this version wrote for exactly ``key``: a bool and positive seconds, nothing else."""
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("channels_last"), bool):
        return False
    seconds = entry.get("seconds_per_step")
    return (isinstance(seconds, dict) and set(seconds) == set(NAMES.values())
            and all(map(_positive, seconds.values())) and _positive(entry.get("speed_ratio")))


class FormatCache:
    """The cached choices (:data:`CACHE_NAME` in :func:`cache_folder`), read and written whole.

    ``notes`` collects one line per problem met (a corrupt file, a failed write); the caller prints
    them. Nothing here raises: a cache that cannot be used only costs a timing.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.path = (cache_folder() if folder is None else folder) / CACHE_NAME
        self.notes: list[str] = []
        self._read: dict | None = None

    def _entries(self) -> dict:
        """Every entry of the file ({} when there is none or it is unusable, with a note), read once."""
        if self._read is None:
            self._read = self._read_file()
        return self._read

    def _read_file(self) -> dict:
        problem = None
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except (FileNotFoundError, NotADirectoryError):  # no cache yet
            return {}
        except OSError as exc:
            problem = "a symbolic link" if self.path.is_symlink() else f"unreadable ({exc.strerror or exc})"
        else:
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(MAX_CACHE_BYTES + 1)
            problem, entries = self._parse(data)
            if problem is None:
                return entries
        self.notes.append(f"ignored the memory-format cache {self.path}: it is {problem}; it will be replaced")
        return {}

    @staticmethod
    def _parse(data: bytes) -> tuple[str | None, dict]:
        if len(data) > MAX_CACHE_BYTES:
            return f"larger than {MAX_CACHE_BYTES // 1024} KiB", {}
        try:
            content = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):
            return "not valid JSON", {}
        if not isinstance(content, dict) or content.get("version") != CACHE_VERSION \
                or not isinstance(content.get("entries"), dict):
            return f"not a version-{CACHE_VERSION} memory-format cache", {}
        return None, content["entries"]

    def lookup(self, key: dict) -> dict | None:
        """The entry for ``key``, or None; a malformed entry counts as none (with a note)."""
        entry = self._entries().get(key_id(key))
        if entry is not None and not valid_entry(entry, key):
            self.notes.append(f"ignored a malformed entry of the memory-format cache {self.path}; timing again")
            return None
        return entry

    def store(self, key: dict, timing: Timing) -> bool:
        """Add ``timing`` under ``key`` (the oldest entries beyond :data:`MAX_ENTRIES` go); False,
        with a note, when the file cannot be written."""
        entries = {k: v for k, v in self._entries().items() if k != key_id(key)}
        entries[key_id(key)] = {"key": key, "channels_last": timing.channels_last,
                                "seconds_per_step": timing.seconds_per_step, "speed_ratio": timing.speed_ratio,
                                "rounds": timing.rounds,
                                "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        kept = dict(list(entries.items())[-MAX_ENTRIES:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps({"version": CACHE_VERSION, "entries": kept}, indent=1) + "\n")
        except (OSError, IdmlError) as exc:
            self.notes.append(f"the memory-format choice was not cached: {one_line(exc)}")
            return False
        return True


# -- the decision ---------------------------------------------------------------------------------
@dataclass
class Choice:
    """The format chosen and the line that says how (printed once by the run)."""

    channels_last: bool
    line: str
    notes: list[str] = field(default_factory=list)


def _seconds(per_step: dict, ratio: float) -> str:
    """"NCHW 0.41 s/step, channels_last 0.35 s/step, channels_last 1.17x as fast (paired)"."""
    times = ", ".join(f"{name} {per_step[name]:.3g} s/step" for name in NAMES.values())
    return f"{times}, channels_last {ratio:.2f}x as fast (paired)"


def choose_memory_format(network: dict, amp_dtype: torch.dtype | None, make_step: StepFactory,
                         fallback: Callable[[], bool], cache: FormatCache | None = None,
                         budget: Budget = Budget(), clock: Callable[[], float] = time.perf_counter) -> Choice:
    """The cached choice for this machine and network, else a timing of both (cached), else, when
    neither candidate could run a step, ``fallback()`` (a rule that needs no timing)."""
    cache = FormatCache() if cache is None else cache
    key = cache_key(network, amp_dtype)
    entry = cache.lookup(key)
    if entry is not None:
        cl = entry["channels_last"]
        return Choice(cl, f"=> memory format: {NAMES[cl]} (timed on this machine before: "
                          f"{_seconds(entry['seconds_per_step'], entry['speed_ratio'])}; cached in {cache.path}, "
                          "delete it to time again)",
                      cache.notes)
    timing = time_formats(make_step, budget, clock)
    if timing is None:
        cl = fallback()
        return Choice(cl, f"=> memory format: {NAMES[cl]} (neither format could run a trial step, "
                          "so the rule for untimed runs chose it; see docs/speed.md)", cache.notes)
    failed = "; ".join(f"{name} failed its trial step ({why})" for name, why in timing.failures.items())
    if failed:  # the other one ran: chosen untimed, and not cached (the failure may be passing)
        return Choice(timing.channels_last, f"=> memory format: {NAMES[timing.channels_last]} ({failed})", cache.notes)
    where = f"cached in {cache.path}" if cache.store(key, timing) else "not cached"
    return Choice(timing.channels_last,
                  f"=> memory format: {NAMES[timing.channels_last]} (timed over {timing.rounds} steps each: "
                  f"{_seconds(timing.seconds_per_step, timing.speed_ratio)}; {timing.total_seconds:.1f} s; {where})",
                  cache.notes)
