"""The CPU memory format chosen by timing (idml.device.autotune): the decision, its budget and its cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from idml.device import autotune
from idml.device.autotune import Budget, FormatCache, cache_folder, cache_key, choose_memory_format, time_formats

NETWORK = {"model": {"net_type": "resnet", "depth": 8}, "batch_size": 8, "input_size": 32}


class FakeClock:
    """A clock that only moves when a fake step runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stepper(clock: FakeClock, nchw: list[float] | float, channels_last: list[float] | float,
            calls: list[str] | None = None):
    """A step factory whose steps take the given seconds (a list: one per step, warm-up first)."""
    def make(cl: bool):
        times = channels_last if cl else nchw
        times = list(times) if isinstance(times, list) else None if times is None else [times]
        count = iter(range(10**6))

        def step() -> None:
            n = next(count)
            if calls is not None:
                calls.append("channels_last" if cl else "NCHW")
            clock.now += times[min(n, len(times) - 1)]
        return step
    return make


@pytest.mark.parametrize(("nchw", "channels_last", "expected"), [(1.0, 0.8, True), (0.8, 1.0, False)])
def test_the_faster_format_wins_after_three_unanimous_rounds(nchw, channels_last, expected):
    clock, calls = FakeClock(), []
    timing = time_formats(stepper(clock, nchw, channels_last, calls), Budget(), clock)
    assert timing.channels_last is expected and timing.rounds == 3
    warmup = ["NCHW", "channels_last"]
    rounds = ["NCHW", "channels_last", "channels_last", "NCHW", "NCHW", "channels_last"]
    assert calls == [*warmup, *rounds]  # one warm-up each, then rounds alternating which goes first
    assert timing.seconds_per_step == pytest.approx({"NCHW": nchw, "channels_last": channels_last})
    assert timing.speed_ratio == pytest.approx(nchw / channels_last)
    assert timing.total_seconds == pytest.approx(4 * (nchw + channels_last))  # warm-up included


