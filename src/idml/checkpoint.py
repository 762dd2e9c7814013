"""Checkpoints: written atomically; loaded without unpickling code, checked before anything uses them.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(path, weights_only=True)`` reads it. Files are written to a temporary file in the
same folder, flushed, fsynced and renamed over the old one: a crash or a full disk at any moment
leaves the previous file intact.

Loading is where hostile or damaged files arrive, so :func:`load_checkpoint` checks, in order:

1. that the file can be read at all ("cannot read": permissions, not corruption);
2. its zip structure and every member's CRC32: torch.load itself reads a tensor whose bytes
   were flipped without complaint ("truncated or corrupt");
3. what torch's restricted unpickler refuses ("tampered": globals no checkpoint contains);
4. the type and range of every field idml writes, and sizes the model settings declare against
   the tensors really present ("not an idml checkpoint (field X must be Y)"): eval, predict and
   resume then never meet a wrong type, and a small file cannot declare a model of gigabytes.

Fields idml does not know are allowed (newer versions add some), and known fields are optional
apart from ``model`` and ``state_dict``: each consumer asks :func:`require_fields` for the ones
it needs.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from idml.data.catalog import dataset_problem
from idml.errors import IdmlError, one_line

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
TEMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_mode() -> int:
    """The permissions a plain ``open(path, "wb")`` would give (mkstemp's are owner-only)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _write_failure(exc: BaseException) -> str:
    """Why a write failed: the OSError behind it ("No space left on device") when there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return one_line(exc)


def atomic_save(state: dict[str, Any], path: str | Path) -> None:
    """Save ``state`` to ``path`` so that ``path`` is always either the old or the new file.

    A failed write (full disk, lost permission) removes its temporary file and raises a one-line
    :class:`IdmlError`; the previous file is untouched.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports failed writes as RuntimeError
        reason = _write_failure(exc)
        raise IdmlError(f"cannot write {path}: {reason}; the previous file, if any, is intact "
                        "(free some space or fix the folder, then continue with --resume auto)") from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)


