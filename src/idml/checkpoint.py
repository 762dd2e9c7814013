"""Checkpoints: written atomically, loaded without unpickling arbitrary code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(path, weights_only=True)`` reads it. Files are written to a temporary file in the
same folder, flushed, fsynced and renamed over the old one: a crash or a full disk at any moment
leaves the previous file intact.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from idml.errors import IdmlError

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
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


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
                        "(free some space or fix the folder, then continue with --resume auto)") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)


def remove_stale_temp_files(folder: Path) -> None:
    """Delete temporary files left by a run killed while writing a checkpoint."""
    for name in (CHECKPOINT_NAME, BEST_NAME):
        for stale in folder.glob(f".{name}.*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)


def _refusal_detail(exc: Exception) -> str:
    """The line of torch's weights_only refusal that names what was refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or [type(exc).__name__])[0][:160]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); any failure becomes a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise IdmlError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # e.g. pickle-protocol notes: the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported operand" in str(exc):  # not a pickle stream at all: garbage, not tampering
            raise IdmlError(f"cannot load checkpoint {path}: not a checkpoint file (truncated or corrupt)") from None
        raise IdmlError(
            f"refusing to load {path}: it holds Python objects that no checkpoint contains "
            f"({_refusal_detail(exc)}); it may have been tampered with (checkpoints are read with "
            "weights_only=True, which never runs code from the file)"
        ) from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IdmlError(f"cannot load checkpoint {path}: {first[:200]}; the file is truncated or corrupt") from None
    if not isinstance(state, dict) or "state_dict" not in state or "model" not in state:
        raise IdmlError(f"{path} is not an idml checkpoint (no model settings and weights)")
    return state
