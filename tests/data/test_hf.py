"""``--dataset hf:<path>``: Hugging Face datasets built on disk (save_to_disk, imagefolder, parquet),
read without network access, trained and evaluated; bad datasets are one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fake_data
from expect import one_error_line
from idml.data.build import build_data
from idml.data.types import DataRequest
from runs import load, one_thread  # noqa: F401 - autouse fixture
from runs import run_idml as idml

datasets = pytest.importorskip("datasets")
CPU = torch.device("cpu")
SMALL_NET = ["--net_type", "resnet", "--depth", "8", "--no-bottleneck", "--device", "cpu", "--amp", "off",
             "-j", "0", "--batch_size", "8", "--no-verbose", "--epochs", "1"]
NAMES = ["cat", "dog", "owl"]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_dataset's Arrow cache in the test's folder, never the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def split(n: int, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    labels = [i % 3 for i in range(n)]
    pixels = [np.clip(rng.normal(60 + 60 * y, 30, size=(40, 36, 3)), 0, 255).astype(np.uint8) for y in labels]
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"picture": [Image.fromarray(p) for p in pixels], "kind": labels},
                                      features=features)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "saved"
    datasets.DatasetDict({"train": split(24, 0), "validation": split(9, 1)}).save_to_disk(str(path))
    return path




def test_train_and_eval_a_saved_dataset(saved: Path, tmp_path: Path, capsys) -> None:
    code, out, err = idml(["train", "--dataset", f"hf:{saved}", "--image_key", "picture", "--label_key", "kind",
                           "--output_dir", str(tmp_path), "--expname", "hf", *SMALL_NET], capsys)
    assert code == 0, err
    assert f"=> data: hf:{saved}: 24 training and 9 validation images, 3 classes" in out
    state = load(tmp_path / "hf" / "checkpoint.pth.tar")
    assert state["class_names"] == NAMES and state["model"]["dataset"] == f"hf:{saved}"
    code, out, err = idml(["eval", "--checkpoint", str(tmp_path / "hf" / "checkpoint.pth.tar"), "--json",
                           "--device", "cpu", "-j", "0"], capsys)  # keys and input size from the checkpoint
    assert code == 0, err
    assert json.loads(out)["test_images"] == 9 and json.loads(out)["top1_err"] == pytest.approx(state["best_err1"])


def test_hf_images_equal_the_same_images_as_files(saved: Path, tmp_path: Path) -> None:
    """An hf dataset is read exactly as a folder of the same images."""
    folder = tmp_path / "as_files"
    for name, split_name in (("train", "train"), ("val", "validation")):
        table = datasets.load_from_disk(str(saved))[split_name]
        for i, row in enumerate(table):
            target = folder / name / NAMES[row["kind"]]
            target.mkdir(parents=True, exist_ok=True)
            row["picture"].save(target / f"{i:03d}.png")
    req = {"batch_size": 64, "workers": 0, "image_key": "picture", "label_key": "kind"}
    hf = build_data(DataRequest(f"hf:{saved}", "unused", **req), CPU)
    files = build_data(DataRequest("folder", folder, **req), CPU)
    assert hf.class_names == files.class_names and hf.mean == pytest.approx(files.mean)
    order = lambda data: data.test.labels.argsort(stable=True)  # noqa: E731 - files are sorted by class
    assert torch.equal(hf.test.images[order(hf)], files.test.images)


def test_imagefolder_and_parquet_directories(tmp_path: Path) -> None:
    folder = tmp_path / "imagefolder"
    fake_data.make_image_folder(folder, per_class=4, val_per_class=2, size=(20, 20))
    (folder / "val").rename(folder / "validation")
    data = build_data(DataRequest(f"hf:{folder}", "unused", batch_size=4, workers=0), CPU)
    assert data.class_names == ["blue", "green", "red"] and len(data.train.labels) == 12

    parquet = tmp_path / "parquet"
    parquet.mkdir()
    split(12, 0).to_parquet(str(parquet / "train.parquet"))
    split(6, 1).to_parquet(str(parquet / "test.parquet"))
    data = build_data(DataRequest(f"hf:{parquet}", "unused", batch_size=4, workers=0, image_key="picture",
                                  label_key="kind"), CPU)
    assert len(data.test.labels) == 6 and len(data.class_names) == 3


@pytest.mark.parametrize(("args", "fragments"), [
    (["--image_key", "image", "--label_key", "kind"], ["has no column 'image'", "'picture', 'kind'", "--image_key"]),
    (["--image_key", "picture", "--label_key", "kind", "--dataset", "hf:{missing}"], ["no such folder"]),
    (["--image_key", "kind", "--label_key", "kind"], ["holds int (0), not an image", "--image_key"]),
])
def test_bad_datasets_are_one_line(saved: Path, tmp_path: Path, capsys, args: list[str], fragments) -> None:
    args = [a.replace("{missing}", str(tmp_path / "missing")) for a in args]
    code, _, err = idml(["train", "--dataset", f"hf:{saved}", *args, "--output_dir", str(tmp_path), *SMALL_NET],
                        capsys)
    one_error_line(err, *fragments, code=code)


def test_a_dataset_without_a_validation_split_is_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "only_train"
    datasets.DatasetDict({"train": split(6, 0)}).save_to_disk(str(path))
    code, _, err = idml(["train", "--dataset", f"hf:{path}", "--image_key", "picture", "--label_key", "kind",
                         "--output_dir", str(tmp_path), *SMALL_NET], capsys)
    one_error_line(err, "must hold a 'train' split and a 'validation'", "it holds train", code=code)


def test_without_the_datasets_package_the_run_says_how_to_install_it(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    code, _, err = idml(["train", "--dataset", "hf:/anywhere", "--output_dir", str(tmp_path), *SMALL_NET], capsys)
    one_error_line(err, "--dataset hf:<path> needs idml[hf]", "pip install -e '.[hf]'", code=code)
