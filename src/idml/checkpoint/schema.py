"""What an idml checkpoint holds: the one list of its fields, their rules, and how they fit together.

:class:`Checkpoint` is that list. Each field states its rule once: a :class:`~idml.rules.Rule` for a
plain value, or a structure check for the optimiser, the AMP scaler, the per-process RNG states
and the moving average. The network's settings (``model``) and the run's settings (``config``) are
checked with the settings' own rules (:func:`idml.config.setting_rule`), so whatever a run accepts
at the start, its checkpoints accept when read back, and the other way round.

Writing goes through :meth:`Checkpoint.to_state` (plain types only, loadable with
``torch.load(weights_only=True)``), reading through :meth:`Checkpoint.from_state`, which refuses
anything that is not what idml writes with one line: "X is not an idml checkpoint (field F must
be ..., got ...)". Fields idml does not know are allowed and ignored (a newer idml adds some);
known fields are optional apart from ``model`` and ``state_dict``: a consumer asks
:meth:`Checkpoint.require` for those it needs (eval needs ``mean``, resume ``optimizer``).

Beyond each field alone, :func:`_check_sizes` compares the sizes the settings declare with the
tensors really present, so that a small file cannot make idml allocate a model of gigabytes, and
:func:`check_weights` compares the weights with the network the settings build.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from idml.checkpoint.health import weights_problem
from idml.config import CHANNEL_MEAN, CHANNEL_STD, setting_rule
from idml.data.catalog import MAX_CLASS_NAME, MAX_CLASSES, MAX_INPUT_SIZE
from idml.data.identity import DATA_IDENTITY
from idml.errors import IdmlError, describe
from idml.models.spec import ModelSpec
from idml.rules import Rule, integer, number, numbers, one_of, optional, text

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"



class Invalid(Exception):
    """One field of a checkpoint is not what idml writes."""


# -- the rules of the fields that are not settings -----------------------------------------------------
def _is_plain(value: Any, depth: int = 8) -> bool:
    """Scalars, or lists/tuples/str-keyed dicts of plain values nested at most ``depth`` deep."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if depth <= 0:
        return False
    if isinstance(value, list | tuple):
        return all(_is_plain(item, depth - 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth - 1) for k, v in value.items())
    return False


