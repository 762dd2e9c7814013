"""The CIFAR reader on the official archive format (Python 2 pickles) and on Python 3 pickles.

CIFAR archives whose values unpickle fine but are not what a CIFAR batch holds.

Each must give one :class:`DataError` line naming the file: never a traceback, never labels
silently truncated or names silently mangled, never memory out of proportion to the file.
"""

from __future__ import annotations

import errno
import os
import pickle
import shlex
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import fake_data
from expect import one_line_message
from idml.data.cifar import load_cifar
from idml.errors import DataError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_batch(n: int, seed: int, labels: list[int] | None = None) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "batch_label": f"batch {seed}",
        "labels": labels if labels is not None else [int(v) for v in rng.integers(0, 10, n)],
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "filenames": [f"f{j}.png" for j in range(n)],
    }


def write_cifar10(root: Path, py2: bool = True, n: int = 3) -> dict[str, dict]:
    """A CIFAR-10 folder whose batch contents the test knows."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": cifar10_batch(n, i) for i in range(1, 6)} | {"test_batch": cifar10_batch(n, 9)}
    for name, batch in batches.items():
        fake_data.write_pickle(folder / name, batch, py2)
    fake_data.write_pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072}, py2)
    return batches


def test_python2_writer_is_what_pickle_reads() -> None:
    """The test helper's hand-written Python 2 stream decodes to the object it was given."""
    batch = cifar10_batch(2, 0)
    loaded = pickle.loads(fake_data.py2_pickle_bytes(batch), encoding="latin1")
    assert loaded.keys() == batch.keys() and loaded["labels"] == batch["labels"]
    assert np.array_equal(loaded["data"], batch["data"]) and loaded["data"].dtype == np.uint8
    assert b"numpy.core.multiarray" in fake_data.py2_pickle_bytes(batch)  # what Python 2's NumPy wrote


