"""Exact resume: what a checkpoint holds besides the weights, and reading it back.

The data order and every augmentation draw of a step are functions of (seed, epoch, step, rank)
(see ``training.trainer.step_rng`` and ``data.loaders``), so a checkpoint only needs its position: the epoch
in progress and the number of its steps already done. It also holds the optimiser, the AMP scaler,
the best metrics, the sums of the epoch's training meter (so that the epoch's printed averages
match) and the global RNG states (Python, NumPy, torch CPU and CUDA) of every rank, which anything
drawing from them (dropout, ImageNet's workers' seeds) resumes from.

A resumed run may be given other settings than the checkpoint's. Each setting belongs to one
class (:data:`RESUME_RULES`), which says what a change does, so that what ``config.yaml`` and the
next checkpoint record is always what ran:

* ``model``: the network's shape; refused (:func:`check_same_model`);
* ``data-order``: which image, with which label, each step of an epoch trains on; refused inside
  an epoch (the epoch's remaining steps would belong to another run), applied with a note at an
  epoch's end;
* ``recipe``: optimiser, schedule, mixing and numerics; applied from the resumed step on, with a
  note (the optimiser's momentum and weight decay are set on the loaded optimiser state);
* ``runtime``: where files go, what is printed, how data is loaded; applied silently.
:meth:`idml.training.trainer.Trainer.load_state` puts a checkpoint back into a trainer.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from idml.checkpoint.io import load_checkpoint
from idml.checkpoint.schema import CHECKPOINT_NAME, Checkpoint, check_weights
from idml.config import TrainConfig
from idml.data.identity import change_words, changed_splits
from idml.data.types import DataBundle
from idml.device.runtime import Runtime
from idml.errors import ConfigError, describe
from idml.training.distributed import control_group


@dataclass
class ResumePoint:
    """Where a resumed run starts: ``step`` steps of ``epoch`` are already done."""

    epoch: int = 0
    step: int = 0
    train_sums: Tensor | None = None
    #: gradients accumulated so far in an unfinished group of --grad_accum_steps batches
    accum_grads: list[Tensor | None] | None = None


def resolve_resume_path(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from: ``auto`` = the run's own if present; a path must exist."""
    if cfg.resume is None:
        return None
    own = cfg.run_dir / CHECKPOINT_NAME
    if cfg.resume == "auto":
        return own if own.is_file() else None
    path = Path(cfg.resume)
    if not path.is_file():
        raise ConfigError(f"--resume {path}: no such checkpoint file; give an existing one, or 'auto'")
    return path


def restart_count(rt: Runtime) -> int:
    """How often torchrun restarted this group (``--max-restarts``): the largest
    ``TORCHELASTIC_RESTART_COUNT`` of any rank. Each agent counts only its own restarts (a node
    whose workers did not fail keeps 0), so the ranks agree on the maximum."""
    count = torch.tensor([int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)])
    if rt.distributed:
        dist.all_reduce(count, op=dist.ReduceOp.MAX, group=control_group())
    return int(count.item())


def resume_after_restart(cfg: TrainConfig, rt: Runtime) -> tuple[TrainConfig, str]:
    """A group torchrun restarted continues its run instead of starting it over.

    Without ``--resume`` the restarted group would move the first attempt's folder aside and train
    from epoch 0 again; it resumes as with ``--resume auto``. Returns the settings and the line to
    print ("" when nothing changes)."""
    if cfg.resume is not None:
        return cfg, ""
    restarts = restart_count(rt)
    if not restarts:
        return cfg, ""
    return replace(cfg, resume="auto"), f"=> torchrun restarted this run (restart {restarts}): it continues as " \
        "with --resume auto"