def test_a_load_spike_in_one_round_does_not_decide():
    # NCHW is faster in every round but one, where a spike hits the NCHW step (paired median decides)
    clock = FakeClock()
    nchw = [1.0, 1.0, 9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    timing = time_formats(stepper(clock, nchw, 1.1), Budget(), clock)
    assert timing.channels_last is False and timing.rounds == Budget().max_rounds  # rounds disagreed: all 8 ran


def test_a_slow_network_stops_after_one_round_past_the_time_limit():
    clock = FakeClock()
    timing = time_formats(stepper(clock, 40.0, 30.0), Budget(max_seconds=60), clock)
    assert timing.rounds == 1 and timing.channels_last  # warm-up 70 s: one round, then stop


def test_the_default_budget_costs_seconds_even_for_a_network_of_several_seconds_a_step():
    """PyramidNet-110 at batch 128 steps in 4-6 s on one core: three unanimous rounds and one
    warm-up each take about half a minute; a slower step stops after the first round past 30 s."""
    clock = FakeClock()
    timing = time_formats(stepper(clock, 5.0, 3.0), Budget(), clock)
    assert (timing.rounds, timing.total_seconds) == (3, 32.0) and timing.channels_last
    clock = FakeClock()
    timing = time_formats(stepper(clock, 6.0, 4.0), Budget(), clock)
    assert (timing.rounds, timing.total_seconds) == (2, 30.0)
    clock = FakeClock()
    timing = time_formats(stepper(clock, 12.0, 10.0), Budget(), clock)
    assert (timing.rounds, timing.total_seconds) == (1, 44.0)


def failing(clock: FakeClock, which: bool | None):
    base = stepper(clock, 1.0, 0.5)

    def make(cl: bool):
        if which is None or cl is which:
            raise RuntimeError("DefaultCPUAllocator: not enough memory")
        return base(cl)
    return make


def test_a_candidate_that_cannot_run_loses_untimed_and_is_not_cached(tmp_path: Path):
    clock, cache = FakeClock(), FormatCache(tmp_path)
    choice = choose_memory_format(NETWORK, None, failing(clock, True), lambda: True, cache, clock=clock)
    assert choice.channels_last is False
    assert "channels_last failed its trial step (RuntimeError: DefaultCPUAllocator: not enough memory)" in choice.line
    assert not cache.path.exists()


def test_when_no_candidate_runs_the_rule_decides(tmp_path: Path):
    clock = FakeClock()
    for rule in (True, False):
        choice = choose_memory_format(NETWORK, None, failing(clock, None), lambda rule=rule: rule,
                                      FormatCache(tmp_path), clock=clock)
        assert choice.channels_last is rule and "neither format could run a trial step" in choice.line


def test_the_choice_is_cached_and_reused_without_timing(tmp_path: Path):
    clock, calls = FakeClock(), []
    first = choose_memory_format(NETWORK, None, stepper(clock, 1.0, 0.5, calls), lambda: False,
                                 FormatCache(tmp_path), clock=clock)
    assert first.channels_last and first.line.startswith(
        "=> memory format: channels_last (timed over 3 steps each: NCHW 1 s/step, channels_last 0.5 s/step, "
        f"channels_last 2.00x as fast (paired); 6.0 s; cached in {tmp_path / 'memory_format.json'})")
    calls.clear()
    again = choose_memory_format(NETWORK, None, stepper(clock, 0.5, 1.0, calls), lambda: False,
                                 FormatCache(tmp_path), clock=clock)
    assert again.channels_last and calls == [] and "timed on this machine before" in again.line
    # another precision, network or restricted instruction set is another question: timed again
    for network, dtype in ((NETWORK, torch.bfloat16), (NETWORK | {"batch_size": 16}, None)):
        assert not choose_memory_format(network, dtype, stepper(clock, 0.5, 1.0), lambda: True,
                                        FormatCache(tmp_path), clock=clock).channels_last
    entries = json.loads((tmp_path / "memory_format.json").read_text())["entries"]
    assert len(entries) == 3


def test_the_key_names_the_cpu_torch_threads_precision_and_instruction_limits(monkeypatch):
    key = cache_key(NETWORK, torch.bfloat16)
    assert key["torch"] == torch.__version__ and key["threads"] == torch.get_num_threads()
    assert key["precision"] == "bfloat16" and key["network"] == NETWORK and key["cpu"]["model"]
    assert cache_key(NETWORK, None)["precision"] == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cache_key(NETWORK, None)["cpu"]["isa_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert autotune.key_id(cache_key(NETWORK, None)) != autotune.key_id(key)


def test_another_cpu_model_flags_or_torch_version_times_again(monkeypatch, tmp_path: Path):
    """A cache carried to another machine (a shared home folder) or kept across a torch upgrade
    answers nothing there: its entries are another CPU's or another torch's."""
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(autotune, "CPUINFO", cpuinfo)

    def chosen(model: str, flags: str, version: str, nchw: float) -> str:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: fpu {flags}\n")
        monkeypatch.setattr(torch, "__version__", version)
        clock = FakeClock()
        return choose_memory_format(NETWORK, None, stepper(clock, nchw, 1.0), lambda: True,
                                    FormatCache(tmp_path / "cache"), clock=clock).line

    assert "channels_last (timed over" in chosen("Xeon 8480", "avx2 avx512f amx_bf16", "2.9.0", 2.0)
    assert "channels_last (timed on this machine before" in chosen("Xeon 8480", "avx2 avx512f amx_bf16", "2.9.0", 0.5)
    assert "NCHW (timed over" in chosen("EPYC 7B13", "avx2", "2.9.0", 0.5)  # another CPU
    assert "NCHW (timed over" in chosen("Xeon 8480", "avx2", "2.9.0", 0.5)  # its AVX-512 hidden (a VM)
    assert "NCHW (timed over" in chosen("Xeon 8480", "avx2 avx512f amx_bf16", "2.10.0", 0.5)  # torch upgraded


def test_the_cache_folder_follows_xdg(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_folder() == tmp_path / "idml"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # not absolute: ignored, as the specification says
    assert cache_folder() == Path.home() / ".cache" / "idml"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_folder() == Path.home() / ".cache" / "idml"


def _valid_file(tmp_path: Path) -> dict:
    clock = FakeClock()
    choose_memory_format(NETWORK, None, stepper(clock, 1.0, 0.5), lambda: False, FormatCache(tmp_path), clock=clock)
    return json.loads((tmp_path / "memory_format.json").read_text())


def _tampered_entry(tmp_path: Path, change) -> bytes:
    content = _valid_file(tmp_path)
    entry = next(iter(content["entries"].values()))
    change(entry)
    return json.dumps(content).encode()


@pytest.mark.parametrize(("content", "note"), [
    (b"{not json", "it is not valid JSON"),
    (b"\xff\xfe garbage", "it is not valid JSON"),
    (b"[" * 150_000 + b"]" * 150_000, "it is larger than 256 KiB"),
    (b"[" * 50_000, "it is not valid JSON"),  # nesting deep enough to exhaust the parser's recursion
    (b'{"version": 99, "entries": {}}', "it is not a version-1 memory-format cache"),
    (b'{"version": 1, "entries": []}', "it is not a version-1 memory-format cache"),
    (b'"just a string"', "it is not a version-1 memory-format cache"),
])
def test_a_corrupt_cache_file_is_ignored_with_a_note_and_replaced(tmp_path: Path, content: bytes, note: str):
    (tmp_path / "memory_format.json").write_bytes(content)
    clock = FakeClock()
    choice = choose_memory_format(NETWORK, None, stepper(clock, 1.0, 0.5), lambda: False, FormatCache(tmp_path),
                                  clock=clock)
    assert choice.channels_last and "timed over" in choice.line
    assert choice.notes == [f"ignored the memory-format cache {tmp_path / 'memory_format.json'}: {note}; "
                            "it will be replaced"]
    assert json.loads((tmp_path / "memory_format.json").read_text())["version"] == 1


@pytest.mark.parametrize("change", [
    lambda e: e.update(channels_last="yes"),
    lambda e: e.update(seconds_per_step={"NCHW": -1.0, "channels_last": 0.5}),
    lambda e: e.update(seconds_per_step={"NCHW": 1.0}),
    lambda e: e.update(speed_ratio=float("nan")),
    lambda e: e.pop("speed_ratio"),
    lambda e: e["key"].update(torch="0.0.1"),  # planted under this key's id, for another key
])
def test_a_malformed_or_misplaced_entry_is_not_believed(tmp_path: Path, change):
    (tmp_path / "memory_format.json").write_bytes(_tampered_entry(tmp_path, change))
    clock, calls = FakeClock(), []
    choice = choose_memory_format(NETWORK, None, stepper(clock, 0.5, 1.0, calls), lambda: True,
                                  FormatCache(tmp_path), clock=clock)
    assert calls and choice.channels_last is False  # timed again, and the new timing decided
    assert any("malformed entry" in note for note in choice.notes)


def test_a_planted_link_is_neither_followed_nor_overwritten(tmp_path: Path):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(_valid_file(tmp_path / "real")))
    (tmp_path / "memory_format.json").symlink_to(target)
    clock = FakeClock()
    choice = choose_memory_format(NETWORK, None, stepper(clock, 0.5, 1.0), lambda: True, FormatCache(tmp_path),
                                  clock=clock)
    assert choice.channels_last is False and "not cached" in choice.line  # the link's entry was not read
    assert "it is a symbolic link" in choice.notes[0] and "refusing to write" in choice.notes[1]
    assert (tmp_path / "memory_format.json").is_symlink()
    assert json.loads(target.read_text())["entries"]  # untouched


def test_an_unwritable_cache_folder_costs_only_the_cache(tmp_path: Path):
    (tmp_path / "file").write_text("")
    clock = FakeClock()
    choice = choose_memory_format(NETWORK, None, stepper(clock, 1.0, 0.5), lambda: False,
                                  FormatCache(tmp_path / "file" / "idml"), clock=clock)
    assert choice.channels_last and "not cached" in choice.line
    assert choice.notes and choice.notes[0].startswith("the memory-format choice was not cached: ")


def test_the_cache_keeps_its_newest_entries_only(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(autotune, "MAX_ENTRIES", 3)
    clock = FakeClock()
    for batch in range(5):
        choose_memory_format(NETWORK | {"batch_size": batch}, None, stepper(clock, 1.0, 0.5), lambda: False,
                             FormatCache(tmp_path), clock=clock)
    entries = json.loads((tmp_path / "memory_format.json").read_text())["entries"].values()
    assert [e["key"]["network"]["batch_size"] for e in entries] == [2, 3, 4]


def test_an_unreadable_cache_file_is_ignored(tmp_path: Path, monkeypatch):
    path = tmp_path / "memory_format.json"
    path.write_text("{}")

    def refused(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "open", refused)  # as for a file of another user (root reads every file)
    cache = FormatCache(tmp_path)
    assert cache.lookup(cache_key(NETWORK, None)) is None
    assert cache.notes == [f"ignored the memory-format cache {path}: it is unreadable (Permission denied); "
                           "it will be replaced"]
