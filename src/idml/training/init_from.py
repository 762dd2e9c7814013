"""``--init_from PATH``: start training from existing weights (fine-tuning).

``PATH`` is read with ``torch.load(weights_only=True)`` (:func:`idml.checkpoint.io.safe_load`), so
it can hold tensors only, never code. It may be an idml checkpoint, or a plain ``state_dict``
saved with ``torch.save`` (torchvision's or timm's weights, a Lightning checkpoint's
``state_dict``), with or without DDP's ``module.`` prefix.

Its names are matched to this model's in three ways, and the one that matches most tensors wins:
as they are (idml checkpoints), under ``backbone.`` (a backbone's own weights), or under
``backbone.net.`` (a torchvision/timm network, ``--net_type torchvision:<name>``). A classifier of
the file (a 2-D weight whose width is the head's feature width) goes into the head's ``fc`` when
its number of classes is this run's, and is left out otherwise: the head then starts fresh.
Everything the file has that the model lacks, or has with another shape, is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from idml.checkpoint.health import weights_problem
from idml.checkpoint.io import safe_load
from idml.errors import IdmlError

PREFIXES = ("", "backbone.", "backbone.net.")
WRAPPERS = ("state_dict", "model_state_dict", "model", "module")
STRIPPED = ("module.", "_orig_mod.")
SHOWN = 4


@dataclass
class InitReport:
    """What :func:`init_from` did with the file's tensors."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    fresh_head: str = ""

    def line(self, path: str | Path) -> str:
        parts = [f"=> init_from {path}: loaded {len(self.loaded)} tensors"]
        for label, names in (("missing (kept as initialised)", self.missing),
                             ("unexpected (ignored)", self.unexpected),
                             ("of another shape (ignored)", self.reshaped)):
            if names:
                parts.append(f"{label}: {_some(names)}")
        if self.fresh_head:
            parts.append(self.fresh_head)
        return "; ".join(parts)


def _some(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The name -> tensor mapping held by ``path`` (unwrapped from a checkpoint's dict)."""
    state, _ = safe_load(path)
    for _ in range(2):  # e.g. {"state_dict": {...}} or {"model": {"module.x": ...}}
        if isinstance(state, Mapping) and not _is_weights(state):
            inner = next((state[k] for k in WRAPPERS if isinstance(state.get(k), Mapping) and _is_weights(state[k])),
                         None)
            state = inner if inner is not None else state
    if not isinstance(state, Mapping) or not _is_weights(state):
        raise IdmlError(f"--init_from {path} holds no state_dict (a mapping of names to tensors); save one with "
                        "torch.save(model.state_dict(), PATH)")
    weights = {_strip(name): tensor for name, tensor in state.items() if isinstance(tensor, Tensor)}
    problem = weights_problem(weights)
    if problem is not None:
        raise IdmlError(f"--init_from {path} holds unusable weights ({problem}); a run cannot start from them: "
                        "give another weights file")
    return weights


def _is_weights(mapping: Mapping) -> bool:
    return bool(mapping) and any(isinstance(v, Tensor) for v in mapping.values()) and all(
        isinstance(k, str) for k in mapping)


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def _matches(weights: dict[str, Tensor], own: dict[str, Tensor], prefix: str) -> int:
    return sum(1 for name, t in weights.items() if (o := own.get(prefix + name)) is not None and o.shape == t.shape)


def _classifier(weights: dict[str, Tensor], used: set[str], width: int) -> tuple[str, str | None] | None:
    """The file's classifier among the tensors no name matched: (weight name, bias name or None)."""
    for name, t in weights.items():
        if name not in used and name.endswith("weight") and t.ndim == 2 and t.shape[1] == width:
            bias = name[: -len("weight")] + "bias"
            return name, bias if bias in weights else None
    return None


def init_from(model: nn.Module, path: str | Path) -> InitReport:
    """Copy the weights of ``path`` into ``model`` where names and shapes agree; report the rest."""
    weights = read_weights(path)
    own = model.state_dict()
    prefix = max(PREFIXES, key=lambda p: _matches(weights, own, p))
    chosen: dict[str, Tensor] = {}
    report = InitReport()
    for name, tensor in weights.items():
        target = prefix + name
        if target in own and own[target].shape == tensor.shape:
            chosen[target] = tensor
            report.loaded.append(target)
        elif target in own:
            report.reshaped.append(f"{target} {tuple(tensor.shape)} vs {tuple(own[target].shape)}")
    used = {name for name in weights if prefix + name in chosen}
    _take_classifier(model, weights, used, chosen, report)
    model.load_state_dict(chosen, strict=False)
    report.missing = [name for name in own if name not in chosen]
    report.unexpected = [name for name in weights if name not in used and prefix + name not in own]
    report.reshaped = [r for r in report.reshaped if not r.startswith("head.fc.")]
    if not chosen:
        raise IdmlError(f"--init_from {path}: none of its {len(weights)} tensors fits this model (names or shapes "
                        "differ); check --net_type and --depth")
    return report


def _take_classifier(model: nn.Module, weights: dict[str, Tensor], used: set[str], chosen: dict[str, Tensor],
                     report: InitReport) -> None:
    """Put the file's classifier into ``head.fc`` when it has this run's classes; say so otherwise."""
    fc = model.head.fc
    if "head.fc.weight" in chosen:
        return
    found = _classifier(weights, used, fc.in_features)
    if found is None:
        report.fresh_head = "the head starts fresh (the file has no classifier for it)"
        return
    weight, bias = found
    classes = weights[weight].shape[0]
    if classes != fc.out_features:
        report.fresh_head = (f"the head starts fresh (the file's classifier {weight} has {classes} classes, "
                             f"this run {fc.out_features})")
        used.update(n for n in (weight, bias) if n)
        return
    chosen["head.fc.weight"] = weights[weight]
    used.add(weight)
    if bias is not None:
        chosen["head.fc.bias"] = weights[bias]
        used.add(bias)
    report.loaded += [n for n in ("head.fc.weight", "head.fc.bias") if n in chosen]


def apply_init_from(model: nn.Module, path: str | Path) -> str:
    """:func:`init_from` under ``torch.no_grad``; returns the line to print."""
    with torch.no_grad():
        return init_from(model, path).line(path)
