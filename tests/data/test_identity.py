"""Data that changed after training: the checkpoint records what each split held (idml.data.identity),
and idml eval and --resume refuse, with one line, what they cannot do on changed data (a held-out
validation split drawn again, an epoch continued over another file list, other classes); other
changes are notes. Folder datasets, Hugging Face datasets and ImageNet's ImageFolder."""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fake_data
from expect import one_error_line, one_line_message
from idml.checkpoint.io import load_checkpoint
from idml.checkpoint.schema import Checkpoint
from idml.config import TrainConfig
from idml.data.build import build_data
from idml.data.identity import DATA_IDENTITY, changed_splits, split_identity
from idml.data.types import DataRequest
from idml.errors import ConfigError
from idml.training.resume import data_changes
from runs import load, one_thread, run_idml, signal_at  # noqa: F401 - one_thread: autouse fixture

CPU = torch.device("cpu")
NET = ["--net_type", "resnet", "--depth", "8", "--no-bottleneck", "--device", "cpu", "--amp", "off", "-j", "0",
       "--batch_size", "8", "--no-verbose", "--lr", "0.05"]


def folder(root: Path, val: bool) -> Path:
    """24 training images in 3 classes (3 steps of 8), and a val/ folder or not."""
    fake_data.make_image_folder(root, per_class=8, val_per_class=2, size=(12, 12))
    if not val:
        shutil.rmtree(root / "val")
    return root


def add_images(root: Path, count: int, split: str = "train") -> None:
    for i in range(count):
        Image.fromarray(np.full((12, 12, 3), 30 * i, np.uint8)).save(root / split / "red" / f"added{i}.png")


def train(data: Path, out: Path, *extra: str, capsys) -> tuple[int, str, str]:
    return run_idml(["train", "--dataset", "folder", "--data_dir", str(data), "--input_size", "12",
                     "--output_dir", str(out), "--expname", "run", *NET, *extra], capsys)


def evaluate(checkpoint: Path, capsys) -> tuple[int, str, str]:
    return run_idml(["eval", "--checkpoint", str(checkpoint), "--device", "cpu", "-j", "0"], capsys)


def stop_inside_the_first_epoch(data: Path, out: Path, monkeypatch, capsys, *extra: str) -> dict:
    """Train 2 epochs, stopped by SIGTERM after step 1 of epoch 0 (checkpoint at epoch 0, step 2)."""
    signal_at(monkeypatch, signal.SIGTERM, 0, 1)
    assert train(data, out, "--epochs", "2", *extra, capsys=capsys)[0] == 143
    monkeypatch.undo()
    state = load(out / "run" / "checkpoint.pth.tar")
    assert (state["epoch"], state["step"]) == (0, 2)
    return state


# -- idml eval --------------------------------------------------------------------------------------
@pytest.mark.parametrize("change", ["add", "remove", "rename"])
def test_eval_of_a_val_split_run_refuses_a_changed_training_folder(tmp_path, capsys, change: str) -> None:
    """The review's case: one image added to train/ put 7 of 11 'validation' images among trained ones."""
    data = folder(tmp_path / "data", val=False)
    assert train(data, tmp_path, "--epochs", "1", "--val_split", "0.25", capsys=capsys)[0] == 0
    best = tmp_path / "run" / "model_best.pth.tar"
    assert evaluate(best, capsys)[0] == 0  # the folder as it was: fine
    victim = data / "train" / "green" / "3.png"
    if change == "add":
        add_images(data, 1)
    elif change == "remove":
        victim.unlink()
    else:
        victim.rename(victim.with_name("99.png"))  # sorts last: the files after it move up
    code, _, err = evaluate(best, capsys)
    one_error_line(err, "images changed since the checkpoint was written", "--val_split",
                   "could hold images the model trained on", code=code)


def test_eval_of_a_changed_val_folder_is_a_note(tmp_path, capsys) -> None:
    data = folder(tmp_path / "data", val=True)
    assert train(data, tmp_path, "--epochs", "1", capsys=capsys)[0] == 0
    add_images(data, 2, "val")
    code, out, err = evaluate(tmp_path / "run" / "checkpoint.pth.tar", capsys)
    assert code == 0, err
    assert "note: the test images changed since the checkpoint was written (6 then, 8 now)" in err
    assert "test images 8" in out.replace("(", " ").replace(",", " ") or "8 test images" in out


