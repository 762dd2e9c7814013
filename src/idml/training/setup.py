"""Assemble a training run from its settings: check them against this machine, read the data and
any checkpoint, build the model on its device, prepare the run folder, then train.

Everything bad input can break is read and checked before the run folder is touched
(:func:`load_inputs`), so a failing start or resume never overwrites anything. ``idml train``
(:mod:`idml.commands.train`) parses the command line and calls :func:`run_train`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from torch import nn

from idml.checkpoint.schema import BEST_NAME, CHECKPOINT_NAME, Checkpoint
from idml.config import CommandLine, TrainConfig
from idml.data.build import build_data, training_decode
from idml.data.catalog import dataset_info
from idml.data.types import DataBundle, DataRequest
from idml.device.memory import device_memory_bytes
from idml.device.runtime import Runtime, build_runtime
from idml.errors import ConfigError, IdmlError, one_line
from idml.files import free_name, refuse_link, remove_stale_temps, write_text
from idml.models.layout import channels_last_under_bf16
from idml.models.registry import build_from_spec
from idml.models.spec import ModelSpec
from idml.training.compiling import maybe_compile
from idml.training.distributed import (
    convert_sync_bn,
    init_distributed,
    peer_failures_reported,
    run_agreed,
    shutdown_distributed,
    wrap_ddp,
)
from idml.training.format_trial import run_memory_format
from idml.training.init_from import apply_init_from
from idml.training.preflight import preflight
from idml.training.resume import (
    agree_on_resume,
    check_resume_model,
    load_resume_state,
    resolve_resume_path,
    resume_after_restart,
)
from idml.training.run_folder import LOCK_NAME, RunLock, belongs_to
from idml.training.run_log import METRICS_NAME, TENSORBOARD_DIR, RunLog
from idml.training.trainer import Trainer

#: The settings of the run as given (plus what the command line left to defaults), in the run folder.
CONFIG_NAME = "config.yaml"


def archive_earlier_run(run_dir: Path) -> Path | None:
    """Move a finished or interrupted run out of the way of a fresh one, to ``<run_dir>.<n>``.

    The official code silently overwrote it (the official README's CIFAR commands all share
    ``--expname PyraNet200``); idml keeps those commands working without losing anything.
    """
    if not any(os.path.lexists(run_dir / name) for name in (CHECKPOINT_NAME, BEST_NAME, METRICS_NAME)):
        return None
    target = free_name(run_dir)
    run_dir.rename(target)
    return target


def continuing_hint(moved: Path, command: CommandLine | None, distributed: bool) -> str:
    """How to continue a run moved aside to ``moved``: the exact command where it is known."""
    if command is None or distributed:
        return f"the same command with --expname {moved.name} --resume auto"
    return command.continuing(moved.name)


#: Every name idml writes inside a run folder (files, and the TensorBoard folder).
RUN_FOLDER_NAMES = (LOCK_NAME, CONFIG_NAME, METRICS_NAME, CHECKPOINT_NAME, BEST_NAME, TENSORBOARD_DIR)


def check_run_folder(run_dir: Path) -> None:
    """Refuse, before anything is read or written, a run folder that is a symbolic link or that
    holds one under a name idml writes.

    Run folders sit in an ``--output_dir`` that others may share: a link planted as ``runs/x`` (or
    ``runs/x/tensorboard``) would make the run write its checkpoints (or event files) wherever it
    points. ``--output_dir`` itself may be a link: it is the user's own choice, given on the
    command line; the folder idml creates below it must be a real one.
    """
    refuse_link(run_dir, "give --output_dir the real folder instead, or choose another --expname")
    if run_dir.is_dir():
        for name in RUN_FOLDER_NAMES:
            refuse_link(run_dir / name)


def prepare_run_dir(cfg: TrainConfig, resumed_from: Path | None, printer: Callable[[str], None], log: RunLog,
                    first_epoch: int = 0, command: CommandLine | None = None, distributed: bool = False) -> RunLock:
    """Lock ``<output_dir>/<expname>`` for this run, move aside an earlier run that this one does
    not continue (saying exactly how to continue that one: ``command`` is how this run was
    started), have ``log`` take the metrics history the run continues from ``first_epoch``, and
    record the resolved settings as ``config.yaml``.

    This run continues the folder's run only when it resumes from one of the folder's own files;
    a fresh run, or one resumed from another folder's checkpoint, gets the folder to itself.
    The lock is taken before anything is moved or written, and is returned held.
    """
    run_dir = cfg.run_dir
    check_run_folder(run_dir)
    lock = None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        if resumed_from is None or not belongs_to(resumed_from, run_dir):
            moved = archive_earlier_run(run_dir)
            if moved is not None:
                this = "" if resumed_from is None else f"this run continues {resumed_from}; "
                printer(f"=> {run_dir} held an earlier run: moved it to {moved} ({this}to continue that run: "
                        f"{continuing_hint(moved, command, distributed)})")
                run_dir.mkdir(parents=True, exist_ok=True)
                lock, earlier = RunLock(run_dir), lock
                earlier.release()
        remove_stale_temps(run_dir)  # of writes killed in an earlier run (this run holds the lock now)
        log.take_history(first_epoch)  # sets aside a metrics.csv it cannot continue, before config.yaml
        write_text(run_dir / CONFIG_NAME, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return lock
    except BaseException as exc:
        if lock is not None:
            lock.release()
        if isinstance(exc, OSError):
            raise IdmlError(f"cannot write to {run_dir}: {exc.strerror or exc}; choose another --output_dir") from exc
        raise


def check_model_settings(cfg: TrainConfig, rt: Runtime) -> None:
    """Build the network on the meta device (no memory, no initialisation): an impossible depth
    fails at once, instead of after the data (all of ImageNet's file names, say) has been read,
    and so does a network whose weights, gradients and momentum alone exceed the device's memory
    (a huge --alpha or --uncertainty_dim), instead of failing to allocate later."""
    try:
        with torch.device("meta"):
            spec = cfg.model_spec
            model = build_from_spec(replace(spec, num_classes=spec.num_classes or 2))  # user data: classes unread
    except ConfigError:  # a depth the network cannot have, a backbone name no library knows: its own line
        raise
    except (RuntimeError, ValueError, OverflowError, MemoryError) as exc:
        raise ConfigError(f"these model settings give an impossible network ({one_line(exc)[:200]}); "
                          "lower --depth, --alpha or --uncertainty_dim") from exc
    n_params = sum(p.numel() for p in model.parameters())
    needed, available = 3 * 4 * n_params, device_memory_bytes(rt.device)
    if available is not None and needed > available:
        raise ConfigError(
            f"the model has {n_params:,} parameters: their weights, gradients and momentum alone need "
            f"{needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of {rt.device.type}; lower "
            "--depth, --alpha or --uncertainty_dim"
        )
    side = dataset_info(cfg.dataset, cfg.input_size).input_size
    batch = cfg.batch_size * 3 * side * side * 4  # one batch of float32 images, before any activation
    if available is not None and batch > available:
        raise ConfigError(f"one batch of {cfg.batch_size} images of {side} x {side} pixels takes "
                          f"{batch / 2**30:.1f} GiB as float32 alone, more than the {available / 2**30:.1f} GiB of "
                          f"{rt.device.type}; lower --batch_size (or --input_size)")


def run_runtime(cfg: TrainConfig) -> Runtime:
    """This run's device and precision, and its memory format as far as it is known before the
    network runs: forced by a flag, CUDA's and MPS's defaults, or on the CPU the rule for untimed
    runs, which :func:`build_trainer` replaces by a timing (:mod:`idml.training.format_trial`)."""
    return build_runtime(cfg.device, cfg.amp, cfg.channels_last, cfg.deterministic,
                         network_prefers_channels_last=functools.partial(channels_last_under_bf16, cfg.model_spec))


def place_model(cfg: TrainConfig, rt: Runtime, spec: ModelSpec) -> nn.Module:
    """The network on the run's device, in its memory format (SyncBatchNorm under DDP if asked)."""
    return rt.place(convert_sync_bn(build_from_spec(spec).to(rt.device), rt, cfg.sync_bn))


@dataclass
class RunInputs:
    """What a run is built from, read and checked before anything is written."""

    data: DataBundle
    model: nn.Module
    resume_path: Path | None
    resume_state: Checkpoint | None
    #: what --init_from loaded (a line to print), or ""
    init_note: str = ""


def load_inputs(cfg: TrainConfig, rt: Runtime) -> RunInputs:
    """Data, model and (on resume) its checkpoint: everything that bad input can break is checked
    before the run folder is touched, so a failing start or resume never overwrites anything."""
    check_model_settings(cfg, rt)
    check_run_folder(cfg.run_dir)  # early: before the data is read
    resume_path = resolve_resume_path(cfg)
    state = load_resume_state(resume_path) if resume_path else None
    torch.manual_seed(cfg.seed)
    req = DataRequest(cfg.dataset, cfg.data_dir, cfg.batch_size, cfg.workers, cfg.seed, rt.rank, rt.world_size,
                      cfg.skip_bad_images, cfg.label_noise, val_split=cfg.val_split, classes=cfg.classes,
                      decode=training_decode(cfg.decode, rt.device), **user_data_fields(cfg, state))
    data = build_data(req, rt.device)
    problem = cfg.steps_problem(len(data.train))
    if problem:
        raise ConfigError(problem)
    spec = replace(cfg.model_spec, num_classes=data.num_classes)
    model = place_model(cfg, rt, spec)
    if state is not None and resume_path is not None:
        check_resume_model(state, resume_path, spec.to_dict(), model.state_dict())
    init_note = ""
    if cfg.init_from and state is None:
        init_note = apply_init_from(model, cfg.init_from)
    elif cfg.init_from:
        init_note = f"=> --init_from {cfg.init_from} not applied: the run resumes from its checkpoint"
    return RunInputs(data, model, resume_path, state, init_note)


def user_data_fields(cfg: TrainConfig, resumed: Checkpoint | None = None) -> dict:
    """The settings of --dataset folder and hf:<path> that the data request carries. A resumed run
    normalises its images with the mean and std it trained with (the checkpoint's), unless given:
    measured again on data that changed, they would shift every input under the trained weights."""
    saved = resumed if resumed is not None and len(resumed.mean or ()) == 3 and len(resumed.std or ()) == 3 else None
    mean = cfg.mean if cfg.mean is not None else (saved.mean if saved else None)
    std = cfg.std if cfg.std is not None else (saved.std if saved else None)
    return {"input_size": cfg.input_size, "mean": None if mean is None else tuple(mean),
            "std": None if std is None else tuple(std), "image_key": cfg.image_key,
            "label_key": cfg.label_key, "memory_mb": cfg.data_memory_mb}


def build_trainer(cfg: TrainConfig, rt: Runtime, hold: contextlib.ExitStack | None = None,
                  command: CommandLine | None = None) -> Trainer:
    """The trainer of this run, resumed if asked, in its memory format (on the CPU timed unless a flag
    or the checkpoint decides: :mod:`idml.training.format_trial`), with its run folder prepared
    (agreed by all ranks); ``command`` is how the run was started (for the moved-aside note).

    Rank 0 locks the run folder; the lock is held until ``hold`` closes (without ``hold``, as in
    tests that only build a trainer, it is released at once)."""
    inputs = run_agreed(lambda: load_inputs(cfg, rt), rt)
    agree_on_resume(inputs.resume_path, inputs.resume_state, rt)
    saved = None if inputs.resume_state is None else inputs.resume_state.config or {}
    rt = run_memory_format(cfg, rt, inputs.data, inputs.model, saved)
    net = wrap_ddp(maybe_compile(inputs.model, cfg.compile), rt)
    trainer = Trainer(cfg, inputs.model, inputs.data, rt, net=net)
    for line in (inputs.data.note and f"=> data: {inputs.data.note}", inputs.init_note):
        if line:
            trainer.print(line)
    if inputs.resume_state is not None and inputs.resume_path is not None:
        path, state = inputs.resume_path, inputs.resume_state
        notes = run_agreed(lambda: trainer.load_state(state, path), rt)
        trainer.print(f"=> resuming {path} at epoch {trainer.start.epoch}, step {trainer.start.step}")
        for note in notes:
            trainer.print(f"=> note: {note}")
    lock = run_agreed(lambda: prepare_run_dir(cfg, inputs.resume_path, trainer.print, trainer.log, trainer.start.epoch,
                                              command, rt.distributed)
                      if rt.is_main else None, rt)
    if lock is not None and hold is not None:
        hold.callback(lock.release)
    elif lock is not None:
        lock.release()
    return trainer


def report_files(trainer: Trainer, cfg: TrainConfig) -> None:
    """Name the files this run wrote, or say that a resumed run had nothing left to train."""
    if trainer.start.epoch >= cfg.epochs and not trainer.saved.written:
        if cfg.epochs > 0:
            trainer.print(f"=> nothing to train: the checkpoint already finished {trainer.start.epoch} of "
                          f"--epochs {cfg.epochs} (raise --epochs to train on)")
        return
    names = {CHECKPOINT_NAME: "checkpoint", BEST_NAME: "best model"}
    written = dict.fromkeys(trainer.saved.written)  # in order, once each
    if written:
        trainer.print("=> " + "  ".join(f"{names.get(p.name, 'file')}: {p}" for p in sorted(written, key=str)))


def run_train(cfg: TrainConfig, command: CommandLine | None = None) -> tuple[float, float]:
    """Train as ``cfg`` says (``command``: how the run was started, for the messages that name
    another command)."""
    preflight(cfg)
    rt = run_runtime(cfg)
    init_distributed(rt, cfg.dist_timeout)
    try:
        with contextlib.ExitStack() as hold, peer_failures_reported(rt, cfg.dist_timeout):
            cfg, restarted = resume_after_restart(cfg, rt)
            if restarted and rt.is_main:
                print(restarted)
            trainer = build_trainer(cfg, rt, hold, command)
            return train(trainer, cfg)
    finally:
        shutdown_distributed()


def train(trainer: Trainer, cfg: TrainConfig) -> tuple[float, float]:
    """Fit the built trainer, with the console lines of the official code around it."""
    rt = trainer.rt
    n_params = sum(p.numel() for p in trainer.model.parameters())
    trainer.print(f"=> creating model '{cfg.net_type}' (depth {cfg.depth}, ISM {'on' if cfg.ism else 'off'})")
    if cfg.own_default_network:
        blocks = " with basic blocks" if not cfg.bottleneck else ""
        trainer.print(f"=> no --net_type or --depth given: idml's default network for {cfg.dataset}, "
                      f"{cfg.net_type}-{cfg.depth}{blocks} (the official default, PyramidNet-32, is no network; "
                      "give --net_type and --depth to choose another)")
    trainer.print(f"the number of model parameters: {n_params}")
    trainer.print(f"=> training on {rt.describe()}; {len(trainer.data.class_names)} classes")
    result = trainer.fit()
    report_files(trainer, cfg)
    return result
