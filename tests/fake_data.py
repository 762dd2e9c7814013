"""Writers of tiny datasets in the exact on-disk formats of the real ones (used by the tests).

The official CIFAR archives were pickled by Python 2: keys and the pixel buffer are Python 2
``str`` objects (pickle opcodes BINSTRING/SHORT_BINSTRING) and the arrays name
``numpy.core.multiarray._reconstruct``. :func:`py2_pickle_bytes` emits that byte stream by hand,
so the tests exercise the real case and not a Python 3 imitation.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def _py2_str(data: bytes) -> bytes:
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    return b"J" + struct.pack("<i", value)


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _array(arr: np.ndarray) -> bytes:
    assert arr.dtype in (np.uint8, np.int64)
    code = b"u1" if arr.dtype == np.uint8 else b"i8"
    order = b"|" if arr.dtype == np.uint8 else b"<"
    dtype = (
        b"cnumpy\ndtype\n" + _tuple([_py2_str(code), _int(0), _int(1)]) + b"R"
        + _tuple([_int(3), _py2_str(order), b"N", b"N", b"N", _int(-1), _int(-1), _int(0)]) + b"b"
    )
    head = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
        + _tuple([_int(0)]) + _py2_str(b"b") + b"\x87R"
    )
    shape = _tuple([_int(s) for s in arr.shape])
    state = _tuple([_int(1), shape, dtype, b"\x89", _py2_str(np.ascontiguousarray(arr).tobytes())])
    return head + state + b"b"


def _value(obj: object) -> bytes:
    if isinstance(obj, dict):
        return b"}(" + b"".join(_value(k) + _value(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, list):
        return b"](" + b"".join(_value(v) for v in obj) + b"e"
    if isinstance(obj, str):
        return _py2_str(obj.encode("latin1"))
    if isinstance(obj, bool | np.bool_):
        raise TypeError("booleans are not used by the CIFAR archives")
    if isinstance(obj, int | np.integer):
        return _int(int(obj))
    if isinstance(obj, np.ndarray):
        return _array(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as a Python 2 pickle")


def py2_pickle_bytes(obj: object) -> bytes:
    """``obj`` as Python 2's ``cPickle.dump(obj, f, protocol=2)`` would have written it."""
    return b"\x80\x02" + _value(obj) + b"."


def write_pickle(path: Path, obj: object, py2: bool = True) -> None:
    path.write_bytes(py2_pickle_bytes(obj) if py2 else pickle.dumps(obj, protocol=4))


def _images(n: int, num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    labels = [int(i % num_classes) for i in range(n)]
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return data, labels


def make_cifar10(root: Path, n_train: int = 20, n_test: int = 10, py2: bool = True, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five training batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        data, labels = _images(n_train // 5, 10, rng)
        write_pickle(folder / f"data_batch_{i}", {
            "batch_label": f"training batch {i} of 5", "labels": labels, "data": data,
            "filenames": [f"img_{i}_{j}.png" for j in range(len(labels))],
        }, py2)
    data, labels = _images(n_test, 10, rng)
    write_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
                                         "filenames": [f"t_{j}.png" for j in range(n_test)]}, py2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_pickle(folder / "batches.meta", {"num_cases_per_batch": n_train // 5, "label_names": names,
                                           "num_vis": 3072}, py2)
    return folder


def make_cifar100(root: Path, n_train: int = 200, n_test: int = 100, py2: bool = True, seed: int = 0) -> Path:
    """``root/cifar-100-python`` with train, test and meta (fine and coarse label names)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        data, labels = _images(n, 100, rng)
        write_pickle(folder / split, {
            "filenames": [f"{split}_{j}.png" for j in range(n)], "batch_label": f"{split} batch",
            "fine_labels": labels, "coarse_labels": [label // 5 for label in labels], "data": data,
        }, py2)
    write_pickle(folder / "meta", {"fine_label_names": [f"fine_{i}" for i in range(100)],
                                   "coarse_label_names": [f"coarse_{i}" for i in range(20)]}, py2)
    (folder / "file.txt~").write_text("")
    return folder


def make_imagenet(root: Path, classes: tuple[str, ...] = ("n01440764", "n01443537", "n01484850"),
                  per_class: int = 4, val_per_class: int = 2, size: tuple[int, int] = (80, 64),
                  seed: int = 0) -> Path:
    """``root/imagenet-1k/{train,val}/<wnid>/*.JPEG`` with small random JPEG images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Path(root) / "imagenet-1k"
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, wnid in enumerate(classes):
            folder = base / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                name = f"{wnid}_{j}.JPEG" if split == "train" else f"ILSVRC2012_val_{c * count + j:08d}.JPEG"
                Image.fromarray(pixels).save(folder / name, format="JPEG")
    return base


#: colour of each class of :func:`make_image_folder` (a network tells them apart within an epoch)
FOLDER_CLASSES = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def make_image_folder(root: Path, per_class: int = 20, val_per_class: int = 5, size: tuple[int, int] = (48, 48),
                      seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``: noisy colour squares made with PIL."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for name, rgb in FOLDER_CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(rng.normal(rgb, 50, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def photo(width: int, height: int, index: int = 0):
    """A window of one of scikit-learn's two sample photographs (a PIL image), resized to width x height:
    real photographic content, for tests where decoding or resampling must meet real images."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    source = Image.fromarray(load_sample_images().images[index])
    return source.resize((width, height), Image.Resampling.LANCZOS, box=(20, 10, 620, 410))


def jpeg(path: Path, img, quality: int = 90, **kwargs) -> Path:
    """``img`` saved as a JPEG at ``path``."""
    img.save(path, format="JPEG", quality=quality, **kwargs)
    return path
