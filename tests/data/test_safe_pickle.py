"""The restricted CIFAR unpickler against crafted pickles: memory safety, size caps, real archives.

Every hostile pickle here is built byte by byte (Python 2 style, protocol 2) or with ``pickle``
itself (protocol 4), the two forms a CIFAR archive takes. The object-array case used to segfault
the process, so it runs in a subprocess: a regression shows up as a signal, not a dead pytest.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import idml
from idml.data.cifar import load_cifar
from idml.data.safe_pickle import load_pickle
from idml.errors import DataError

SRC = Path(idml.__file__).resolve().parents[1]


# -- a Python 2 pickle writer (protocol 2 opcodes only, strings as Python 2 str) --------------------
def s(data: bytes) -> bytes:
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data


def i(value: int) -> bytes:
    return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def dtype(code: bytes, order: bytes = b"|", elsize: int = -1, flags: int = 0, fields: bytes = b"NNN") -> bytes:
    return (glob("numpy", "dtype") + tup(s(code), i(0), i(1)) + b"R"
            + b"(" + i(3) + s(order) + fields + i(elsize) + i(-1) + i(flags) + b"tb")


def array(raw: bytes, shape: tuple[int, ...], dt: bytes, head_shape: tuple[int, ...] = (0,)) -> bytes:
    head = glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray") + tup(*map(i, head_shape))
    return head + s(b"b") + b"\x87R" + tup(i(1), tup(*map(i, shape)), dt, b"\x89", s(raw)) + b"b"


def py2_bytes(raw: bytes) -> bytes:
    """bytes (not str) in a protocol-2 stream: what Python 3 writes, through _codecs.encode."""
    return glob("_codecs", "encode") + tup(s(raw), s(b"latin1")) + b"R"


def ndarray_call(shape: tuple[int, ...], dt: bytes, buffer: bytes | None) -> bytes:
    args = [tup(*map(i, shape)), dt] + ([py2_bytes(buffer)] if buffer is not None else [])
    return glob("numpy", "ndarray") + tup(*args) + b"R"


def batch(labels: bytes, n: int = 3) -> bytes:
    """A CIFAR-10 batch dict (``data`` a valid N x 3072 uint8 array) with the given labels."""
    data = array(bytes(n * 3072), (n, 3072), dtype(b"u1"))
    return b"\x80\x02}(" + s(b"data") + data + s(b"labels") + labels + b"u."


def write_cifar10(root: Path, labels_pickle: bytes | None = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = b"](" + i(0) + i(1) + i(2) + b"e"
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(batch(good))
    if labels_pickle is not None:
        (folder / "data_batch_1").write_bytes(labels_pickle)
    names = b"](" + b"".join(s(f"class{k}".encode()) for k in range(10)) + b"e"
    (folder / "batches.meta").write_bytes(b"\x80\x02}(" + s(b"label_names") + names + b"u.")
    return folder


class ObjectArrayOverFileBytes:
    """Pickles (protocol 4) as ``numpy.ndarray((3,), dtype('O'), b'AAAA...')``."""

    def __reduce__(self):
        return (np.ndarray, ((3,), np.dtype(object), b"A" * 24))


def object_array_pickles() -> dict[str, bytes]:
    data = np.zeros((3, 3072), dtype=np.uint8)
    return {
        "python2_protocol2": batch(ndarray_call((3,), dtype(b"O8", flags=63), b"A" * 24)),
        "python3_protocol4": pickle.dumps({"data": data, "labels": ObjectArrayOverFileBytes()}, protocol=4),
    }


# -- the segfault of issue 11 --------------------------------------------------------------------
PROBE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from idml.data.cifar import load_cifar
    from idml.data.safe_pickle import load_pickle
    from idml.errors import DataError
    root = Path(sys.argv[1])
    try:
        batch = load_pickle(root / "cifar-10-batches-py" / "data_batch_1")
        print("LOADED", repr(batch["labels"]), batch["labels"].min(), flush=True)  # dereferences the objects
    except DataError as exc:
        print("PICKLE-REFUSED", exc, flush=True)
    try:
        load_cifar("cifar10", root)
        print("CIFAR-LOADED", flush=True)
    except DataError as exc:
        print("CIFAR-REFUSED", exc, flush=True)
""")


