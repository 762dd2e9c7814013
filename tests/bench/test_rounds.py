"""The round-robin machinery of idml bench: visiting orders, paired ratios, the A/A verdict, workers."""

from dataclasses import replace

import pytest

from expect import one_line_message
from idml.bench import rounds
from idml.bench import step as bench
from idml.bench.options import AA_PASSED, FIXED, ROUNDS_CAP, TIME_CAP, RoundPlan
from idml.bench.rounds import Slot, aa_check, measure_rounds, paired_ratio, round_orders
from idml.commands import bench as bench_command
from idml.commands.bench import aa_line, rounds_line
from idml.errors import IdmlError

TINY = ["--net_type", "resnet", "--dataset", "cifar10", "--depth", "8", "--no-bottleneck",
        "--batch_size", "2", "--device", "cpu"]


def test_every_round_visits_every_variant_once_in_a_reproducible_shuffled_order():
    orders = round_orders(4, 12, seed=0)
    assert len(orders) == 12 and all(sorted(order) == [0, 1, 2, 3] for order in orders)
    assert orders == round_orders(4, 12, seed=0)
    assert len({tuple(order) for order in orders}) > 1  # not one fixed cyclic order
    # no variant always follows the same other one
    predecessors = {(order[i - 1], order[i]) for order in orders for i in range(1, 4)}
    assert len(predecessors) > 4


def slot(label: str, seconds: list[float], images: int = 8) -> Slot:
    return Slot(label, bench.variant_runner, images_per_turn=images, step_seconds=seconds, cpu_seconds=seconds)


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # a load spike in round 2 hits both variants; the pairs still say "twice as fast"
    fast, slow = slot("a", [1.0, 1.0, 5.0, 1.0]), slot("b", [2.0, 2.0, 10.0, 2.0])
    assert paired_ratio(fast, slow) == pytest.approx(2.0)
    assert paired_ratio(slow, fast) == pytest.approx(0.5)
    # images per turn count: 16 images in the same time is twice the speed
    assert paired_ratio(slot("c", [1.0] * 3, images=16), slot("d", [1.0] * 3)) == pytest.approx(2.0)


def test_aa_check_passes_within_three_percent_and_fails_beyond():
    original = slot("default", [1.0, 1.0, 1.0])
    good = aa_check(original, slot("default (A/A)", [1.02, 0.99, 1.01]))
    assert good["passed"] and good["variant"] == "default" and "PASS" in aa_line(good)
    bad = aa_check(original, slot("default (A/A)", [1.10, 1.08, 1.12]))
    assert not bad["passed"] and bad["ratio"] < 0.97 and "FAIL" in aa_line(bad)


def test_in_process_rounds_fill_every_slot():
    cfg, _ = bench_command.parse_bench_args(TINY)
    slots = bench.variant_slots(cfg, ["default", "data-only"], "default")
    measure_rounds(slots, steps=3, warmup=1, isolation="none", threads=1)
    for s in slots:
        assert len(s.step_seconds) == len(s.cpu_seconds) == 3 and s.images_per_turn > 0 and s.settings


def test_a_failing_worker_is_one_line():
    cfg, _ = bench_command.parse_bench_args(TINY)
    broken = Slot("broken", bench.variant_runner, (replace(cfg, depth=7), "default"))
    with pytest.raises(IdmlError) as info:
        measure_rounds([broken], steps=1, warmup=0, isolation="process", threads=1)
    one_line_message(info, "variant broken failed in its worker process")


# -- how many rounds: more while the A/A check fails, up to a cap ----------------------------------
@pytest.mark.parametrize(("rounds", "seconds", "aa_passed", "expected"), [
    (2, 0.0, True, None),  # fewer than --steps: always on
    (3, 0.0, None, FIXED),  # no A/A check: exactly --steps
    (3, 0.0, True, AA_PASSED),
    (3, 0.0, False, None),  # failing: more rounds
    (8, 0.0, False, ROUNDS_CAP),
    (5, 99.0, False, None),
    (5, 100.0, False, TIME_CAP),
    (8, 100.0, True, AA_PASSED),  # a pass at the cap is a pass
])
def test_round_plan_stops_when_the_aa_check_passes_or_at_a_cap(rounds, seconds, aa_passed, expected):
    assert RoundPlan(3, 8, 100.0).stop_reason(rounds, seconds, aa_passed) == expected