def remove_stale_temp_files(folder: Path) -> None:
    """Delete temporary files left by a run killed while writing a checkpoint."""
    for name in (CHECKPOINT_NAME, BEST_NAME):
        for stale in folder.glob(f".{name}.*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)



# -- reading the file -----------------------------------------------------------------------------
def _corrupt(path: Path, detail: str) -> IdmlError:
    return IdmlError(f"cannot load checkpoint {path}: {detail}; the file is truncated or corrupt")


def _check_archive(fh: BinaryIO, path: Path) -> None:
    """The zip structure and every member's CRC32, before torch reads any of it.

    torch.save writes an uncompressed zip; torch.load does not verify the CRCs, so a flipped byte
    inside a tensor loads silently as a wrong weight. ``testzip`` reads each member in chunks
    (memory stays small); refusing compressed members keeps the time bounded by the file's size.
    """
    try:
        with zipfile.ZipFile(fh) as archive:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise _corrupt(path, f"member {info.filename!r} is compressed, which torch.save never does")
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        raise _corrupt(path, f"not the zip archive torch.save writes ({exc})") from exc
    except (EOFError, ValueError, zlib.error, NotImplementedError, OverflowError) as exc:
        raise _corrupt(path, f"damaged zip archive ({type(exc).__name__}: {exc})") from exc
    if bad is not None:
        raise _corrupt(path, f"member {bad!r} fails its CRC check")


def _refusal_detail(exc: Exception) -> str:
    """The line of torch's weights_only refusal that names what was refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or [type(exc).__name__])[0][:160]


def _torch_load(fh: BinaryIO, path: Path, map_location: str | torch.device) -> Any:
    try:
        with warnings.catch_warnings():  # e.g. pickle-protocol notes: the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(fh, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported operand" in str(exc):  # not a pickle stream at all: garbage, not tampering
            raise _corrupt(path, "not a checkpoint file") from exc
        raise IdmlError(
            f"refusing to load {path}: it holds Python objects that no checkpoint contains "
            f"({_refusal_detail(exc)}); it may have been tampered with (checkpoints are read with "
            "weights_only=True, which never runs code from the file)"
        ) from exc
    except Exception as exc:
        raise _corrupt(path, one_line(exc)[:200]) from exc


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check it; any failure is one line.

    The messages keep the causes apart: "does not exist", "cannot read" (permissions),
    "truncated or corrupt", "refusing to load ... tampered", "is not an idml checkpoint (field X
    must be Y)". See the module docstring for what is checked.
    """
    state, size = safe_load(path, map_location)
    validate_checkpoint(state, path, size)
    return state


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, int]:
    """Steps 1 to 3 of :func:`load_checkpoint` (readable, intact, nothing but tensors and plain
    containers) for any file ``torch.save`` wrote, e.g. a state_dict for ``--init_from``; returns
    what it holds and the file's size."""
    path = Path(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; one handle for the checks and the load
    except FileNotFoundError as exc:
        raise IdmlError(f"checkpoint {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise IdmlError(f"checkpoint {path} is a folder, not a checkpoint file") from exc
    except OSError as exc:
        raise IdmlError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            _check_archive(fh, path)
            fh.seek(0)
        except OSError as exc:  # the disk failed while reading, e.g. EIO
            raise IdmlError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
        return _torch_load(fh, path, map_location), size


# -- the fields of a checkpoint ---------------------------------------------------------------------
class _Invalid(Exception):
    """One field of a checkpoint is not what idml writes."""

    def __init__(self, field: str, expected: str, value: Any = None, found: str | None = None) -> None:
        self.field = field
        text = found if found is not None else _describe(value)
        super().__init__(f"field {field} must be {expected}, found {text}")


def _describe(value: Any) -> str:
    """A short one-line description; never ``repr`` of containers (deep nesting, huge sizes)."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**30 else "an integer of more than 30 digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str | bytes):
        return f"the {type(value).__name__} {value[:40]!r}{'...' if len(value) > 40 else ''}"
    if isinstance(value, list | tuple | dict):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _is_int(value: Any, low: int | None = None, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and (low is None or value >= low) and (high is None or value <= high))


def _is_real(value: Any, low: float | None = None, high: float | None = None, above: float | None = None) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and (low is None or value >= low) and (high is None or value <= high)
            and (above is None or value > above))


def _is_text(value: Any, longest: int = 10_000) -> bool:
    return isinstance(value, str) and len(value) <= longest


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _is_plain(value: Any, depth: int = 8) -> bool:
    """Scalars, or lists/tuples/str-keyed dicts of plain values nested at most ``depth`` deep."""
    if _is_scalar(value):
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


def _real_list(value: Any, lengths: tuple[int, ...], above: float | None = None) -> bool:
    return (isinstance(value, list | tuple) and len(value) in lengths
            and all(_is_real(v, above=above) for v in value))


#: A field: (what it must be, in words; the test). Each describes what ``Trainer.state()`` writes.
Field = tuple[str, Callable[[Any], bool]]

MODEL_FIELDS: dict[str, Field] = {
    "net_type": ("a network name", lambda v: _is_text(v, 200) and bool(v)),
    "dataset": ("a dataset name (cifar10, cifar100, imagenet, digits, folder or hf:<path>)",
                lambda v: _is_text(v) and dataset_problem(v) is None),
    "depth": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "alpha": ("a finite number", _is_real),
    "bottleneck": ("true or false", lambda v: isinstance(v, bool)),
    "num_classes": ("an integer >= 1 or None", lambda v: v is None or _is_int(v, 1)),
    "ism": ("true or false", lambda v: isinstance(v, bool)),
    "uncertainty_dim": ("an integer >= 1 or None", lambda v: v is None or _is_int(v, 1)),
    "ism_lambda": ("a finite number > 0", lambda v: _is_real(v, above=0)),
    "input_size": ("an image size in pixels (1 to 4096) or None", lambda v: v is None or _is_int(v, 1, 4096)),
}

FIELDS: dict[str, Field] = {
    "epoch": ("an integer >= 0", lambda v: _is_int(v, 0)),
    "arch": ("a network name", lambda v: _is_text(v, 200)),
    "best_err1": ("a percentage", lambda v: _is_real(v, 0, 100)),
    "best_err5": ("a percentage", lambda v: _is_real(v, 0, 100)),
    "config": ("a dict of settings (names to plain values)",
               lambda v: isinstance(v, dict) and _is_plain(v)),
    "class_names": ("a list of class names (text)",
                    lambda v: isinstance(v, list | tuple) and all(_is_text(n) for n in v)),
    "mean": ("a list of 1 or 3 finite numbers", lambda v: _real_list(v, (1, 3))),
    "std": ("a list of 1 or 3 finite numbers > 0", lambda v: _real_list(v, (1, 3), above=0)),
    "input_size": ("an image size in pixels (1 to 4096)", lambda v: _is_int(v, 1, 4096)),
    "step": ("an integer >= 0", lambda v: _is_int(v, 0)),
    "global_batch": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "best_weights": ("'model' or 'ema'", lambda v: v in ("model", "ema")),
    "temperature": ("None or a finite number > 0 (the softmax temperature)",
                    lambda v: v is None or _is_real(v, above=0)),
    "test_at_best": ("None or a dict of test errors", lambda v: v is None or (isinstance(v, dict) and _is_plain(v))),
    "test_at_last": ("None or a dict of test errors", lambda v: v is None or (isinstance(v, dict) and _is_plain(v))),
}

#: The moving average of a --model_ema run (training.ema.ModelEMA.state_dict()).
EMA_FIELDS: dict[str, Field] = {
    "decay": ("a number in [0, 1)", lambda v: _is_real(v, 0) and v < 1),
    "updates": ("an integer >= 0", lambda v: _is_int(v, 0)),
}

#: GradScaler.state_dict() of an enabled scaler; a disabled one writes {}.
SCALER_FIELDS: dict[str, Field] = {
    "scale": ("a finite number > 0", lambda v: _is_real(v, above=0)),
    "growth_factor": ("a finite number > 0", lambda v: _is_real(v, above=0)),
    "backoff_factor": ("a finite number > 0", lambda v: _is_real(v, above=0)),
    "growth_interval": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "_growth_tracker": ("an integer >= 0", lambda v: _is_int(v, 0)),
}

#: Optimiser hyper-parameters torch's optimisers write into each parameter group.
GROUP_FIELDS: dict[str, Field] = {
    "lr": ("a finite number >= 0", lambda v: _is_real(v, 0) or (_is_dense(v) and v.numel() == 1)),
    "momentum": ("a finite number >= 0", lambda v: _is_real(v, 0)),
    "dampening": ("a finite number >= 0", lambda v: _is_real(v, 0)),
    "weight_decay": ("a finite number >= 0", lambda v: _is_real(v, 0)),
    "nesterov": ("true or false", lambda v: isinstance(v, bool)),
    "maximize": ("true or false", lambda v: isinstance(v, bool)),
}

_RNG_WORDS = 624  # Mersenne Twister state: 624 32-bit words and a position
_TORCH_RNG_BYTES = torch.get_rng_state().numel()


def _check_fields(where: str, values: dict, fields: dict[str, Field]) -> None:
    for name, (expected, test) in fields.items():
        if name in values and not test(values[name]):
            raise _Invalid(f"{where}{name}", expected, values[name])


def _check_dict(where: str, value: Any, expected: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _Invalid(where, expected, value)
    return value


def _check_state_dict(value: Any) -> dict[str, torch.Tensor]:
    _check_dict("state_dict", value, "a dict of weight names to tensors")
    for name, tensor in value.items():
        if not _is_dense(tensor):
            raise _Invalid(f"state_dict[{name!r}]", "a dense tensor", tensor)
    return value


def _check_optimizer(value: Any) -> None:
    _check_dict("optimizer", value, "an optimiser state_dict (state and param_groups)")
    groups, states = value.get("param_groups"), value.get("state")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise _Invalid("optimizer.param_groups", "a list of parameter groups", groups)
    ids: set[int] = set()
    for g, group in enumerate(groups):
        params = group.get("params")
        if not isinstance(params, list) or not all(_is_int(p, 0) for p in params) or ids & set(params) \
                or len(set(params)) != len(params):
            raise _Invalid(f"optimizer.param_groups[{g}].params", "a list of distinct parameter indices", params)
        ids |= set(params)
        _check_fields(f"optimizer.param_groups[{g}].", group, GROUP_FIELDS)
        for key, item in group.items():
            if key != "params" and not (_is_plain(item, 2) or (_is_dense(item) and item.numel() == 1)):
                raise _Invalid(f"optimizer.param_groups[{g}].{key}", "a plain setting", item)
    if not isinstance(states, dict):
        raise _Invalid("optimizer.state", "a dict of parameter indices to their state", states)
    for index, state in states.items():
        if index not in ids or not _is_int(index):
            raise _Invalid("optimizer.state", "keyed by the indices of param_groups", found=_describe(index))
        _check_dict(f"optimizer.state[{index}]", state, "a dict of buffers")
        for key, item in state.items():
            if not (_is_dense(item) or _is_scalar(item)):
                raise _Invalid(f"optimizer.state[{index}].{key}", "a tensor or a number", item)


def _check_ema(value: Any, weights: dict[str, torch.Tensor]) -> None:
    _check_dict("ema", value, "the moving average of the weights (state_dict, decay, updates)")
    averaged = _check_dict("ema.state_dict", value.get("state_dict"), "a dict of weight names to tensors")
    for name, tensor in averaged.items():
        if not _is_dense(tensor) or name not in weights or tensor.shape != weights[name].shape:
            raise _Invalid(f"ema.state_dict[{name!r}]", "a dense tensor shaped like the weight of that name", tensor)
    _check_fields("ema.", value, EMA_FIELDS)


def _check_scaler(value: Any) -> None:
    _check_dict("scaler", value, "a GradScaler state_dict")
    if value:  # an enabled scaler's state holds all of these; load_state_dict reads each one
        for name, (expected, _) in SCALER_FIELDS.items():
            if name not in value:
                raise _Invalid(f"scaler.{name}", expected, found="nothing")
        _check_fields("scaler.", value, SCALER_FIELDS)


def _check_rank(r: int, rank: Any) -> None:
    where = f"ranks[{r}]"
    _check_dict(where, rank, "a dict of RNG states")
    for key in ("python", "numpy", "torch", "cuda", "train_meter"):
        if key not in rank:
            raise _Invalid(f"{where}.{key}", "present", found="nothing")
    python = rank["python"]
    if not (isinstance(python, tuple | list) and len(python) == 3 and python[0] == 3
            and isinstance(python[1], tuple | list) and len(python[1]) == _RNG_WORDS + 1
            and all(_is_int(w, 0, 2**32 - 1) for w in python[1]) and python[1][-1] <= _RNG_WORDS
            and (python[2] is None or _is_real(python[2]))):
        raise _Invalid(f"{where}.python", "random.getstate() (version 3, 625 words, gauss)", python)
    numpy = _check_dict(f"{where}.numpy", rank["numpy"], "NumPy's MT19937 state")
    keys = numpy.get("keys")
    if numpy.get("name") != "MT19937":
        raise _Invalid(f"{where}.numpy.name", "'MT19937'", numpy.get("name"))
    if not (_is_dense(keys) and keys.shape == (_RNG_WORDS,) and keys.dtype == torch.int64
            and bool(((keys >= 0) & (keys < 2**32)).all())):
        raise _Invalid(f"{where}.numpy.keys", f"{_RNG_WORDS} 32-bit words (int64)", keys)
    _check_fields(f"{where}.numpy.", numpy, {
        "pos": (f"an integer in [0, {_RNG_WORDS}]", lambda v: _is_int(v, 0, _RNG_WORDS)),
        "has_gauss": ("0 or 1", lambda v: _is_int(v, 0, 1)),
        "gauss": ("a finite number", _is_real),
    })
    for key in ("pos", "has_gauss", "gauss"):
        if key not in numpy:
            raise _Invalid(f"{where}.numpy.{key}", "present", found="nothing")
    cpu = rank["torch"]
    if not (_is_dense(cpu) and cpu.dtype == torch.uint8 and cpu.shape == (_TORCH_RNG_BYTES,)):
        raise _Invalid(f"{where}.torch", f"torch.get_rng_state() ({_TORCH_RNG_BYTES} bytes)", cpu)
    cuda = rank["cuda"]  # CUDA's generator state: seed and Philox offset, 8 bytes each (or the seed alone)
    if cuda is not None and not (_is_dense(cuda) and cuda.dtype == torch.uint8 and cuda.shape in ((16,), (8,))):
        raise _Invalid(f"{where}.cuda", "a CUDA RNG state (16 bytes) or None", cuda)
    meter = rank["train_meter"]
    if meter is not None and not (_is_dense(meter) and meter.dtype.is_floating_point and meter.shape == (4,)
                                  and bool(torch.isfinite(meter).all())):
        raise _Invalid(f"{where}.train_meter", "4 finite sums or None", meter)
    grads = rank.get("accum_grads")  # a checkpoint written inside a --grad_accum_steps group
    if grads is not None and not (isinstance(grads, list) and all(g is None or _is_dense(g) for g in grads)):
        raise _Invalid(f"{where}.accum_grads", "a list of gradients (tensors or None) or None", grads)


def _check_ranks(value: Any) -> None:
    if not isinstance(value, list):
        raise _Invalid("ranks", "a list of per-process RNG states", value)
    for r, rank in enumerate(value):
        _check_rank(r, rank)


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


def _check_sizes(state: dict[str, Any], file_size: int | None) -> None:
    """Sizes declared by the model settings, and by the tensors, against what the file holds.

    Rebuilding the network allocates what ``model`` declares: a 0.7 MB file declaring
    ``uncertainty_dim`` 4e6 cost 1.8 GB before the weights were compared. Each setting that
    sizes the network is therefore checked against the tensors actually in ``state_dict``:
    the head's widths exactly, ``depth`` (every layer has at least one weight tensor) and
    PyramidNet's ``alpha`` (its widest layer) as upper bounds. And a tensor can be a view that
    declares far more elements than its storage holds (stride 0), so the tensors' total size
    may not exceed the file's.
    """
    model, weights = state["model"], state["state_dict"]
    fc, unc = weights.get("head.fc.weight"), weights.get("head.uncertainty.weight")
    rows = fc.shape[0] if fc is not None and fc.dim() == 2 else None
    if fc is not None and rows is None:
        raise _Invalid("state_dict['head.fc.weight']", "a matrix", fc)
    if model.get("num_classes") is not None and rows is not None and model["num_classes"] != rows:
        raise _Invalid("model.num_classes", f"the {rows} rows of head.fc.weight", model["num_classes"])
    if "class_names" in state and rows is not None and len(state["class_names"]) != rows:
        raise _Invalid("class_names", f"{rows} names (the rows of head.fc.weight)",
                       found=f"{len(state['class_names'])} names")
    if fc is not None and model.get("ism") is False and unc is not None:
        raise _Invalid("model.ism", "true: state_dict holds head.uncertainty.weight", model["ism"])
    if fc is not None and model.get("ism") is True and unc is None:
        raise _Invalid("model.ism", "false: state_dict has no head.uncertainty.weight", model["ism"])
    dim = model.get("uncertainty_dim")
    if dim is not None and model.get("ism", True):
        width = unc.shape[0] if unc is not None and unc.dim() == 2 else None
        if width != dim:
            raise _Invalid("model.uncertainty_dim", f"the rows of head.uncertainty.weight ({width})", dim)
    net_type = model.get("net_type", "")
    if "depth" in model and ":" not in net_type and model["depth"] > len(weights):
        raise _Invalid("model.depth", f"at most the {len(weights)} tensors of state_dict", model["depth"])
    if net_type.lower() == "pyramidnet" and "alpha" in model:
        widest = max((max(t.shape, default=1) for t in weights.values()), default=0)
        if not 0 < model["alpha"] <= widest:
            raise _Invalid("model.alpha", f"in (0, {widest}] (the widest layer of state_dict)", model["alpha"])
    if file_size is not None:
        declared = sum(t.numel() * t.element_size() for t in _tensors(state))
        if declared > file_size:
            raise _Invalid("the tensors", f"at most the file's {file_size} bytes",
                           found=f"{declared} bytes declared (views larger than their storage)")


def _validate(state: Any, file_size: int | None) -> None:
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise _Invalid("names", "text keys of a dict", state)
    for name, expected in (("model", "the model settings (a dict)"), ("state_dict", "the weights (a dict)")):
        if name not in state:
            raise _Invalid(name, expected, found="nothing")
    _check_fields("model.", _check_dict("model", state["model"], "a dict of model settings"), MODEL_FIELDS)
    _check_state_dict(state["state_dict"])
    _check_fields("", state, FIELDS)
    for name, check in (("optimizer", _check_optimizer), ("scaler", _check_scaler), ("ranks", _check_ranks)):
        if name in state:
            check(state[name])
    if state.get("ema") is not None:
        _check_ema(state["ema"], state["state_dict"])
    _check_sizes(state, file_size)


def validate_checkpoint(state: Any, path: str | Path, file_size: int | None = None) -> None:
    """Raise a one-line :class:`IdmlError` unless ``state`` has the structure idml writes.

    Known fields must have their types and ranges, unknown fields are allowed, and sizes are
    checked against ``file_size`` when given. See :func:`_check_sizes`.
    """
    try:
        _validate(state, file_size)
    except _Invalid as exc:
        raise IdmlError(f"{path} is not an idml checkpoint ({exc})") from exc


def require_fields(state: dict[str, Any], path: str | Path, names: Iterable[str]) -> None:
    """Refuse a checkpoint lacking any of ``names`` ("model.depth" names a model setting).

    :func:`load_checkpoint` has checked the type of each field present; what a consumer needs
    beyond ``model`` and ``state_dict`` differs (eval needs ``mean``, resume ``optimizer``).
    """
    for name in names:
        holder, _, key = name.rpartition(".")
        values = state.get(holder, {}) if holder else state
        if key not in values:
            table = MODEL_FIELDS if holder == "model" else FIELDS
            expected = table[key][0] if key in table else "present"
            raise IdmlError(f"{path} is not an idml checkpoint (field {name} must be {expected}, found nothing)")


def check_optimizer_fits(saved: dict[str, Any], params: Sequence[torch.Tensor], path: str | Path) -> None:
    """Refuse an optimiser state whose per-parameter tensors do not have their parameters' shapes.

    ``Optimizer.load_state_dict`` only compares the number of parameters per group: a momentum
    buffer of another shape loads, and the first training step dies with a traceback. Call this
    with the optimiser's parameters, in ``param_groups`` order, before loading ``saved`` (a
    state_dict that :func:`load_checkpoint` has already checked).
    """
    ids = [index for group in saved["param_groups"] for index in group["params"]]
    if len(ids) != len(params):
        raise IdmlError(f"{path} does not fit this model's optimiser: it holds {len(ids)} parameters' state, "
                        f"the model has {len(params)}")
    shapes = dict(zip(ids, (tuple(p.shape) for p in params), strict=True))
    for index, entry in saved["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shapes[index]:
                raise IdmlError(f"{path} does not fit this model's optimiser: optimizer.state[{index}].{key} has "
                                f"shape {tuple(value.shape)}, its parameter {shapes[index]}")
