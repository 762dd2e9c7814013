"""The CIFAR reader on the official archive format (Python 2 pickles) and on Python 3 pickles."""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import fake_data
from expect import one_line_message as assert_one_line_error
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
    assert_one_line_error(info, "data_batch_3")
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
    assert_one_line_error(info, "test_batch", "truncated")


def test_empty_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    assert_one_line_error(info, "data_batch_2")


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
    assert_one_line_error(info, "data_batch_4", fragment)


def test_not_a_dict(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    fake_data.write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", [1, 2, 3])
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    assert_one_line_error(info, "test_batch", "'data'")


@pytest.mark.parametrize("missing", ["data_batch_5", "test_batch"])
def test_missing_batch_file(tmp_path: Path, missing: str) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / missing).unlink()
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    assert_one_line_error(info, missing, "cifar.html")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar("cifar100", tmp_path)
    assert_one_line_error(info, "cifar-100-python", "train", "test", "meta")


def test_missing_meta(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path)
    assert_one_line_error(info, "batches.meta")


def test_meta_with_wrong_number_of_names(tmp_path: Path) -> None:
    fake_data.make_cifar100(tmp_path, n_train=10, n_test=5)
    fake_data.write_pickle(tmp_path / "cifar-100-python" / "meta", {"fine_label_names": ["a", "b"]})
    with pytest.raises(DataError) as info:
        load_cifar("cifar100", tmp_path)
    assert_one_line_error(info, "meta", "fine_label_names")