@pytest.mark.parametrize("py2", [True, False], ids=["python2_pickles", "python3_pickles"])
def test_cifar10_contents(tmp_path: Path, py2: bool) -> None:
    batches = write_cifar10(tmp_path, py2)
    data = load_cifar("cifar10", tmp_path)
    images, labels = data["train"]
    assert images.shape == (15, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    expected = np.concatenate([b["data"] for b in train]).reshape(-1, 3, 32, 32)
    assert np.array_equal(images.numpy(), expected)
    assert labels.tolist() == [label for b in train for label in b["labels"]]
    val_images, val_labels = data["test"]
    assert val_images.shape == (3, 3, 32, 32) and val_labels.tolist() == batches["test_batch"]["labels"]
    assert data["class_names"] == CIFAR10_NAMES


@pytest.mark.parametrize("py2", [True, False], ids=["python2_pickles", "python3_pickles"])
def test_cifar100_contents_and_fine_labels(tmp_path: Path, py2: bool) -> None:
    fake_data.make_cifar100(tmp_path, n_train=30, n_test=10, py2=py2)
    data = load_cifar("cifar100", tmp_path)
    images, labels = data["train"]
    assert images.shape == (30, 3, 32, 32) and data["test"][0].shape == (10, 3, 32, 32)
    assert labels.tolist() == [i % 100 for i in range(30)]  # the fine labels, not the coarse ones
    assert data["class_names"] == [f"fine_{i}" for i in range(100)]


def test_channel_major_red_plane_first(tmp_path: Path) -> None:
    batches = write_cifar10(tmp_path)
    n, y, x = 1, 5, 7
    batches["data_batch_1"]["data"][:] = 0
    batches["data_batch_1"]["data"][n, 0 * 1024 + y * 32 + x] = 255  # red at (y, x)
    batches["data_batch_1"]["data"][n, 1 * 1024 + 2 * 32 + 3] = 100  # green at (2, 3)
    batches["data_batch_1"]["data"][n, 2 * 1024 + 31 * 32 + 0] = 50  # blue at (31, 0)
    fake_data.write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_1", batches["data_batch_1"])
    images = load_cifar("cifar10", tmp_path)["train"][0]
    assert images[n, 0, y, x] == 255 and images[n, 1, 2, 3] == 100 and images[n, 2, 31, 0] == 50
    assert images[:3].sum() == 255 + 100 + 50  # data_batch_1 comes first


def test_official_readme_batch_meta_name_is_accepted(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "batches.meta").rename(folder / "batch.meta")
    assert load_cifar("cifar10", tmp_path)["class_names"] == CIFAR10_NAMES


class CreatesMarker:
    """Unpickling this opens (so creates) a file: what a hostile archive could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def hostile_pickles(marker: Path) -> dict[str, bytes]:
    command = f"touch {shlex.quote(str(marker))}"
    return {
        "python3_reduce": pickle.dumps({"data": CreatesMarker(marker), "labels": [0]}, protocol=2),
        "python2_os_system": b"cos\nsystem\n(S'" + command.encode() + b"'\ntR.",
    }


@pytest.mark.parametrize("kind", ["python3_reduce", "python2_os_system"])
def test_restricted_unpickler_refuses_code(tmp_path: Path, kind: str) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "marker"
    payload = hostile_pickles(marker)[kind]
    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    target.write_bytes(payload)
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    assert not marker.exists()
    one_line_message(info, "data_batch_3")
    # the payload is live: an ordinary unpickler would have created the marker
    pickle.loads(payload)
    assert marker.exists()
    os.remove(marker)


def test_truncated_pickle(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    one_line_message(info, "test_batch", "truncated")


def test_empty_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    one_line_message(info, "data_batch_2")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"data": np.zeros((3, 3000), dtype=np.uint8)}, "3072"),
        ({"data": np.zeros((3, 3072), dtype=np.int64)}, "uint8"),
        ({"labels": [0, 1]}, "labels"),
        ({"labels": [0, 10, 1]}, "[0, 10)"),
    ],
    ids=["wrong_shape", "wrong_dtype", "label_count", "label_out_of_range"],
)
def test_malformed_batch(tmp_path: Path, change: dict, fragment: str) -> None:
    batches = write_cifar10(tmp_path)
    fake_data.write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_4", batches["data_batch_4"] | change)
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    one_line_message(info, "data_batch_4", fragment)


def test_not_a_dict(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    fake_data.write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", [1, 2, 3])
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    one_line_message(info, "test_batch", "'data'")


@pytest.mark.parametrize("missing", ["data_batch_5", "test_batch"])
def test_missing_batch_file(tmp_path: Path, missing: str) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / missing).unlink()
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    one_line_message(info, missing, "cifar.html")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar("cifar100", tmp_path)
    one_line_message(info, "cifar-100-python", "train", "test", "meta")


def test_missing_meta(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    one_line_message(info, "batches.meta")


def test_meta_with_wrong_number_of_names(tmp_path: Path) -> None:
    fake_data.make_cifar100(tmp_path, n_train=10, n_test=5)
    fake_data.write_pickle(tmp_path / "cifar-100-python" / "meta", {"fine_label_names": ["a", "b"]})
    with pytest.raises(DataError) as info:
        load_cifar("cifar100", tmp_path)
    one_line_message(info, "meta", "fine_label_names")


NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
N = 3


def good_batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"batch_label": "b", "labels": [int(v) for v in rng.integers(0, 10, N)],
            "data": rng.integers(0, 256, size=(N, 3072), dtype=np.uint8)}


def write_cifar10_with(root: Path, protocol: int = 2, **overrides: object) -> Path:
    """A CIFAR-10 folder; ``overrides`` replace keys of data_batch_2 (or, for ``meta``, batches.meta)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    meta = overrides.pop("meta", {"label_names": NAMES})
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batch = good_batch(k) | (overrides if name == "data_batch_2" else {})
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


def refused(root: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", root)
    return one_line_message(info, *fragments)


# -- labels ---------------------------------------------------------------------------------------
BAD_LABELS = {
    "nan": ([0, float("nan"), 1], "nan"),
    "float_9_7": ([0, 9.7, 1], "9.7"),  # used to become class 9 silently
    "integral_float": ([0, 9.0, 1], "9.0"),  # a float is not a class index, even when integral
    "string": ([0, "3", 1], "'3'"),
    "none_item": ([0, None, 1], "None"),
    "nested": ([[0], 1, 2], "a list"),
    "boolean": ([True, 0, 1], "boolean"),
    "huge_int": ([0, 10**40, 1], "more than 30 digits"),
    "numpy_bool": ([np.bool_(True), 0, 1], "boolean"),
    "none": (None, "None"),
    "string_of_digits": ("012", "str"),
    "dict": ({0: 1}, "a dict"),
    "float_array": (np.array([0.0, 9.7, 1.0]), "float64"),
    "bool_array": (np.array([True, False, True]), "bool"),
    "2d_int_array": (np.zeros((3, 1), dtype=np.int64), "(3, 1)"),
    "uint64_beyond_int64": (np.array([0, 2**63, 1], dtype=np.uint64), "[0, 10)"),
    "negative": ([0, -1, 1], "[0, 10)"),
}


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("case", BAD_LABELS)
def test_labels_that_are_not_class_indices(tmp_path: Path, case: str, protocol: int) -> None:
    labels, fragment = BAD_LABELS[case]
    write_cifar10_with(tmp_path, protocol, labels=labels)
    refused(tmp_path, "data_batch_2", "labels", fragment)


GOOD_LABELS = {
    "list_of_ints": [0, 9, 1],
    "tuple": (0, 9, 1),
    "numpy_scalars": [np.int64(0), np.uint8(9), np.int32(1)],
    "int64_array": np.array([0, 9, 1]),
    "uint8_array": np.array([0, 9, 1], dtype=np.uint8),
}


@pytest.mark.parametrize("case", GOOD_LABELS)
def test_integer_labels_of_any_integer_kind_are_exact(tmp_path: Path, case: str) -> None:
    write_cifar10_with(tmp_path, 2, labels=GOOD_LABELS[case])
    labels = load_cifar("cifar10", tmp_path)["train"][1]
    assert labels[N:2 * N].tolist() == [0, 9, 1] and str(labels.dtype) == "torch.int64"


def test_labels_made_of_shared_lists_are_refused_without_expanding_them(tmp_path: Path) -> None:
    """A few kB of pickle can reference one list thousands of times; NumPy would expand it all."""
    row = [0] * 3000
    square = [row] * 3000  # 9 million labels' worth, 3000 references in the file
    write_cifar10_with(tmp_path, 4, labels=[square, square, square])
    size = (tmp_path / "cifar-10-batches-py" / "data_batch_2").stat().st_size
    assert size < 100_000
    tracemalloc.start()
    try:
        refused(tmp_path, "data_batch_2", "labels", "a list")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, f"{peak} bytes to refuse a {size}-byte file"


# -- data ------------------------------------------------------------------------------------------
BAD_DATA = {
    "none": (None, "None"),
    "list_of_lists": ([[0] * 3072] * N, "a list"),
    "string": ("pixels", "str"),
    "bytes": (bytes(N * 3072), "bytes"),
    "dict": ({"r": 1}, "a dict"),
    "float_array": (np.zeros((N, 3072)), "float64"),
    "three_dims": (np.zeros((N, 3, 1024), dtype=np.uint8), "(3, 3, 1024)"),
    "one_dim": (np.zeros(N * 3072, dtype=np.uint8), "3072"),
    "int_scalar": (7, "7"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_data_of_the_wrong_kind(tmp_path: Path, case: str) -> None:
    data, fragment = BAD_DATA[case]
    write_cifar10_with(tmp_path, 4, data=data)
    refused(tmp_path, "data_batch_2", "'data'", "3072", fragment)


# -- label names ------------------------------------------------------------------------------------
def deeply_nested_list_pickle(depth: int) -> bytes:
    """A protocol-2 pickle of {'label_names': [[[...depth...]], 'b', ..., 'j']}: pickle.dumps itself
    cannot write it (its recursion limit), but the unpickler reads it without recursing."""
    nested = b"]" * depth + b"a" * (depth - 1)
    others = b"".join(b"X" + len(n).to_bytes(4, "little") + n.encode() for n in NAMES[1:])
    return b"\x80\x02}X\x0b\x00\x00\x00label_names](" + nested + others + b"es."


def test_deeply_nested_label_name(tmp_path: Path) -> None:
    folder = write_cifar10_with(tmp_path)
    (folder / "batches.meta").write_bytes(deeply_nested_list_pickle(200_000))
    refused(tmp_path, "batches.meta", "label_names", "position 0", "a list")


BAD_NAMES = {
    "int_name": ([1, *NAMES[1:]], "position 0"),
    "none_name": ([*NAMES[:9], None], "position 9"),
    "nested_name": ([[NAMES[0]], *NAMES[1:]], "position 0"),
    "too_few": (NAMES[:9], "10 names"),
    "too_many": ([*NAMES, "extra"], "10 names"),
    "not_a_list": ("airplane automobile", "str"),
    "dict": (dict.fromkeys(NAMES), "a dict"),
    "missing": (None, "None"),
}


@pytest.mark.parametrize("case", BAD_NAMES)
def test_label_names_that_are_not_a_flat_list_of_text(tmp_path: Path, case: str) -> None:
    names, fragment = BAD_NAMES[case]
    write_cifar10_with(tmp_path, 4, meta={"label_names": names} if names is not None else {"num_vis": 3072})
    refused(tmp_path, "batches.meta", "label_names", fragment)


def test_byte_string_names_are_decoded_not_mangled(tmp_path: Path) -> None:
    """str(b'cat') is "b'cat'": names written by Python 3 as bytes must read as 'cat'."""
    names = [n.encode() for n in NAMES[:9]] + ["caf\u00e9".encode()]
    write_cifar10_with(tmp_path, 4, meta={"label_names": names})
    assert load_cifar("cifar10", tmp_path)["class_names"] == [*NAMES[:9], "caf\u00e9"]


# -- unreadable files and folders -------------------------------------------------------------------
def permission_denied(*_args, **_kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def test_unsearchable_folder_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``chmod 000 cifar-10-batches-py`` does for a non-root user: stat raises EACCES."""
    write_cifar10_with(tmp_path)
    monkeypatch.setattr(Path, "is_file", permission_denied)
    message = refused(tmp_path, "cifar-10-batches-py", "Permission denied")
    assert "missing" not in message


@pytest.mark.parametrize("name", ["data_batch_3", "batches.meta"])
def test_unreadable_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    write_cifar10_with(tmp_path)
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: permission_denied() if self.name == name else real(self))
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    assert str(info.value) == f"cannot read {tmp_path / 'cifar-10-batches-py' / name}: Permission denied"
    assert isinstance(info.value.__cause__, PermissionError)  # --debug shows the cause


needs_non_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                                    reason="permissions do not apply to root")


@needs_non_root
@pytest.mark.parametrize("target", ["folder", "file"])
def test_real_chmod_000(tmp_path: Path, target: str) -> None:
    folder = write_cifar10_with(tmp_path)
    path = folder if target == "folder" else folder / "data_batch_1"
    path.chmod(0)
    try:
        refused(tmp_path, "Permission denied")
    finally:
        path.chmod(0o755)