def _is_dense(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.layout == torch.strided


PLAIN_DICT = Rule("be a dict of plain values", lambda v: isinstance(v, dict) and _is_plain(v))
PERCENTAGE = number(0, 100)
CLASS_NAMES = Rule(f"be a list of class names (text of at most {MAX_CLASS_NAME} characters)",
                   lambda v: isinstance(v, list | tuple) and len(v) <= MAX_CLASSES
                   and all(isinstance(n, str) and len(n) <= MAX_CLASS_NAME for n in v))




#: Network settings that are not settings of a run (the class count comes from the data).
MODEL_ONLY: dict[str, Rule] = {"num_classes": optional(integer(1, MAX_CLASSES))}


def model_rule(name: str) -> Rule:
    """The rule of the network setting ``name``: the run setting's own where there is one."""
    return MODEL_ONLY.get(name) or setting_rule(name)


def entry(default: Any = None, rule: Rule | None = None, *, check: Callable[[Any, str], None] | None = None,
          doc: str = "") -> Any:
    """A checkpoint field: its default when absent, and its rule (or structure ``check``)."""
    factory = default if callable(default) else None
    value = MISSING if factory else default
    return field(default=value, default_factory=factory or MISSING, metadata={"rule": rule, "check": check,
                                                                                "doc": doc})


def checkpoint_rule(name: str) -> Rule:
    """The rule of the checkpoint field ``name`` (for files that record it again: exports)."""
    return next(f.metadata["rule"] for f in fields(Checkpoint) if f.name == name)


# -- the structured fields -------------------------------------------------------------------------------
def _dict(value: Any, where: str, words: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise Invalid(f"field {where} must be {words} (got {describe(value)})")
    return value


def _fields(values: dict, where: str, rules: dict[str, Rule], required: Iterable[str] = ()) -> None:
    for name in required:
        if name not in values:
            raise Invalid(f"field {where}{name} must {rules[name].words} (found nothing)")
    for name, rule in rules.items():
        if name in values:
            problem = rule.problem(f"field {where}{name}", values[name], specific=False)
            if problem:
                raise Invalid(problem)


def check_state_dict(value: Any, where: str = "state_dict") -> None:
    _dict(value, where, "a dict of weight names to tensors")
    for name, tensor in value.items():
        if not _is_dense(tensor):
            raise Invalid(f"field {where}[{describe(name)}] must be a dense tensor (got {describe(tensor)})")


def check_model(value: Any, where: str = "model") -> None:
    values = _dict(value, where, "a dict of model settings")
    names = [f.name for f in fields(ModelSpec)]
    _fields(values, f"{where}.", {name: model_rule(name) for name in names},
            required=[f.name for f in fields(ModelSpec) if f.default is MISSING])


def check_config(value: Any, where: str = "config") -> None:
    """The run's settings: each one the run knows passes its setting's rule."""
    values = _dict(value, where, "a dict of settings (names to plain values)")
    if not _is_plain(values):
        raise Invalid(f"field {where} must be a dict of settings (names to plain values)")
    _fields(values, f"{where}.", {name: setting_rule(name) for name in values if setting_rule(name, None)})


#: Optimiser hyper-parameters torch's optimisers write into each parameter group.
GROUP_RULES: dict[str, Rule] = {
    "lr": Rule("be a number >= 0", lambda v: number(0).test(v) or (_is_dense(v) and v.numel() == 1
                                                                      and bool(torch.isfinite(v).all()))),
    "momentum": number(0),
    "dampening": number(0),
    "weight_decay": number(0),
    "nesterov": Rule("be true or false", lambda v: isinstance(v, bool)),
    "maximize": Rule("be true or false", lambda v: isinstance(v, bool)),
}


def check_optimizer(value: Any, where: str = "optimizer") -> None:
    _dict(value, where, "an optimiser state_dict (state and param_groups)")
    groups, states = value.get("param_groups"), value.get("state")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise Invalid(f"field {where}.param_groups must be a list of parameter groups (got {describe(groups)})")
    ids: set[int] = set()
    for g, group in enumerate(groups):
        params = group.get("params")
        if not isinstance(params, list) or not all(integer(0).test(p) for p in params) or ids & set(params) \
                or len(set(params)) != len(params):
            raise Invalid(f"field {where}.param_groups[{g}].params must be a list of distinct parameter indices "
                          f"(got {describe(params)})")
        ids |= set(params)
        _fields(group, f"{where}.param_groups[{g}].", GROUP_RULES)
        for key, item in group.items():
            if key != "params" and not (_is_plain(item, 2) or (_is_dense(item) and item.numel() == 1)):
                raise Invalid(f"field {where}.param_groups[{g}].{key} must be a plain setting (got {describe(item)})")
    if not isinstance(states, dict):
        raise Invalid(f"field {where}.state must be a dict of parameter indices to their state "
                      f"(got {describe(states)})")
    for index, state in states.items():
        if index not in ids or not integer().test(index):
            raise Invalid(f"field {where}.state must be keyed by the indices of param_groups (got {describe(index)})")
        _dict(state, f"{where}.state[{index}]", "a dict of buffers")
        for key, item in state.items():
            if not (_is_dense(item) or item is None or isinstance(item, bool | int | float | str)):
                raise Invalid(f"field {where}.state[{index}].{key} must be a tensor or a number (got {describe(item)})")


#: GradScaler.state_dict() of an enabled scaler (a disabled one writes {}); every key is read back.
SCALER_RULES: dict[str, Rule] = {
    "scale": number(above=0), "growth_factor": number(above=0), "backoff_factor": number(above=0),
    "growth_interval": integer(1), "_growth_tracker": integer(0),
}


def check_scaler(value: Any, where: str = "scaler") -> None:
    values = _dict(value, where, "a GradScaler state_dict")
    if values:
        _fields(values, f"{where}.", SCALER_RULES, required=SCALER_RULES)


_TORCH_RNG_BYTES = torch.get_rng_state().numel()


def _check_rng(rank: dict, where: str) -> None:
    """The RNG states are each tried on a scratch generator of their library (which checks them
    completely: versions, sizes, word ranges), then the values are checked where the libraries
    would silently wrap them (NumPy's words arrive as int64)."""
    python, numpy_state = rank["python"], _dict(rank["numpy"], f"{where}.numpy", "NumPy's MT19937 state")
    try:
        version, internal, gauss = python
        random.Random().setstate((version, tuple(internal), gauss))
    except (TypeError, ValueError, OverflowError) as exc:
        raise Invalid(f"field {where}.python must be random.getstate() (got {describe(python)})") from exc
    keys = numpy_state.get("keys")
    if not (_is_dense(keys) and keys.shape == (624,) and keys.dtype == torch.int64
            and bool(((keys >= 0) & (keys < 2**32)).all())):
        raise Invalid(f"field {where}.numpy.keys must be 624 32-bit words (got {describe(keys)})")
    _fields(numpy_state, f"{where}.numpy.", {"name": one_of("MT19937"), "pos": integer(0, 624),
                                              "has_gauss": integer(0, 1), "gauss": number()},
            required=("name", "pos", "has_gauss", "gauss"))
    try:
        np.random.RandomState().set_state((numpy_state["name"], keys.numpy().astype(np.uint32), numpy_state["pos"],
                                           numpy_state["has_gauss"], numpy_state["gauss"]))
    except (TypeError, ValueError) as exc:
        raise Invalid(f"field {where}.numpy must be NumPy's MT19937 state ({exc})") from exc
    cpu = rank["torch"]
    if not (_is_dense(cpu) and cpu.dtype == torch.uint8 and cpu.shape == (_TORCH_RNG_BYTES,)):
        raise Invalid(f"field {where}.torch must be torch.get_rng_state() ({_TORCH_RNG_BYTES} bytes; got "
                      f"{describe(cpu)})")
    cuda = rank["cuda"]  # CUDA's generator state: seed and Philox offset, 8 bytes each (or the seed alone)
    if cuda is not None and not (_is_dense(cuda) and cuda.dtype == torch.uint8 and cuda.shape in ((16,), (8,))):
        raise Invalid(f"field {where}.cuda must be a CUDA RNG state (16 bytes) or None (got {describe(cuda)})")


def check_ranks(value: Any, where: str = "ranks") -> None:
    """Every process's RNG states and training-meter sums (see :mod:`idml.training.resume`)."""
    if not isinstance(value, list):
        raise Invalid(f"field {where} must be a list of per-process RNG states (got {describe(value)})")
    for r, rank in enumerate(value):
        at = f"{where}[{r}]"
        _dict(rank, at, "a dict of RNG states")
        for key in ("python", "numpy", "torch", "cuda", "train_meter"):
            if key not in rank:
                raise Invalid(f"field {at}.{key} must be present (found nothing)")
        _check_rng(rank, at)
        meter = rank["train_meter"]
        if meter is not None and not (_is_dense(meter) and meter.dtype.is_floating_point and meter.shape == (4,)
                                      and bool(torch.isfinite(meter).all())):
            raise Invalid(f"field {at}.train_meter must be 4 finite sums or None (got {describe(meter)})")
        grads = rank.get("accum_grads")  # a checkpoint written inside a --grad_accum_steps group
        if grads is not None and not (isinstance(grads, list) and all(g is None or _is_dense(g) for g in grads)):
            raise Invalid(f"field {at}.accum_grads must be a list of gradients (tensors or None) or None "
                          f"(got {describe(grads)})")


EMA_RULES: dict[str, Rule] = {"decay": number(0, below=1), "updates": integer(0)}


def check_ema(value: Any, where: str = "ema") -> None:
    values = _dict(value, where, "the moving average of the weights (state_dict, decay, updates)")
    check_state_dict(values.get("state_dict"), f"{where}.state_dict")
    _fields(values, f"{where}.", EMA_RULES)


# -- the checkpoint ----------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """Every field an idml checkpoint holds (see the module docstring). A training run writes all of
    them; ``epoch`` counts finished epochs, or with ``step`` > 0 names the epoch in progress."""

    # the network: its settings and weights (the only fields every checkpoint must have)
    model: dict = entry(check=check_model, doc="the network's settings (ModelSpec)")
    state_dict: dict = entry(check=check_state_dict, doc="the weights")
    # where training stands
    epoch: int | None = entry(None, optional(integer(0)))
    step: int = entry(0, integer(0))
    global_batch: int | None = entry(None, optional(integer(1)))
    arch: str | None = entry(None, optional(text(200)))
    best_err1: float | None = entry(None, optional(PERCENTAGE))
    best_err5: float | None = entry(None, optional(PERCENTAGE))
    #: the epoch (counted from 0) whose model is model_best.pth.tar (None in checkpoints before idml recorded it)
    best_epoch: int | None = entry(None, optional(integer(0)))
    #: which weights scored best_err1: the trained ones or their moving average
    best_weights: str = entry("model", one_of("model", "ema"))
    #: the softmax temperature fitted on the validation split (--val_split)
    temperature: float | None = entry(None, optional(number(above=0)))
    #: test errors at the best-validation and at the last epoch (--val_split)
    test_at_best: dict | None = entry(None, optional(PLAIN_DICT))
    test_at_last: dict | None = entry(None, optional(PLAIN_DICT))
    # the data it learnt
    class_names: list | None = entry(None, optional(CLASS_NAMES))
    #: per channel (gray or RGB), by the rules of --mean and --std
    mean: list | None = entry(None, optional(numbers(1, 3, each=CHANNEL_MEAN)))
    std: list | None = entry(None, optional(numbers(1, 3, each=CHANNEL_STD)))
    input_size: int | None = entry(None, optional(integer(1, MAX_INPUT_SIZE)))
    #: what each split held (image count and digest): refusing a resume or an eval on changed data
    data: dict | None = entry(None, optional(DATA_IDENTITY))
    # the run's settings, as it ran them
    config: dict = entry(dict, check=check_config)
    # what continuing the run needs
    optimizer: dict | None = entry(None, check=check_optimizer)
    scaler: dict | None = entry(None, check=check_scaler)
    ranks: list | None = entry(None, check=check_ranks)
    ema: dict | None = entry(None, check=check_ema)

    @property
    def spec(self) -> ModelSpec:
        """The network's settings as the ModelSpec that rebuilds it."""
        known = {f.name for f in fields(ModelSpec)}
        return ModelSpec(**{k: v for k, v in self.model.items() if k in known})

    def to_state(self) -> dict[str, Any]:
        """What ``torch.save`` writes: every field, as plain types and tensors."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: Any, where: str | Path, file_size: int | None = None) -> Checkpoint:
        """The checkpoint ``state`` (what ``torch.load`` read from ``where``), or a one-line IdmlError.

        ``file_size`` bounds the bytes the tensors may declare (views can declare more elements
        than their storage holds).
        """
        try:
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise Invalid(f"its names must be text keys of a dict (got {describe(state)})")
            for f in fields(cls):
                if f.name not in state or (state[f.name] is None and f.metadata["check"] is not None
                                           and f.name not in ("model", "state_dict")):
                    if f.name in ("model", "state_dict"):
                        raise Invalid(f"field {f.name} must be {f.metadata['doc']} (found nothing)")
                    continue
                rule, check = f.metadata["rule"], f.metadata["check"]
                if check is not None:
                    check(state[f.name], f.name)
                elif (problem := rule.problem(f"field {f.name}", state[f.name], specific=False)) is not None:
                    raise Invalid(problem)
            checkpoint = cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})
            _check_sizes(checkpoint, file_size)
        except Invalid as exc:
            raise IdmlError(f"{where} is not an idml checkpoint ({exc})") from exc
        return checkpoint

    def require(self, names: Iterable[str], where: str | Path) -> None:
        """Refuse a checkpoint lacking any of the fields ``names`` (what a consumer needs)."""
        for name in names:
            if getattr(self, name) is None:
                f = next(f for f in fields(self) if f.name == name)
                words = f.metadata["rule"].words if f.metadata["rule"] is not None else f"be {f.metadata['doc']}"
                raise IdmlError(f"{where} is not an idml checkpoint (field {name} must {words}, found nothing)")


# -- consistency: between fields, and with the tensors ------------------------------------------------------
def _tensors(value: Any) -> Iterable[torch.Tensor]:
    """Every tensor anywhere in ``value``, each object once (containers may be shared)."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _check_sizes(ckpt: Checkpoint, file_size: int | None) -> None:
    """Sizes declared by the model settings, and by the tensors, against what the file holds.

    Rebuilding the network allocates what ``model`` declares: a 0.7 MB file declaring
    ``uncertainty_dim`` 4e6 cost 1.8 GB before the weights were compared. Each setting that
    sizes the network is therefore checked against the tensors actually in ``state_dict``:
    the head's widths exactly, ``depth`` (every layer has at least one weight tensor) and
    PyramidNet's ``alpha`` (its widest layer) as upper bounds. And a tensor can be a view that
    declares far more elements than its storage holds (stride 0), so the tensors' total size
    may not exceed the file's. The moving average must have the weights' names and shapes.
    """
    model, weights = ckpt.model, ckpt.state_dict
    fc, unc = weights.get("head.fc.weight"), weights.get("head.uncertainty.weight")
    rows = fc.shape[0] if fc is not None and fc.dim() == 2 else None
    if fc is not None and rows is None:
        raise Invalid(f"field state_dict['head.fc.weight'] must be a matrix (got {describe(fc)})")
    if model.get("num_classes") is not None and rows is not None and model["num_classes"] != rows:
        raise Invalid(f"field model.num_classes must be the {rows} rows of head.fc.weight (got {model['num_classes']})")
    if ckpt.class_names is not None and rows is not None and len(ckpt.class_names) != rows:
        raise Invalid(f"field class_names must be {rows} names (the rows of head.fc.weight), found "
                      f"{len(ckpt.class_names)} names")
    if fc is not None and model.get("ism") is False and unc is not None:
        raise Invalid("field model.ism must be true: state_dict holds head.uncertainty.weight (got False)")
    if fc is not None and model.get("ism") is True and unc is None:
        raise Invalid("field model.ism must be false: state_dict has no head.uncertainty.weight (got True)")
    dim = model.get("uncertainty_dim")
    if dim is not None and model.get("ism", True):
        width = unc.shape[0] if unc is not None and unc.dim() == 2 else None
        if width != dim:
            raise Invalid(f"field model.uncertainty_dim must be the rows of head.uncertainty.weight ({width}) "
                          f"(got {dim})")
    net_type = model.get("net_type", "")
    if ":" not in net_type and model["depth"] > len(weights):
        raise Invalid(f"field model.depth must be at most the {len(weights)} tensors of state_dict "
                      f"(got {model['depth']})")
    if net_type.lower() == "pyramidnet" and "alpha" in model:
        widest = max((max(t.shape, default=1) for t in weights.values()), default=0)
        if model["alpha"] > widest:
            raise Invalid(f"field model.alpha must be at most {widest}, the widest layer of state_dict "
                          f"(got {model['alpha']})")
    if ckpt.ema is not None:
        for name, tensor in ckpt.ema["state_dict"].items():
            if name not in weights or tensor.shape != weights[name].shape:
                raise Invalid(f"field ema.state_dict[{describe(name)}] must be shaped like the weight of that name "
                              f"(got {describe(tensor)})")
    if file_size is not None:
        declared = sum(t.numel() * t.element_size() for t in _tensors(ckpt.to_state()))
        if declared > file_size:
            raise Invalid(f"the tensors must take at most the file's {file_size} bytes, found {declared} bytes "
                          "declared (views larger than their storage)")


def check_weights(expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], where: str | Path) -> None:
    """The saved weights against those of the network the settings build (names, shapes, kinds; on
    the meta device, so nothing is allocated), and their values (finite, not diverged)."""
    def fail(detail: str) -> IdmlError:
        return IdmlError(f"{where}: weights do not fit the saved model settings ({detail})")

    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"] if unexpected else [])
        raise fail("; ".join(parts))
    for name, want in expected.items():
        got = saved[name]
        if got.shape != want.shape:
            raise fail(f"{name} has shape {tuple(got.shape)}, the settings build {tuple(want.shape)}")
        floating = got.dtype.is_floating_point
        if got.dtype.is_complex or got.dtype == torch.bool or floating != want.dtype.is_floating_point:
            raise fail(f"{name} is {got.dtype}, the network holds {want.dtype}")
    problem = weights_problem(saved)
    if problem is not None:
        raise IdmlError(f"{where} holds diverged weights ({problem}): no --lr can continue them and no prediction "
                        "from them means anything; use an earlier checkpoint, or train again with a lower --lr")


def check_optimizer_fits(saved: dict[str, Any], params: Sequence[torch.Tensor], where: str | Path) -> None:
    """Refuse an optimiser state whose per-parameter tensors do not have their parameters' shapes.

    ``Optimizer.load_state_dict`` only compares the number of parameters per group: a momentum
    buffer of another shape loads, and the first training step dies with a traceback. Call this
    with the optimiser's parameters, in ``param_groups`` order, before loading ``saved`` (a
    state_dict that :meth:`Checkpoint.from_state` has already checked).
    """
    ids = [index for group in saved["param_groups"] for index in group["params"]]
    if len(ids) != len(params):
        raise IdmlError(f"{where} does not fit this model's optimiser: it holds {len(ids)} parameters' state, "
                        f"the model has {len(params)}")
    shapes = dict(zip(ids, (tuple(p.shape) for p in params), strict=True))
    for index, entry_state in saved["state"].items():
        for key, value in entry_state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shapes[index]:
                raise IdmlError(f"{where} does not fit this model's optimiser: optimizer.state[{index}].{key} has "
                                f"shape {tuple(value.shape)}, its parameter {shapes[index]}")
