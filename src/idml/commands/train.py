"""``idml train``: build the run from its config and train it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from torch import nn

from idml.checkpoint import BEST_NAME, CHECKPOINT_NAME, remove_stale_temp_files
from idml.config import TrainConfig, parse_train_args, preflight
from idml.data import DataBundle, DataRequest, build_data
from idml.errors import IdmlError
from idml.models import ModelSpec, build_from_spec
from idml.training.compiling import maybe_compile
from idml.training.distributed import convert_sync_bn, init_distributed, run_agreed, shutdown_distributed, wrap_ddp
from idml.training.resume import agree_on_resume, load_resume_state, resolve_resume_path
from idml.training.runtime import Runtime, build_runtime
from idml.training.trainer import Trainer


def archive_earlier_run(run_dir: Path) -> Path | None:
    """Move a finished or interrupted run out of the way of a fresh one, to ``<run_dir>.<n>``.

    The official code silently overwrote it (the official README's CIFAR commands all share
    ``--expname PyraNet200``); idml keeps those commands working without losing anything.
    """
    if not any((run_dir / name).exists() for name in (CHECKPOINT_NAME, BEST_NAME)):
        return None
    n = 1
    while run_dir.with_name(f"{run_dir.name}.{n}").exists():
        n += 1
    target = run_dir.with_name(f"{run_dir.name}.{n}")
    run_dir.rename(target)
    return target


def prepare_run_dir(cfg: TrainConfig, fresh: bool, printer: Callable[[str], None]) -> None:
    """Create ``<output_dir>/<expname>`` and record the resolved settings as ``config.yaml``."""
    run_dir = cfg.run_dir
    try:
        moved = archive_earlier_run(run_dir) if fresh else None
        if moved is not None:
            printer(f"=> {run_dir} held an earlier run: moved it to {moved} (use --resume auto to continue a run)")
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(run_dir)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    except OSError as exc:
        raise IdmlError(f"cannot write to {run_dir}: {exc.strerror or exc}; choose another --output_dir") from exc


def check_model_settings(cfg: TrainConfig) -> None:
    """Build the network on the meta device (no memory, no initialisation): an impossible depth
    fails at once, instead of after the data (all of ImageNet's file names, say) has been read."""
    with torch.device("meta"):
        build_from_spec(cfg.model_spec)


def place_model(cfg: TrainConfig, rt: Runtime, spec: ModelSpec) -> nn.Module:
    """The network on the run's device, in its memory format (SyncBatchNorm under DDP if asked)."""
    model = convert_sync_bn(build_from_spec(spec).to(rt.device), rt, cfg.sync_bn)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass
class RunInputs:
    """What a run is built from, read and checked before anything is written."""

    data: DataBundle
    model: nn.Module
    resume_path: Path | None
    resume_state: dict | None


def load_inputs(cfg: TrainConfig, rt: Runtime) -> RunInputs:
    """Data, model and (on resume) its checkpoint: everything that bad input can break is checked
    before the run folder is touched, so a failing start or resume never overwrites anything."""
    check_model_settings(cfg)
    resume_path = resolve_resume_path(cfg)
    torch.manual_seed(cfg.seed)
    req = DataRequest(cfg.dataset, cfg.data_dir, cfg.batch_size, cfg.workers, cfg.seed, rt.rank, rt.world_size,
                      cfg.skip_bad_images, cfg.label_noise)
    data = build_data(req, rt.device)
    spec = replace(cfg.model_spec, num_classes=data.num_classes)
    state = load_resume_state(resume_path, spec.to_dict()) if resume_path else None
    return RunInputs(data, place_model(cfg, rt, spec), resume_path, state)


def build_trainer(cfg: TrainConfig, rt: Runtime) -> Trainer:
    """The trainer of this run, resumed if asked, with its run folder prepared (agreed by all ranks)."""
    inputs = run_agreed(lambda: load_inputs(cfg, rt), rt)
    agree_on_resume(inputs.resume_path, inputs.resume_state, rt)
    net = wrap_ddp(maybe_compile(inputs.model, cfg.compile), rt)
    trainer = Trainer(cfg, inputs.model, inputs.data, rt, net=net)
    if inputs.resume_state is not None and inputs.resume_path is not None:
        path, state = inputs.resume_path, inputs.resume_state
        notes = run_agreed(lambda: trainer.load_state(state, path), rt)
        trainer.print(f"=> resuming {path} at epoch {trainer.start.epoch}, step {trainer.start.step}")
        for note in notes:
            trainer.print(f"=> note: {note}")
    fresh = inputs.resume_path is None
    run_agreed(lambda: prepare_run_dir(cfg, fresh, trainer.print) if rt.is_main else None, rt)
    return trainer


def run_train(cfg: TrainConfig) -> tuple[float, float]:
    preflight(cfg)
    rt = build_runtime(cfg.device, cfg.amp, cfg.channels_last, cfg.deterministic)
    init_distributed(rt)
    try:
        trainer = build_trainer(cfg, rt)
        n_params = sum(p.numel() for p in trainer.model.parameters())
        trainer.print(f"=> creating model '{cfg.net_type}' (depth {cfg.depth}, ISM {'on' if cfg.ism else 'off'})")
        trainer.print(f"the number of model parameters: {n_params}")
        trainer.print(f"=> training on {rt.describe()}; {len(trainer.data.class_names)} classes")
        result = trainer.fit()
        if cfg.epochs > 0:
            trainer.print(f"=> checkpoint: {cfg.run_dir / CHECKPOINT_NAME}  best model: {cfg.run_dir / BEST_NAME}")
        return result
    finally:
        shutdown_distributed()


def main(argv: list[str]) -> int:
    run_train(parse_train_args(argv))
    return 0