# -- --resume -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("val", [False, True], ids=["val_split", "val_folder"])
def test_a_resume_inside_an_epoch_refuses_a_changed_training_folder(tmp_path, monkeypatch, capsys, val) -> None:
    """The review's case: after a kill mid-epoch and 3 added images, the epoch went on over another list."""
    data = folder(tmp_path / "data", val=val)
    extra = [] if val else ["--val_split", "0.25"]
    stop_inside_the_first_epoch(data, tmp_path, monkeypatch, capsys, *extra)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    add_images(data, 3)
    code, _, err = train(data, tmp_path, "--epochs", "2", "--resume", "auto", *extra, capsys=capsys)
    line = one_error_line(err, "stopped inside epoch 0 (after step 2)", "the training images changed since the "
                          "checkpoint was written", code=code)
    assert re.search(r"\((18|24) then, (20|21|27) now\)", line), line
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert after == before  # config.yaml, metrics.csv and the checkpoint untouched
    for added in (data / "train" / "red").glob("added*"):
        added.unlink()
    assert train(data, tmp_path, "--epochs", "2", "--resume", "auto", *extra, capsys=capsys)[0] == 0


def test_a_resume_at_an_epoch_end_trains_on_the_changed_folder_with_a_note(tmp_path, capsys) -> None:
    data = folder(tmp_path / "data", val=True)
    assert train(data, tmp_path, "--epochs", "1", capsys=capsys)[0] == 0
    add_images(data, 3)
    code, out, err = train(data, tmp_path, "--epochs", "2", "--resume", "auto", capsys=capsys)
    assert code == 0, err
    assert "the training images changed since the checkpoint was written (24 then, 27 now): the next epochs" in out
    assert load(tmp_path / "run" / "checkpoint.pth.tar")["data"]["train"]["count"] == 27


def test_a_resume_of_a_val_split_run_refuses_a_changed_folder_even_at_an_epoch_end(tmp_path, capsys) -> None:
    data = folder(tmp_path / "data", val=False)
    assert train(data, tmp_path, "--epochs", "1", "--val_split", "0.25", capsys=capsys)[0] == 0
    add_images(data, 1)
    code, _, err = train(data, tmp_path, "--epochs", "2", "--val_split", "0.25", "--resume", "auto", capsys=capsys)
    one_error_line(err, "the validation images changed", "--val_split", code=code)


def test_a_resume_refuses_renamed_classes(tmp_path, capsys) -> None:
    """Same count of classes, but 'red' renamed to 'amber' sorts first: every label would shift."""
    data = folder(tmp_path / "data", val=True)
    assert train(data, tmp_path, "--epochs", "1", capsys=capsys)[0] == 0
    for split in ("train", "val"):
        (data / split / "red").rename(data / split / "amber")
    code, _, err = train(data, tmp_path, "--epochs", "2", "--resume", "auto", capsys=capsys)
    one_error_line(err, "was trained on other classes", "'amber'", code=code)


def test_a_changed_seed_is_the_settings_rule_not_a_data_change(tmp_path, capsys) -> None:
    """--seed at an epoch's end is applied with a note (its own rule), though it draws another split."""
    data = folder(tmp_path / "data", val=False)
    assert train(data, tmp_path, "--epochs", "1", "--val_split", "0.25", capsys=capsys)[0] == 0
    code, out, err = train(data, tmp_path, "--epochs", "2", "--val_split", "0.25", "--seed", "3", "--resume", "auto",
                           capsys=capsys)
    assert code == 0, err
    assert "--seed changed from 0 to 3" in out


