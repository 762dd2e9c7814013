"""A restricted unpickler for the official CIFAR archives.

The archives are pickles (written by Python 2), and a plain ``pickle.load`` runs whatever code a
tampered file names. This unpickler resolves only the few globals that a pickled NumPy array
needs, and it never hands the pickle a NumPy callable as such: each global is replaced by a
checking stand-in, because even "harmless" NumPy entry points are dangerous with hostile
arguments:

- ``numpy.ndarray(shape, dtype('O'), buffer=...)`` builds an object array whose "pointers" are
  bytes of the file; touching it (``labels.min()``) dereferences them and segfaults the process.
  ``numpy.ndarray`` therefore resolves to a marker that can only be passed to ``_reconstruct``.
- ``numpy.dtype`` with a crafted ``__setstate__`` makes object, structured or void dtypes; the
  stand-in accepts plain numeric codes (bool, int, uint, float) and bytes/str (``S``/``U``) only,
  and rebuilds the dtype from the code and byte order alone.
- ``_reconstruct(ndarray, shape, ...)`` allocates ``shape`` up front, so a 200-byte pickle could
  ask for gigabytes: only the ``(0,)`` placeholder NumPy itself writes is accepted, and the real
  shape arrives with the raw bytes in ``__setstate__``, whose length must match it exactly.

Memory stays bounded by the file: every array, scalar and byte string built through these
stand-ins is charged to a budget of twice the file's size, so a pickle that reuses one buffer
many times through its memo cannot multiply it either. (Twice, because Python 3's protocol 2
writes an array's bytes as text that ``_codecs.encode`` turns into bytes, which the array then
holds: two allocations of the same data, each no larger than the file.) Anything else fails
with :class:`DataError` instead of executing, crashing or allocating.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from idml.errors import DataError

#: dtype codes a NumPy pickle names for plain data: bool, integers, floats, bytes and str.
_DTYPE_CODE = re.compile(r"(b1|[iu][1248]|f[248]|[SU]\d{0,9})")
#: dtype kinds an array may end up with (after ``__setstate__`` sized a flexible S/U code).
_PLAIN_KINDS = frozenset("biufSU")
_BYTE_ORDERS = frozenset("<>|=")
_MAX_DIMS = 32


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a function or class that a CIFAR archive never contains."""


class UnsafeContent(pickle.UnpicklingError):
    """The pickle uses an allowed global in a way a NumPy-written archive never does."""


def _as_bytes(raw: Any, what: str) -> bytes:
    """Raw data of an array or scalar: ``bytes``, or a Python 2 ``str`` decoded as latin-1."""
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        try:
            return raw.encode("latin1")
        except UnicodeEncodeError as exc:
            raise UnsafeContent(f"{what}: raw data is text beyond latin-1") from exc
    raise UnsafeContent(f"{what}: raw data must be bytes, found {type(raw).__name__}")


def _check_plain(dtype: np.dtype, what: str) -> np.dtype:
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafeContent(f"{what}: dtype {dtype.str!r} is not plain numbers, bytes or text")
    if dtype.itemsize < 1:
        raise UnsafeContent(f"{what}: dtype {dtype.str!r} has no size")
    return dtype


