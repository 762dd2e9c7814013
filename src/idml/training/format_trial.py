"""A training run's memory format: forced by a flag, kept from the checkpoint on resume, else (on
the CPU) timed on this machine by :mod:`idml.device.autotune`, with the trainer's own step.

What is timed is :meth:`idml.training.trainer.Trainer.train_step` (the batch's conversion to the
memory format, CutMix/Mixup, forward, ISM head, loss, backward, SGD and EMA) of a *scratch*
trainer: a model built afresh from the run's settings, its own optimiser, and synthetic batches of
the run's shape. The on-device augmentation that comes before the format conversion is the same
work in both formats, so the synthetic batches arrive already normalised and skip it. The run's
own model, optimiser and data loaders are never touched, and the global random states (Python,
NumPy, torch) are restored afterwards, so a run with the timing trains exactly as a run given
the chosen format by flag.

Only rank 0 times; under DDP every rank then takes its choice (:func:`agree_on_memory_format`).
A resumed run keeps the format its checkpoint recorded: a different format computes the same
numbers with different rounding, and resume is bit-exact.

``IDML_MEMORY_FORMAT_TRIAL=off`` skips the timing (the rule for untimed runs decides): for test
suites and CI, whose many small runs would otherwise each time their own shape, on shared cores
where the winner of two nearly equal formats may differ from one run to the next.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from idml.config import TrainConfig
from idml.data.types import DataBundle
from idml.device.autotune import NAMES, Step, StepFactory, choose_memory_format
from idml.device.runtime import Runtime
from idml.errors import ConfigError
from idml.models.registry import build_from_spec
from idml.models.spec import ModelSpec
from idml.training.distributed import agree_on_memory_format
from idml.training.resume import capture_rng, restore_rng
from idml.training.trainer import Meter, Trainer, step_rng

#: the variable that switches the timing off (see the module docstring)
TRIAL_VARIABLE = "IDML_MEMORY_FORMAT_TRIAL"
TRIAL_SETTINGS = {"on": True, "1": True, "off": False, "0": False}


def trial_wanted() -> bool:
    """False when :data:`TRIAL_VARIABLE` says off; unset or empty means on."""
    value = os.environ.get(TRIAL_VARIABLE, "").strip().lower() or "on"
    if value not in TRIAL_SETTINGS:
        raise ConfigError(f"{TRIAL_VARIABLE}={os.environ[TRIAL_VARIABLE]!r}: set it to off (no timing: the "
                          "rule for untimed runs chooses the CPU memory format) or on, or unset it")
    return TRIAL_SETTINGS[value]


def trial_batch(data: DataBundle) -> int:
    """The run's batch size, or the size of its training split per rank where that is smaller (a
    tiny data set trains on batches of a few images: no trial step should be larger)."""
    return data.train.largest_batch()


def trial_network(cfg: TrainConfig, data: DataBundle, spec: ModelSpec) -> dict:
    """The network's shape as far as speed goes: its settings, the batch size and the input size."""
    return {"model": spec.to_dict(), "batch_size": trial_batch(data), "input_size": data.input_size}


def _fresh(images: torch.Tensor, _rng: object) -> torch.Tensor:
    """The trial's augmentation: a new tensor per step, as the real one makes (already normalised)."""
    return images.clone()


def trial_steps(cfg: TrainConfig, rt: Runtime, data: DataBundle, spec: ModelSpec) -> StepFactory:
    """Builds, per candidate format, one step of a scratch trainer of this run (see the module docstring)."""

    def make(channels_last: bool) -> Step:
        trial_rt = replace(rt, channels_last=channels_last, rank=0, world_size=1)
        model = trial_rt.place(build_from_spec(spec))
        trainer = Trainer(cfg, model, replace(data, train_transform=_fresh), trial_rt, printer=lambda _line: None)
        gen = torch.Generator().manual_seed(cfg.seed)
        shape = (trial_batch(data), 3, data.input_size, data.input_size)
        images = torch.randn(shape, generator=gen).to(rt.device)
        targets = torch.randint(0, max(data.num_classes, 1), shape[:1], generator=gen).to(rt.device)
        meter, count = Meter(rt.device), itertools.count()

        def step() -> None:
            n = next(count)
            trainer.train_step(images, targets, step_rng(cfg.seed, 0, n, 0), meter, n)

        return step

    return make


@contextlib.contextmanager
def random_states_kept(device: torch.device) -> Iterator[None]:
    """Python's, NumPy's and torch's global random states as they were before the block."""
    states = capture_rng(device)
    try:
        yield
    finally:
        restore_rng(states, device)


def unforced_cpu_format(cfg: TrainConfig, rt: Runtime, data: DataBundle, spec: ModelSpec,
                        saved: dict | None, printer: Callable[[str], None]) -> bool:
    """The CPU format when no flag forces one: the checkpoint's on resume, else rank 0's timing.

    ``saved`` is the resumed checkpoint's settings (None for a fresh run). Without a timing (ranks
    other than 0, a checkpoint older than the recorded format, whose run chose by the rule) it
    stays ``rt.channels_last``, the rule of :func:`idml.device.runtime.default_channels_last`.
    """
    if saved is not None:
        recorded = saved.get("channels_last")
        return recorded if isinstance(recorded, bool) else rt.channels_last
    timed = trial_wanted()  # read on every rank: a bad value stops them all alike
    if not rt.is_main:
        return rt.channels_last
    if not timed:
        printer(f"=> memory format: {NAMES[rt.channels_last]} (not timed: {TRIAL_VARIABLE}=off, so the rule "
                "for untimed runs chose it; see docs/speed.md)")
        return rt.channels_last
    with random_states_kept(rt.device):
        choice = choose_memory_format(trial_network(cfg, data, spec), rt.amp_dtype,
                                      trial_steps(cfg, rt, data, spec), fallback=lambda: rt.channels_last)
    for note in choice.notes:
        printer(f"=> note: {note}")
    printer(choice.line)
    return choice.channels_last


def run_memory_format(cfg: TrainConfig, rt: Runtime, data: DataBundle, model: torch.nn.Module,
                      saved: dict | None, printer: Callable[[str], None] = print) -> Runtime:
    """This run's runtime with its memory format settled (the same on every rank) and ``model``
    (the run's, built and placed before) converted to it."""
    if cfg.channels_last is None and rt.device.type == "cpu":
        spec = replace(cfg.model_spec, num_classes=data.num_classes)
        rt = replace(rt, channels_last=unforced_cpu_format(cfg, rt, data, spec, saved, printer))
    rt = agree_on_memory_format(rt)
    rt.place(model)
    return rt
