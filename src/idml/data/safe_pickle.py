"""A restricted unpickler for the official CIFAR archives.

The archives are pickles (written by Python 2), and a plain ``pickle.load`` runs whatever code a
tampered file names. This unpickler resolves only the few globals that a pickled NumPy array
needs, so a hostile archive fails with :class:`DataError` instead of executing anything.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from idml.errors import DataError

try:  # NumPy >= 2 moved the array internals; older pickles still name numpy.core.
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct, scalar

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Protocol-2 pickles written by Python 3 encode bytes through _codecs.encode.
    ("_codecs", "encode"): __import__("codecs").encode,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a function or class that a CIFAR archive never contains."""


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"forbidden global {module}.{name}") from None


def load_pickle(path: Path) -> Any:
    """Load a CIFAR-style pickle safely; Python 2 strings are decoded as latin-1."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except ForbiddenGlobal as exc:
        raise DataError(f"{path} is not a plain CIFAR archive ({exc}); refusing to load it") from None
    except Exception as exc:  # truncated or corrupt streams raise many different types
        raise DataError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); download the archive again"
        ) from None
