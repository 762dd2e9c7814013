"""Checkpoint files: written atomically, read without unpickling code, checked before anything uses them.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts
(:meth:`idml.checkpoint.schema.Checkpoint.to_state`), so ``torch.load(path, weights_only=True)``
reads it. It is written through :func:`idml.files.atomic_write`: a crash or a full disk at any
moment leaves the previous file intact.

Loading is where hostile or damaged files arrive, so :func:`load_checkpoint` checks, in order:

1. that the file can be read at all ("cannot read": permissions, not corruption);
2. its zip structure and every member's CRC32: torch.load itself reads a tensor whose bytes
   were flipped without complaint ("truncated or corrupt");
3. what torch's restricted unpickler refuses ("tampered": globals no checkpoint contains);
4. the type and range of every field idml writes, and sizes the model settings declare against
   the tensors really present (:mod:`idml.checkpoint.schema`): eval, predict and resume then
   never meet a wrong type, and a small file cannot declare a model of gigabytes.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import torch

from idml.checkpoint.schema import Checkpoint
from idml.errors import IdmlError, describe, one_line
from idml.files import atomic_write, open_to_read


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path``, atomically (see :func:`idml.files.atomic_write`)."""
    state = checkpoint.to_state()
    return atomic_write(path, lambda fh: torch.save(state, fh))


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
                    raise _corrupt(path, f"member {describe(info.filename)} is compressed, which torch.save never does")
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        raise _corrupt(path, f"not the zip archive torch.save writes ({exc})") from exc
    except (EOFError, ValueError, zlib.error, NotImplementedError, OverflowError) as exc:
        raise _corrupt(path, f"damaged zip archive ({type(exc).__name__}: {exc})") from exc
    if bad is not None:
        raise _corrupt(path, f"member {describe(bad)} fails its CRC check")


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint safely (``weights_only=True``) and check it; any failure is one line.

    The messages keep the causes apart: "does not exist", "cannot read" (permissions),
    "truncated or corrupt", "refusing to load ... tampered", "is not an idml checkpoint (field X
    must be Y)". See the module docstring for what is checked.
    """
    state, size = safe_load(path, map_location)
    return Checkpoint.from_state(state, path, size)


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, int]:
    """Steps 1 to 3 of :func:`load_checkpoint` (readable, intact, nothing but tensors and plain
    containers) for any file ``torch.save`` wrote, e.g. a state_dict for ``--init_from``; returns
    what it holds and the file's size."""
    path = Path(path)
    with open_to_read(path, "checkpoint") as fh:  # one handle for the checks and the load
        try:
            size = os.fstat(fh.fileno()).st_size
            _check_archive(fh, path)
            fh.seek(0)
        except OSError as exc:  # the disk failed while reading, e.g. EIO
            raise IdmlError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
        return _torch_load(fh, path, map_location), size