def test_the_cap_is_never_below_the_least_number_of_rounds():
    plan = RoundPlan(10, 4)
    assert plan.cap == 10 and plan.stop_reason(9, 0.0, False) is None and plan.stop_reason(10, 0.0, False) == ROUNDS_CAP


def scripted_runner(label: str, cfg, name: str):
    """The tiny model's real runner, labelled so that the mocked timing knows which slot it is."""
    return replace(bench.variant_runner(cfg, name), settings=label)


def scripted_slots(cfg) -> list[Slot]:
    return [Slot(label, scripted_runner, (label, cfg, "default")) for label in ("default", "default (A/A)")]


def mock_turn_times(monkeypatch, slow_copy_turns: int) -> None:
    """Every turn runs for real, but reports 1.0 s, except that the A/A copy reports 1.2 s for its
    first ``slow_copy_turns`` turns (warm-up included): a burst of load on one process."""
    def timed(runner, turn):
        runner.run_turn(turn)
        slow = runner.settings == "default (A/A)" and turn < slow_copy_turns
        return (1.2 if slow else 1.0), 1.0
    monkeypatch.setattr(rounds, "timed_turn", timed)


def test_more_rounds_run_until_the_aa_check_passes(monkeypatch):
    cfg, _ = bench_command.parse_bench_args(TINY)
    slots = scripted_slots(cfg)
    mock_turn_times(monkeypatch, slow_copy_turns=1 + 5)  # one warm-up, then 5 slow timed rounds
    done = measure_rounds(slots, steps=3, warmup=1, isolation="none", threads=1, plan=RoundPlan(3, 40), aa=(0, 1))
    # the median of the per-round ratios reaches 1.00 once the fast rounds outnumber the 5 slow ones
    assert (done.rounds, done.stopped) == (11, AA_PASSED)
    assert all(len(s.step_seconds) == 11 for s in slots)
    assert aa_check(*slots)["passed"]


def test_the_rounds_stop_at_the_cap_when_the_aa_check_keeps_failing(monkeypatch):
    cfg, _ = bench_command.parse_bench_args(TINY)
    mock_turn_times(monkeypatch, slow_copy_turns=100)
    done = measure_rounds(scripted_slots(cfg), steps=3, warmup=1, isolation="none", threads=1,
                          plan=RoundPlan(3, 6), aa=(0, 1))
    assert (done.rounds, done.stopped) == (6, ROUNDS_CAP)
    clock = iter(range(0, 10**6, 30))  # each round takes 30 s of a mocked clock
    done = measure_rounds(scripted_slots(cfg), steps=3, warmup=1, isolation="none", threads=1,
                          plan=RoundPlan(3, 40, max_seconds=100), aa=(0, 1), clock=lambda: next(clock))
    assert (done.rounds, done.stopped) == (4, TIME_CAP)  # 3 rounds took 90 s, the 4th passed 100 s


def test_without_an_aa_check_the_steps_are_the_rounds(monkeypatch):
    cfg, _ = bench_command.parse_bench_args(TINY)
    mock_turn_times(monkeypatch, slow_copy_turns=100)
    done = measure_rounds(scripted_slots(cfg), steps=3, warmup=1, isolation="none", threads=1, plan=RoundPlan(3, 40))
    assert (done.rounds, done.stopped) == (3, FIXED)


@pytest.mark.parametrize(("rounds", "line"), [
    ({"timed": 14, "stopped": AA_PASSED}, "A/A passed after 14 rounds"),
    ({"timed": 40, "stopped": ROUNDS_CAP, "max": 40},
     "A/A did not pass within the cap of 40 rounds: ratios below are not trustworthy at 3%"),
    ({"timed": 23, "stopped": TIME_CAP, "max": 40, "max_minutes": 10.0},
     "A/A did not pass within the cap of 10 minutes (23 rounds): ratios below are not trustworthy at 3%"),
    ({"timed": 10, "stopped": FIXED}, "10 rounds (no A/A check)"),
])
def test_the_report_says_why_the_rounds_stopped(rounds, line):
    assert rounds_line(rounds, {"tolerance": 0.03}) == line