@pytest.mark.parametrize("kind", ["python2_protocol2", "python3_protocol4"])
def test_object_array_over_file_bytes_is_refused_not_a_segfault(tmp_path: Path, kind: str) -> None:
    write_cifar10(tmp_path, object_array_pickles()[kind])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode != -signal.SIGSEGV, "the object array segfaulted the process (exit 139)"
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("PICKLE-REFUSED") and "data_batch_1" in lines[0], done.stdout
    assert lines[1].startswith("CIFAR-REFUSED") and "refusing to load it" in lines[1], done.stdout
    assert "numpy.ndarray is called directly" in lines[0] or "dtype" in lines[0], lines[0]


def test_idml_train_on_the_object_array_archive_exits_2_with_one_line(tmp_path: Path) -> None:
    """The issue's reproduction: ``idml train`` used to die with exit 139 (SIGSEGV)."""
    write_cifar10(tmp_path / "data", object_array_pickles()["python2_protocol2"])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
                        "OMP_NUM_THREADS": "1"}
    args = ["train", "--dataset", "cifar10", "--net_type", "resnet", "--depth", "8", "--no-bottleneck",
            "--device", "cpu", "--workers", "0", "--epochs", "1", "--data_dir", str(tmp_path / "data"),
            "--output_dir", str(tmp_path / "runs")]
    done = subprocess.run([sys.executable, "-m", "idml", *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, f"exit {done.returncode}: {done.stderr[-500:]}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "data_batch_1" in lines[0] and "Traceback" not in done.stderr, done.stderr


# -- the same class: every way to reach a non-plain dtype or a callable NumPy class --------------------
#: (subarray, names, fields) of a structured dtype: None, ('a',), {'a': (dtype('u1'), 0)}
STRUCTURED = b"N" + tup(s(b"a")) + b"}(" + s(b"a") + tup(dtype(b"u1"), i(0)) + b"u"

CLASS_CASES = {
    "object dtype by code": dtype(b"O8"),
    "void dtype": dtype(b"V8", elsize=8),
    "datetime dtype": dtype(b"M8"),
    "structured dtype via its state": dtype(b"u1", fields=STRUCTURED),
    "sub-array dtype via its state": dtype(b"u1", fields=tup(dtype(b"u1"), tup(i(4))) + b"NN"),
    "object array through _reconstruct": array(b"A" * 8, (1,), dtype(b"O8", flags=63)),
    "array whose dtype is not a numpy.dtype": array(b"\x00", (1,), s(b"u1")),
    "ndarray called without a buffer": ndarray_call((3,), dtype(b"u1"), None),
    "ndarray called with a plain buffer": ndarray_call((3,), dtype(b"u1"), b"abc"),
    "_reconstruct of a dtype": glob("numpy.core.multiarray", "_reconstruct") + tup(dtype(b"u1"), tup(i(0)), s(b"b"))
    + b"R",
    "object scalar": glob("numpy.core.multiarray", "scalar") + tup(dtype(b"O8"), s(b"A" * 8)) + b"R",
    "_codecs.encode with another codec": glob("_codecs", "encode") + tup(s(b"x" * 8), s(b"rot13")) + b"R",
}


def in_child(func) -> tuple[int, str]:
    """``func()`` in a forked child: (its wait status, the text it returned or the error it raised).

    A regression in this class of bug is a segfault; in a child it fails one test instead of
    killing pytest with every other result.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's cleanup
        os.close(read_end)
        try:
            text = f"returned {func()}"
        except BaseException as exc:  # everything is reported to the parent
            text = f"{type(exc).__name__}: {exc} | cause {type(exc.__cause__).__name__}"
        os.write(write_end, text.encode()[:50_000])
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        text = fh.read().decode()
    return os.waitpid(pid, 0)[1], text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to isolate a possible segfault")
@pytest.mark.parametrize("case", CLASS_CASES)
def test_non_plain_numpy_content_is_refused(tmp_path: Path, case: str) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(batch(CLASS_CASES[case]))

    def load() -> str:
        labels = load_pickle(path)["labels"]
        return repr(labels)[:100] + f" min {np.min(labels)}"  # touches every element

    status, text = in_child(load)
    assert os.WIFEXITED(status), f"the child died of signal {os.WTERMSIG(status)}: {text!r}"
    assert text.startswith("DataError: "), text
    message, _, cause = text[len("DataError: "):].partition(" | cause ")
    assert "\n" not in message and str(path) in message and "refusing to load it" in message, message
    assert cause in ("UnsafeContent", "ForbiddenGlobal"), cause  # --debug shows the cause


# -- sizes are capped by the file ------------------------------------------------------------------
SIZE_CASES = {
    # the 193-byte pickle of issue 11: 350,000 zero images declared up front
    "_reconstruct allocating the shape": array(b"", (0,), dtype(b"u1"), head_shape=(350_000, 3072)),
    "ndarray allocating the shape": ndarray_call((50_000, 3072), dtype(b"u1"), None),
    "shape larger than its bytes": array(b"\x00" * 16, (350_000, 3072), dtype(b"u1")),
    "shape smaller than its bytes": array(b"\x00" * 16, (2,), dtype(b"u1")),
    "one buffer reused through the memo": b"](" + s(b"\x01" * 60_000) + b"q\x01" + b"".join(
        glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray") + tup(i(0)) + s(b"b") + b"\x87R"
        + tup(i(1), tup(i(60_000)), dtype(b"u1"), b"\x89", b"h\x01") + b"b" for _ in range(2_000)) + b"e",
}


@pytest.mark.parametrize("case", SIZE_CASES)
def test_declared_sizes_are_capped_by_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(batch(SIZE_CASES[case]))
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            load_pickle(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * path.stat().st_size + 5_000_000, f"{peak} bytes allocated for a {path.stat().st_size}-byte file"
    assert "\n" not in str(info.value) and "refusing to load it" in str(info.value)


def test_the_memo_case_declares_far_more_than_its_file() -> None:
    """The reuse case above is only meaningful if its declared arrays dwarf the file."""
    assert 100 * len(SIZE_CASES["one buffer reused through the memo"]) < 2_000 * 60_000


# -- what real archives hold still loads ---------------------------------------------------------
def test_python2_plain_arrays_and_scalars_round_trip(tmp_path: Path) -> None:
    values = np.arange(6, dtype="<i8")
    big = np.array([1, 256, -3], dtype=">i4")
    path = tmp_path / "p"
    path.write_bytes(b"\x80\x02}(" + s(b"little") + array(values.tobytes(), (2, 3), dtype(b"i8", b"<"))
                     + s(b"big") + array(big.tobytes(), (3,), dtype(b"i4", b">"))
                     + s(b"floats") + array(np.float32([0.5, 2]).tobytes(), (2,), dtype(b"f4", b"<"))
                     + s(b"text") + array(b"ab\x00cd\x00", (2,), dtype(b"S3", elsize=3))
                     + s(b"scalar") + glob("numpy.core.multiarray", "scalar") + tup(dtype(b"i8", b"<"),
                                                                                s(struct.pack("<q", 7))) + b"R"
                     + s(b"raw") + py2_bytes(b"\xff\x00") + b"u.")
    loaded = load_pickle(path)
    assert type(loaded["little"]) is np.ndarray and loaded["little"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert loaded["big"].tolist() == [1, 256, -3]  # read as big-endian (NumPy then keeps it native)
    assert loaded["floats"].tolist() == [0.5, 2.0]
    assert loaded["text"].tolist() == [b"ab", b"cd"]
    assert loaded["scalar"] == 7 and loaded["raw"] == b"\xff\x00"


def test_python3_pickles_of_plain_arrays_round_trip(tmp_path: Path) -> None:
    obj = {"u8": np.arange(12, dtype=np.uint8).reshape(3, 4), "i8": np.array([-1, 5]), "U": np.array(["cat", "ox"]),
           "S": np.array([b"a", b"bc"]), "f8": np.float64(0.25), "b": np.array([True, False]), "n": [1, 2], "t": "x"}
    for protocol in (2, 3, 4):
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        loaded = load_pickle(path)
        assert loaded.keys() == obj.keys()
        for key, value in obj.items():
            assert np.array_equal(loaded[key], value) and np.asarray(loaded[key]).dtype == np.asarray(value).dtype


def test_a_plain_archive_still_loads_through_load_cifar(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    data = load_cifar("cifar10", tmp_path)
    assert data["train"][0].shape == (15, 3, 32, 32) and data["train"][1].tolist() == [0, 1, 2] * 5
    assert data["class_names"] == [f"class{k}" for k in range(10)]