class _NdarrayMarker:
    """What ``numpy.ndarray`` resolves to: usable only as ``_reconstruct``'s first argument."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafeContent("numpy.ndarray is called directly (NumPy pickles go through _reconstruct)")


_NDARRAY = _NdarrayMarker()


class _DtypeProxy:
    """A dtype under construction: ``numpy.dtype(code, align, copy)`` then ``BUILD`` with its state.

    The real dtype is built from the code and the byte order only; the rest of the state (fields,
    sub-arrays, flags) is refused or ignored, so no crafted state reaches NumPy's ``__setstate__``.
    """

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        if isinstance(code, bytes):
            code = code.decode("latin1")
        if not isinstance(code, str) or not _DTYPE_CODE.fullmatch(code):
            raise UnsafeContent(f"numpy.dtype({code!r}): only plain numbers, bytes or text are allowed")
        if not isinstance(align, bool | int) or not isinstance(copy, bool | int):
            raise UnsafeContent("numpy.dtype: align and copy must be flags")
        self.code = code
        self.dtype: np.dtype | None = None if code[0] in "SU" and code[1:] in ("", "0") else np.dtype(code)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise UnsafeContent(f"numpy.dtype({self.code!r}): unexpected state {_short(state)}")
        _, order, subarray, names, fields, elsize, *_ = state
        if subarray is not None or names is not None or fields is not None or (len(state) == 9 and state[8]):
            raise UnsafeContent(f"numpy.dtype({self.code!r}): structured or sub-array dtypes are not allowed")
        if order not in _BYTE_ORDERS or not isinstance(elsize, int) or isinstance(elsize, bool):
            raise UnsafeContent(f"numpy.dtype({self.code!r}): unexpected state {_short(state)}")
        kind = self.code[0]
        if kind in "SU" and elsize > 0:
            width = elsize // 4 if kind == "U" else elsize
            if kind == "U" and elsize % 4:
                raise UnsafeContent(f"numpy.dtype({self.code!r}): text item size {elsize} is not a multiple of 4")
            dtype = np.dtype(f"{kind}{width}")
        elif self.dtype is not None and elsize in (-1, self.dtype.itemsize):
            dtype = self.dtype
        else:
            raise UnsafeContent(f"numpy.dtype({self.code!r}): item size {elsize} does not fit")
        if order in "<>" and dtype.itemsize > 1 and kind != "S":
            dtype = dtype.newbyteorder(order)
        self.dtype = _check_plain(dtype, f"numpy.dtype({self.code!r})")

    def resolve(self, what: str) -> np.dtype:
        if self.dtype is None:
            raise UnsafeContent(f"{what}: dtype {self.code!r} has no size")
        return self.dtype


def _dtype_of(value: Any, what: str) -> np.dtype:
    if not isinstance(value, _DtypeProxy):
        raise UnsafeContent(f"{what}: the dtype must be built by numpy.dtype, found {type(value).__name__}")
    return value.resolve(what)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _CheckedArray(np.ndarray):
    """An array being unpickled: ``__setstate__`` checks the state before NumPy sees it."""

    def __setstate__(self, state: Any) -> None:
        owner: RestrictedUnpickler | None = self.__dict__.pop("_owner", None)
        if owner is None:
            raise UnsafeContent("an array is rebuilt twice")
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise UnsafeContent(f"array state {_short(state)} is not what NumPy writes")
        shape, dtype_proxy, fortran, raw = state
        if isinstance(shape, list):
            shape = tuple(shape)
        if (not isinstance(shape, tuple) or len(shape) > _MAX_DIMS
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise UnsafeContent(f"array shape {_short(shape)} is not a tuple of sizes")
        dtype = _dtype_of(dtype_proxy, "array")
        if fortran not in (0, 1):  # False/True and Python 2's 0/1
            raise UnsafeContent(f"array order flag {_short(fortran)} is not a boolean")
        data = _as_bytes(raw, "array")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise UnsafeContent(f"array of shape {shape} and dtype {dtype.str} needs {expected} bytes, "
                                f"the file gives {len(data)}")
        owner.charge(expected)
        super().__setstate__((1, shape, dtype, bool(fortran), data))


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data and NumPy arrays of plain dtypes, within ``budget`` bytes of arrays."""

    def __init__(self, file: io.BytesIO, budget: int, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.budget = budget
        self.allowed = {
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy.core.multiarray", "scalar"): self._scalar,
            ("numpy._core.multiarray", "scalar"): self._scalar,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): _DtypeProxy,
            # Protocol-2 pickles written by Python 3 encode bytes through _codecs.encode.
            ("_codecs", "encode"): self._encode,
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError as exc:
            raise ForbiddenGlobal(f"forbidden global {module}.{name}") from exc

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` against the budget: the file must really hold the data it declares."""
        self.budget -= nbytes
        if self.budget < 0:
            raise UnsafeContent("it declares more array data than the file holds")

    def _reconstruct(self, cls: Any, shape: Any, typecode: Any) -> _CheckedArray:
        if cls is not _NDARRAY:
            raise UnsafeContent(f"_reconstruct of {type(cls).__name__}, not numpy.ndarray")
        if (tuple(shape) if isinstance(shape, tuple | list) else shape) != (0,):
            raise UnsafeContent(f"_reconstruct asks to allocate shape {_short(shape)} up front")
        if typecode not in (b"b", "b"):
            raise UnsafeContent(f"_reconstruct with type code {_short(typecode)}")
        array = np.ndarray.__new__(_CheckedArray, (0,), np.uint8)
        array._owner = self
        return array

    def _scalar(self, dtype_proxy: Any, raw: Any = None) -> Any:
        dtype = _dtype_of(dtype_proxy, "numpy scalar")
        data = _as_bytes(raw, "numpy scalar")
        if len(data) != dtype.itemsize:
            raise UnsafeContent(f"numpy scalar of dtype {dtype.str} needs {dtype.itemsize} bytes, got {len(data)}")
        self.charge(len(data))
        return np.frombuffer(data, dtype=dtype)[0]

    def _encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafeContent("_codecs.encode is only used for latin-1 byte strings")
        data = _as_bytes(text, "byte string")
        self.charge(len(data))
        return data


def _plain_arrays(value: Any) -> Any:
    """``value`` with its arrays (top level, or directly in a dict or list) as plain ndarrays."""
    def plain(item: Any) -> Any:
        return item.view(np.ndarray) if isinstance(item, _CheckedArray) else item

    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return plain(value)


def load_pickle(path: Path) -> Any:
    """Load a CIFAR-style pickle safely; Python 2 strings are decoded as latin-1.

    Every failure is a one-line :class:`DataError` naming ``path``: unreadable (permissions),
    refused (forbidden globals, unsafe or oversized arrays) or truncated/corrupt.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        loaded = RestrictedUnpickler(io.BytesIO(data), budget=2 * len(data), encoding="latin1").load()
    except (ForbiddenGlobal, UnsafeContent) as exc:
        raise DataError(f"{path} is not a plain CIFAR archive ({exc}); refusing to load it") from exc
    except RecursionError as exc:
        raise DataError(f"{path} is not a plain CIFAR archive (nested too deeply); refusing to load it") from exc
    except MemoryError as exc:
        raise DataError(f"{path} is not a plain CIFAR archive (it needs more memory than there is)") from exc
    except Exception as exc:  # truncated or corrupt streams raise many different types
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise DataError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {first}); download the archive again"
        ) from exc
    return _plain_arrays(loaded)
