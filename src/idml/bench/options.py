"""The choices of an ``idml bench`` run, without torch (so that ``idml bench --help`` and a refused
flag are quick): which variants of a training step exist and run, and how they are isolated."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from idml.config import TrainConfig
from idml.data.catalog import dataset_info, datasets_that_can
from idml.errors import ConfigError, describe, listing

#: model variants: name -> the settings it trains with, derived from the command line's.
MODEL_VARIANTS: dict[str, Callable[[TrainConfig], TrainConfig]] = {
    "fp32-eager": lambda c: replace(c, amp="off", channels_last=False, compile=False, ism=True),
    "default": lambda c: replace(c, ism=True),
    "default-linear": lambda c: replace(c, ism=False),
    # one change at a time from fp32-eager (opt-in with --variants), to see what each brings
    "channels_last": lambda c: replace(c, amp="off", channels_last=True, compile=False, ism=True),
    "compile": lambda c: replace(c, amp="off", channels_last=False, compile=True, ism=True),
    "bf16": lambda c: replace(c, amp="bf16", channels_last=False, compile=False, ism=True),
    "bf16-channels_last": lambda c: replace(c, amp="bf16", channels_last=True, compile=False, ism=True),
    # one change at a time from bf16 (opt-in): does torch.compile pay on a bfloat16 CPU or GPU?
    "bf16-compile": lambda c: replace(c, amp="bf16", channels_last=False, compile=True, ism=True),
    "bf16-channels_last-compile": lambda c: replace(c, amp="bf16", channels_last=True, compile=True, ism=True),
    "fp16": lambda c: replace(c, amp="fp16", channels_last=False, compile=False, ism=True),
}
DATA_ONLY = "data-only"
STANDARD = ("fp32-eager", "default", "default-linear", DATA_ONLY)
#: how the variants are kept apart: a worker process each, or all in this process
ISOLATIONS = ("process", "none")
#: the input pipelines ``idml bench --input_pipeline`` times: idml's, and the official worker transform
PIPELINE_VARIANTS = ("idml", "official")


def chosen_variants(spec: str | None, dataset: str) -> list[str]:
    in_memory = "in_memory" in dataset_info(dataset).can
    if spec is None:
        return [v for v in STANDARD if v != DATA_ONLY or in_memory]
    names = [v.strip() for v in spec.split(",") if v.strip()]
    known = [*MODEL_VARIANTS, DATA_ONLY]
    unknown = [v for v in names if v not in known]
    if unknown or not names:
        named = ", ".join(describe(u) for u in unknown[:5]) or describe(spec)
        raise ConfigError(f"unknown --variants {named}: choose from {', '.join(known)}")
    if DATA_ONLY in names and not in_memory:
        raise ConfigError("the data-only variant needs an in-memory dataset "
                          f"({listing(datasets_that_can('in_memory'))})")
    return list(dict.fromkeys(names))


def chosen_aa(spec: str, names: list[str]) -> str | None:
    """The variant the A/A check repeats: ``spec``, or with ``auto`` default (else the first model variant)."""
    if spec == "none":
        return None
    models = [n for n in names if n != DATA_ONLY]
    if spec == "auto":
        return "default" if "default" in models else (models[0] if models else names[0])
    if spec not in names:
        raise ConfigError(f"--aa {spec} is not among the variants run ({', '.join(names)}): "
                          "choose one of them, auto or none")
    return spec


def pipeline_variants(spec: str | None, dataset: str) -> list[str]:
    """The input pipelines to time (default: both); only ImageNet's pipeline is timed this way."""
    if dataset != "imagenet":
        raise ConfigError("--input_pipeline times the ImageNet input pipeline: give --dataset imagenet and "
                          "--data_dir with imagenet-1k/train/<class>/*.JPEG (benchmarks/make_photos.py writes one)")
    names = list(PIPELINE_VARIANTS) if spec is None else [v.strip() for v in spec.split(",") if v.strip()]
    unknown = [v for v in names if v not in PIPELINE_VARIANTS]
    if unknown or not names:
        raise ConfigError(f"unknown --variants {', '.join(unknown) or spec!r} for --input_pipeline: "
                          f"choose from {', '.join(PIPELINE_VARIANTS)}")
    return list(dict.fromkeys(names))


#: why the rounds stopped (:meth:`RoundPlan.stop_reason`)
FIXED, AA_PASSED, ROUNDS_CAP, TIME_CAP = "fixed", "aa-passed", "rounds-cap", "time-cap"


@dataclass(frozen=True)
class RoundPlan:
    """How many rounds to time: at least ``min_rounds``; then, while an A/A check runs and fails,
    more, up to ``max_rounds`` and (if set) ``max_seconds`` of timed rounds."""

    min_rounds: int
    max_rounds: int = 0  # below min_rounds: min_rounds
    max_seconds: float | None = None

    @property
    def cap(self) -> int:
        return max(self.min_rounds, self.max_rounds)

    def stop_reason(self, rounds: int, seconds: float, aa_passed: bool | None) -> str | None:
        """None to run another round, else why to stop. ``aa_passed`` is None without an A/A check."""
        if rounds < self.min_rounds:
            return None
        if aa_passed is None:
            return FIXED
        if aa_passed:
            return AA_PASSED
        if rounds >= self.cap:
            return ROUNDS_CAP
        if self.max_seconds is not None and seconds >= self.max_seconds:
            return TIME_CAP
        return None