def test_an_imagenet_folder_changed_inside_an_epoch_is_refused(tmp_path) -> None:
    """ImageNet's ImageFolder (224-pixel networks: too slow to train here) through the same check."""
    fake_data.make_imagenet(tmp_path / "data", per_class=8, val_per_class=2, size=(40, 36))
    req = DataRequest("imagenet", tmp_path / "data", batch_size=8, workers=0)
    before = build_data(req, CPU)
    train_dir = tmp_path / "data" / "imagenet-1k" / "train" / "n01440764"
    shutil.copy(next(train_dir.iterdir()), train_dir / "n01440764_99.JPEG")
    after = build_data(req, CPU)
    assert changed_splits(before.identity, after.identity) == {"train": (24, 25)}
    cfg = TrainConfig(dataset="imagenet", data_dir=str(tmp_path / "data"), net_type="resnet", depth=18)
    ckpt = Checkpoint(model={}, state_dict={}, epoch=0, step=2, config=cfg.to_dict(), data=before.identity,
                      class_names=before.class_names)
    with pytest.raises(ConfigError) as info:
        data_changes(ckpt, cfg, after, Path("checkpoint.pth.tar"))
    one_line_message(info, "stopped inside epoch 0 (after step 2)", "(24 then, 25 now)")
    notes = data_changes(Checkpoint(model={}, state_dict={}, epoch=1, step=0, config=cfg.to_dict(),
                                    data=before.identity), cfg, after, Path("checkpoint.pth.tar"))
    assert notes == ["the training images changed since the checkpoint was written (24 then, 25 now): the next "
                     "epochs train on them as they are now"]


def save_hf(root: Path, datasets, images: list[Image.Image]) -> Path:
    """``root/hf``: the images as a training split (labels alternating a, b) and the first 4 as the
    validation split, replacing any earlier one."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    split = lambda k: datasets.Dataset.from_dict({"image": images[:k], "label": [i % 2 for i in range(k)]},  # noqa: E731
                                                 features=features)
    path = root / "hf"
    shutil.rmtree(path, ignore_errors=True)
    datasets.DatasetDict({"train": split(len(images)), "validation": split(4)}).save_to_disk(str(path))
    return path


def plain(count: int) -> list[Image.Image]:
    return [Image.fromarray(np.full((12, 12, 3), 10 * i, np.uint8)) for i in range(count)]


def noise(seed: int) -> list[Image.Image]:
    """24 noise images whose widths (so their files' sizes) depend on ``seed``."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (12, 12 + (i + seed) % 3, 3), dtype=np.uint8)) for i in range(24)]


#: how the dataset changes while the run is stopped -> (images before, after, the change the line names)
HF_CHANGES = {
    "rows added": (lambda: plain(24), lambda: plain(26), "(24 then, 26 now)"),
    # rows have no names: the identity holds each image's byte count (from Arrow's offsets, no image read)
    "images replaced under the same labels": (lambda: noise(0), lambda: noise(1), "(24 images, other files"),
}


@pytest.mark.parametrize("change", sorted(HF_CHANGES))
def test_an_hf_dataset_changed_inside_an_epoch_is_refused(tmp_path, monkeypatch, capsys, change: str) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    before, after, words = HF_CHANGES[change]
    args = ["train", "--dataset", f"hf:{save_hf(tmp_path, datasets, before())}", "--input_size", "12",
            "--output_dir", str(tmp_path), "--expname", "run", *NET, "--epochs", "2"]
    signal_at(monkeypatch, signal.SIGTERM, 0, 1)
    assert run_idml(args, capsys)[0] == 143
    monkeypatch.undo()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    save_hf(tmp_path, datasets, after())
    code, _, err = run_idml([*args, "--resume", "auto"], capsys)
    one_error_line(err, f"the training images changed since the checkpoint was written {words}", code=code)


# -- the record itself ----------------------------------------------------------------------------------
def test_the_identity_is_small_ordered_and_checked(tmp_path, capsys) -> None:
    a = split_identity(["x.png", "y.png"], [0, 1])
    assert a == split_identity(["x.png", "y.png"], [0, 1]) and len(a["digest"]) == 64
    assert a != split_identity(["y.png", "x.png"], [1, 0]) and a != split_identity(["x.png", "y.png"], [1, 0])
    assert changed_splits({"train": a}, {"train": split_identity(["x.png"], [0])}) == {"train": (2, 1)}
    assert changed_splits(None, {"train": a}) == {}  # a checkpoint of an earlier idml: nothing to compare
    assert DATA_IDENTITY.test({"train": a}) and not DATA_IDENTITY.test({"train": {**a, "digest": "x" * 64}})
    assert not DATA_IDENTITY.test({"other": a}) and not DATA_IDENTITY.test({"train": {**a, "count": -1}})

    data = folder(tmp_path / "data", val=True)
    assert train(data, tmp_path, "--epochs", "1", capsys=capsys)[0] == 0
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pth.tar").data
    assert saved["train"]["count"] == 24 and saved["test"]["count"] == 6 and len(repr(saved)) < 400
