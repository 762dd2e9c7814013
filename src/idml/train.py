"""``idml train``: build the run from its config and train it."""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch
import yaml

from idml.checkpoint import BEST_NAME, CHECKPOINT_NAME
from idml.config import TrainConfig, parse_train_args
from idml.data import DataRequest, build_data
from idml.distributed import init_distributed, shutdown_distributed, wrap_ddp
from idml.engine import Trainer
from idml.errors import IdmlError
from idml.models import build_from_spec
from idml.runtime import build_runtime


def prepare_run_dir(cfg: TrainConfig) -> None:
    """Create ``<output_dir>/<expname>`` and record the resolved settings as ``config.yaml``."""
    run_dir = cfg.run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    except OSError as exc:
        raise IdmlError(f"cannot write to {run_dir}: {exc.strerror or exc}; choose another --output_dir") from None


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    if not enabled:
        return model
    try:
        return torch.compile(model)
    except Exception as exc:  # compile support varies by platform and version
        warnings.warn(f"--compile unavailable here ({type(exc).__name__}: {exc}); running eagerly", stacklevel=2)
        return model


def run_train(cfg: TrainConfig) -> tuple[float, float]:
    rt = build_runtime(cfg.device, cfg.amp, cfg.channels_last)
    init_distributed(rt)
    try:
        torch.manual_seed(cfg.seed)
        req = DataRequest(cfg.dataset, cfg.data_dir, cfg.batch_size, cfg.workers, cfg.seed, rt.rank, rt.world_size)
        data = build_data(req, rt.device)
        model = build_from_spec(replace(cfg.model_spec, num_classes=data.num_classes)).to(rt.device)
        if rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if rt.is_main:
            prepare_run_dir(cfg)
        trainer = Trainer(cfg, model, data, rt)
        trainer.net = wrap_ddp(maybe_compile(model, cfg.compile), rt)
        n_params = sum(p.numel() for p in model.parameters())
        trainer.print(f"=> creating model '{cfg.net_type}' (depth {cfg.depth}, ISM {'on' if cfg.ism else 'off'})")
        trainer.print(f"the number of model parameters: {n_params}")
        trainer.print(f"=> training on {rt.describe()}; {len(data.class_names)} classes")
        result = trainer.fit()
        if cfg.epochs > 0:
            trainer.print(f"=> checkpoint: {cfg.run_dir / CHECKPOINT_NAME}  best model: {cfg.run_dir / BEST_NAME}")
        return result
    finally:
        shutdown_distributed()


def main(argv: list[str]) -> int:
    run_train(parse_train_args(argv))
    return 0