def check_same_model(ckpt: Checkpoint, spec: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint of another network with one line naming the settings that differ."""
    saved = ckpt.model
    diffs = [f"{key} {describe(saved.get(key))} (checkpoint) vs {describe(value)} (this run)"
             for key, value in spec.items() if saved.get(key) != value]
    if diffs:
        raise ConfigError(
            f"{path} holds another model: {'; '.join(diffs)}; resume with the checkpoint's settings "
            "or start a new --expname"
        )


def load_resume_state(path: Path) -> Checkpoint:
    """The checkpoint at ``path``, checked to be a training checkpoint (read before the data, whose
    normalisation a user dataset takes from it)."""
    ckpt = load_checkpoint(path)
    ckpt.require(("epoch", "optimizer", "best_err1"), path)
    return ckpt


def check_resume_model(ckpt: Checkpoint, path: Path, spec: dict[str, Any], expected_weights: dict[str, Tensor]) -> None:
    """Refuse a checkpoint of another model: the settings, then the weights against
    ``expected_weights`` (the network's, on the meta device), and weights not worth continuing (an
    older idml could save diverged ones)."""
    check_same_model(ckpt, spec, path)
    check_weights(expected_weights, ckpt.state_dict, path)


# -- settings changed on resume -----------------------------------------------------------------
MODEL, DATA_ORDER, RECIPE, RUNTIME = "model", "data-order", "recipe", "runtime"
#: The class of every setting (see the module docstring); tests check that none is missing.
RESUME_RULES: dict[str, str] = {
    **dict.fromkeys(["net_type", "dataset", "depth", "alpha", "bottleneck", "ism", "uncertainty_dim",
                     "ism_lambda", "input_size"], MODEL),
    **dict.fromkeys(["seed", "label_noise", "image_key", "label_key", "val_split", "classes"], DATA_ORDER),
    **dict.fromkeys(["lr", "momentum", "weight_decay", "epochs", "batch_size", "beta", "cutmix_prob",
                     "mixup_alpha", "mixup_prob", "amp", "device", "sync_bn", "data_dir", "skip_bad_images",
                     "deterministic", "mean", "std", "data_memory_mb", "model_ema", "sched", "warmup_epochs",
                     "grad_accum_steps", "label_smoothing", "clip_grad_norm", "decode"],
                    RECIPE),
    **dict.fromkeys(["print_freq", "verbose", "expname", "output_dir", "workers", "resume", "save_every_steps",
                     "tensorboard", "compile", "channels_last", "dist_timeout", "init_from", "devices", "stop_signal",
                     "stop_after"], RUNTIME),
}


def _flag(name: str) -> str:
    flags = {f.name: f.metadata.get("flags") or () for f in fields(TrainConfig)}.get(name, ())
    return next((flag for flag in flags if flag.startswith("--")), name)


def setting_changes(ckpt: Checkpoint, cfg: TrainConfig, path: Path) -> list[str]:
    """Notes on the settings this resume changes; refuses a data-order change inside an epoch.

    A setting without a class (added after this table) is treated as a recipe setting: applied,
    with a note, never silently.
    """
    saved = ckpt.config
    if not saved:
        return ["the checkpoint records no settings: this run's are used as given"]
    now = cfg.to_dict()
    changed = {name: (saved[name], value) for name, value in now.items()
               if name in saved and saved[name] != value and RESUME_RULES.get(name, RECIPE) not in (MODEL, RUNTIME)}
    step = ckpt.step
    refused = [name for name in changed if RESUME_RULES.get(name) == DATA_ORDER]
    if step and refused:
        was = " ".join(f"{_flag(name)} {changed[name][0]}" for name in refused)
        raise ConfigError(
            f"{path} stopped inside epoch {ckpt.epoch} (after step {step}): changing "
            f"{', '.join(_flag(name) for name in refused)} there would mix two data orders or label sets in "
            f"one epoch; resume with the checkpoint's {was}, or from a checkpoint written at an epoch's end"
        )
    return [f"{_flag(name)} changed from {describe(old)} to {describe(new)}: applied from the resumed step on"
            for name, (old, new) in changed.items()]


def data_changes(ckpt: Checkpoint, cfg: TrainConfig, data: DataBundle, path: Path) -> list[str]:
    """Notes on data that changed since the checkpoint was written; refuses, with one line, the changes
    that a resume cannot absorb (see :mod:`idml.data.identity`):

    * other class names (a renamed or replaced class folder): each output would mean another class;
    * other training images inside an epoch: the rest of its order would come from another list;
    * another held-out validation split (``--val_split`` recomputes it from the training images):
      it could now hold images the model trained on, and the best error so far means nothing.

    Other changes (images added to ``train/`` or ``val/`` when an epoch ends) are applied with a note.
    When a setting that defines the data changed (``--seed``, ``--val_split``, ``--classes``...), the
    rules of :func:`setting_changes` apply instead.
    """
    saved = ckpt.config or {}
    now = cfg.to_dict()
    if any(saved[name] != now[name] for name, kind in RESUME_RULES.items() if kind == DATA_ORDER and name in saved):
        return []
    if ckpt.class_names is not None and list(ckpt.class_names) != list(data.class_names):
        differ = sorted(set(ckpt.class_names) ^ set(data.class_names))[:3] or ["their order"]
        raise ConfigError(f"{path} was trained on other classes than the data holds now (they differ in "
                          f"{', '.join(describe(n) for n in differ)}): every output would mean another class; restore "
                          "the data as it was, or start a new run (another --expname)")
    notes = []
    for split, counts in changed_splits(ckpt.data, data.identity).items():
        change = change_words(split, counts)
        if split == "selection" and cfg.val_split > 0:
            raise ConfigError(f"{path}: {change}: the validation split that --val_split holds out of the training "
                              "images would be drawn again from other files, and could now hold images the model "
                              "trained on; restore the data as it was, or start a new run (another --expname)")
        if split == "train" and ckpt.step:
            raise ConfigError(f"{path} stopped inside epoch {ckpt.epoch} (after step {ckpt.step}), and {change}: "
                              "the rest of the epoch would follow the order of another list of images; restore the "
                              "data as it was, or resume from a checkpoint written at an epoch's end")
        notes.append(f"{change}: " + ("the next epochs train on them as they are now" if split == "train" else
                                      "the best error so far was measured on the earlier ones"))
    return notes


# -- RNG states ---------------------------------------------------------------------------------
def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's global RNG states, as types ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng(states: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and states["cuda"] is not None:
        torch.cuda.set_rng_state(states["cuda"], device)


def gather_rank_states(rt: Runtime, train_sums: Tensor | None,
                       grads: list[Tensor | None] | None = None) -> list[dict[str, Any]]:
    """Every rank's RNG states, training-meter sums and (inside a gradient-accumulation group) its
    gradients so far (a collective under DDP), by rank."""
    mine = capture_rng(rt.device) | {"train_meter": None if train_sums is None else train_sums.detach().cpu()}
    if grads is not None:
        mine["accum_grads"] = [None if g is None else g.detach().cpu() for g in grads]
    if not rt.distributed:
        return [mine]
    states: list[Any] = [None] * rt.world_size
    dist.all_gather_object(states, mine, group=control_group())
    return states


# -- positions ----------------------------------------------------------------------------------
def progress_fields(rt: Runtime, batch_size: int, step: int, train_sums: Tensor | None,
                    grads: list[Tensor | None] | None = None) -> dict[str, Any]:
    """The checkpoint entries that make a resume exact (call on every rank: a collective)."""
    return {"step": step, "global_batch": batch_size * rt.world_size,
            "ranks": gather_rank_states(rt, train_sums, grads)}


def own_rank_state(ckpt: Checkpoint, rt: Runtime, notes: list[str]) -> dict[str, Any] | None:
    """This rank's RNG states and meter sums in the checkpoint, or None (another process count)."""
    ranks = ckpt.ranks or []
    if len(ranks) != rt.world_size:
        notes.append(f"the checkpoint was written by {len(ranks) or 'an unknown number of'} process(es), "
                     f"this run has {rt.world_size}: the data shards differ, the run is not bit-identical")
        return None
    return ranks[rt.rank]


def resume_point(ckpt: Checkpoint, cfg: TrainConfig, rt: Runtime, own: dict[str, Any] | None,
                 notes: list[str], path: Path = Path("checkpoint")) -> ResumePoint:
    """Where to restart; a different global batch size maps the position to the samples done.

    ``own`` is this rank's entry of the checkpoint's ``ranks`` (:func:`own_rank_state`).
    """
    step = ckpt.step
    global_batch = cfg.batch_size * rt.world_size
    saved_batch = ckpt.global_batch or global_batch
    if step and saved_batch != global_batch:
        step = step * saved_batch // global_batch
        notes.append(f"the global batch changed ({saved_batch} -> {global_batch}): restarting the "
                     f"epoch at step {step} (up to one batch repeated; not bit-identical)")
    notes += setting_changes(ckpt, cfg, path)
    same_batch = own is not None and saved_batch == global_batch
    sums = own["train_meter"] if same_batch else None
    grads = own.get("accum_grads") if same_batch else None
    return ResumePoint(ckpt.epoch, step, sums, grads)  # the Meter moves the sums to its device and dtype


# -- agreement across ranks ---------------------------------------------------------------------
ResumeView = tuple[str | None, int, int]


def resume_view(path: Path | None, ckpt: Checkpoint | None) -> ResumeView:
    """What this rank would resume: (checkpoint path or None, epoch, step)."""
    if path is None or ckpt is None:
        return None, 0, 0
    return str(path), ckpt.epoch, ckpt.step


def _describe(view: ResumeView) -> str:
    path, epoch, step = view
    return "no checkpoint (would start fresh)" if path is None else f"{path} at epoch {epoch}, step {step}"


def resume_disagreement(views: list[ResumeView]) -> str | None:
    """One line naming what the ranks would resume, when they do not all resume the same point.

    Without a filesystem shared by the nodes, ``--resume auto`` finds the checkpoint only where
    rank 0 wrote it (or an older copy elsewhere): started anyway, the ranks would train different
    models from different positions under one DDP job.
    """
    if len(set(views)) <= 1:
        return None
    groups: dict[ResumeView, list[int]] = {}
    for rank, view in enumerate(views):
        groups.setdefault(view, []).append(rank)
    parts = [f"rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))}: {_describe(view)}"
             for view, ranks in groups.items()]
    return ("the ranks do not agree where to resume: " + "; ".join(parts) + "; give every node the same "
            "checkpoint (a shared --output_dir, or copy rank 0's run folder to each node) or start a new --expname")


def agree_on_resume(path: Path | None, ckpt: Checkpoint | None, rt: Runtime) -> None:
    """Refuse to start (on every rank, with one line) unless all ranks resume the same (path, epoch, step)."""
    if not rt.distributed:
        return
    views: list[Any] = [None] * rt.world_size
    dist.all_gather_object(views, resume_view(path, ckpt), group=control_group())
    problem = resume_disagreement([tuple(v) for v in views])
    if problem:
        raise ConfigError(problem)
