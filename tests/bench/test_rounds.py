"""The round-robin machinery of idml bench: visiting orders, paired ratios, the A/A verdict, workers."""

from dataclasses import replace

import pytest

from expect import one_line_message
from idml.bench import step as bench
from idml.bench.rounds import Slot, aa_check, measure_rounds, paired_ratio, round_orders
from idml.commands import bench as bench_command
from idml.commands.bench import aa_line
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
