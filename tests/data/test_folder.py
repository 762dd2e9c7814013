"""``--dataset folder``: 48x48 PNGs made with PIL in 3 classes, trained, evaluated and predicted;
bad folders are one line; input size picks the family; in memory or streamed; mean/std from the data."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fake_data
from expect import one_error_line
from idml.data.augment import RandomResizedCropFlip
from idml.data.build import build_data
from idml.data.types import DataRequest
from idml.data.user import channel_stats, train_storage_size
from idml.errors import DataError
from idml.models.resnet import CifarResNet
from runs import load, one_thread  # noqa: F401 - autouse fixture
from runs import run_idml as idml

CPU = torch.device("cpu")
SMALL_NET = ["--net_type", "resnet", "--depth", "8", "--no-bottleneck", "--device", "cpu", "--amp", "off",
             "-j", "0", "--batch_size", "16", "--no-verbose"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 training and 15 validation 48x48 PNGs in 3 classes."""
    return fake_data.make_image_folder(tmp_path_factory.mktemp("imgs") / "pngs")




def request(root: Path, **kw) -> DataRequest:
    return DataRequest("folder", root, batch_size=kw.pop("batch_size", 8), workers=0, **kw)


# -- train -> eval -> predict -----------------------------------------------------------------------
def test_train_eval_predict_on_a_folder_of_pngs(images: Path, tmp_path: Path, capsys) -> None:
    code, out, err = idml(["train", "--dataset", "folder", "--data_dir", str(images), "--input_size", "48",
                           "--epochs", "2", "--lr", "0.05", "--output_dir", str(tmp_path), "--expname", "mine",
                           *SMALL_NET], capsys)
    assert code == 0, err
    assert "=> data: folder" in out and "60 training and 15 validation images, 3 classes" in out
    assert "48x48 inputs <= 64: CIFAR-style network" in out and "decoded once into uint8 tensors" in out
    state = load(tmp_path / "mine" / "model_best.pth.tar")
    assert state["class_names"] == ["blue", "green", "red"] and state["input_size"] == 48
    assert state["model"]["dataset"] == "folder" and state["model"]["input_size"] == 48
    assert len(state["mean"]) == 3 and state["mean"][2] > state["mean"][1]  # computed: 20 of 60 are bright blue

    code, out, err = idml(["eval", "--checkpoint", str(tmp_path / "mine" / "model_best.pth.tar"), "--json",
                           "--device", "cpu", "-j", "0"], capsys)  # --data_dir: the checkpoint's own
    assert code == 0, err
    report = json.loads(out)
    assert report["test_images"] == 15 and report["top1_err"] == pytest.approx(state["best_err1"], abs=1e-9)

    code, out, err = idml(["predict", "--checkpoint", str(tmp_path / "mine" / "model_best.pth.tar"),
                           str(images / "val"), "--format", "json", "--topk", "3", "--device", "cpu"], capsys)
    assert code == 0, err
    preds = json.loads(out)
    assert len(preds) == 15 and {c["class"] for c in preds[0]["topk"]} == {"blue", "green", "red"}
    right = sum(p["topk"][0]["class"] == Path(p["file"]).parent.name for p in preds)
    assert right == round(15 * (1 - state["best_err1"] / 100))  # predict agrees with eval, file by file


def test_eval_refuses_a_folder_with_other_classes(images: Path, tmp_path: Path, capsys) -> None:
    code, _, err = idml(["train", "--dataset", "folder", "--data_dir", str(images), "--epochs", "1",
                         "--output_dir", str(tmp_path), "--expname", "m", *SMALL_NET], capsys)
    assert code == 0, err
    other = tmp_path / "other"
    shutil.copytree(images, other)
    for split in ("train", "val"):
        (other / split / "red").rename(other / split / "yellow")
    code, _, err = idml(["eval", "--checkpoint", str(tmp_path / "m" / "checkpoint.pth.tar"), "--data_dir",
                         str(other), "--device", "cpu", "-j", "0"], capsys)
    one_error_line(err, "does not hold the classes the checkpoint was trained on", "yellow", code=code)


# -- bad folders: one line each ---------------------------------------------------------------------
def bad_copy(images: Path, tmp_path: Path, change) -> Path:
    root = tmp_path / "bad"
    shutil.copytree(images, root)
    change(root)
    return root


def empty_class(root: Path) -> None:
    for f in (root / "train" / "green").iterdir():
        f.unlink()


def mismatched(root: Path) -> None:
    (root / "val" / "red").rename(root / "val" / "purple")


def unreadable(root: Path) -> None:
    (root / "train" / "blue" / "3.png").write_bytes(b"not a png")


def truncated(root: Path) -> None:
    path = root / "val" / "red" / "1.png"
    path.write_bytes(path.read_bytes()[:60])


def no_val(root: Path) -> None:
    shutil.rmtree(root / "val")


def one_class(root: Path) -> None:
    for split in ("train", "val"):
        shutil.rmtree(root / split / "green")
        shutil.rmtree(root / split / "blue")


@pytest.mark.parametrize(("change", "fragments"), [
    (empty_class, ["class folder", "train/green holds no image files", "add images or remove the folder"]),
    (mismatched, ["must hold the same class folders", "only in train/: ['red']", "only in val/: ['purple']"]),
    (unreadable, ["cannot read image", "train/blue/3.png", "replace or delete it"]),
    (truncated, ["cannot read image", "val/red/1.png"]),
    (no_val, ["missing folder", "/val", "D/train/<class>/<images> and D/val/<class>/<images>"]),
    (one_class, ["has 1 class (red)", "at least 2"]),
], ids=lambda v: v.__name__ if callable(v) else "")
@pytest.mark.parametrize("memory", ["2048", "0"], ids=["in_memory", "streamed"])
def test_bad_folders_are_one_line(images: Path, tmp_path: Path, capsys, change, fragments, memory: str) -> None:
    root = bad_copy(images, tmp_path, change)
    code, _, err = idml(["train", "--dataset", "folder", "--data_dir", str(root), "--epochs", "1",
                           "--data_memory_mb", memory, "--output_dir", str(tmp_path), *SMALL_NET], capsys)
    one_error_line(err, *fragments, code=code)
    assert not list(tmp_path.glob("TEST/*.pth.tar"))  # nothing was saved


def test_skip_bad_images_drops_them_from_the_in_memory_copy(images: Path, tmp_path: Path, capsys) -> None:
    root = bad_copy(images, tmp_path, unreadable)
    data = build_data(request(root, skip_bad_images=True), CPU)
    assert len(data.train.labels) == 59
    assert "skipped unreadable image" in capsys.readouterr().err


def every_kind_of_bad_file(root: Path) -> int:
    """Replace training files by each kind of unreadable file; returns how many were replaced."""
    import random

    from image_fuzz import mutate

    bad = {
        "eps.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",  # Ghostscript's, not ours
        "empty.png": b"",
        "cut.png": (root / "train" / "red" / "0.png").read_bytes()[:70],
        "huge.png": None,  # more pixels than the limit
        "thin.png": None,  # small, but too elongated to resize
    }
    rng = random.Random(1)
    seed = (root / "train" / "red" / "0.png").read_bytes()
    while len(bad) < 12:  # mutants that Pillow cannot decode
        mutant = mutate(seed, rng)
        try:
            Image.open(io.BytesIO(mutant)).convert("RGB")
        except Exception:
            bad[f"fuzz{len(bad)}.png"] = mutant
    for i, (name, data) in enumerate(bad.items()):
        target = root / "train" / ("red", "green", "blue")[i % 3] / f"{i}.png"
        if name == "huge.png":
            Image.new("L", (6000, 6000)).save(target)
        elif name == "thin.png":
            Image.new("L", (1, 40000)).save(target)
        else:
            target.write_bytes(data)
    return len(bad)


@pytest.mark.parametrize("memory", ["2048", "0"], ids=["in_memory", "streamed"])
def test_skip_bad_images_skips_every_kind_of_unreadable_file(images: Path, tmp_path: Path, capfd,
                                                               memory: str) -> None:
    root = tmp_path / "bad"
    shutil.copytree(images, root)
    count = every_kind_of_bad_file(root)
    req = request(root, skip_bad_images=True, input_size=96, memory_mb=float(memory), batch_size=100)
    data = build_data(req, CPU)
    data.train.set_epoch(0)
    trained_on = sum(len(labels) for _, labels in data.train)
    thin_is_fine = memory == "0"  # streamed training crops before resizing: the thin image is usable there
    assert trained_on == 60 - count + thin_is_fine
    err = capfd.readouterr().err
    assert err.count("skipped unreadable image") >= count - thin_is_fine and "Traceback" not in err, err
    with pytest.raises(DataError, match="--skip_bad_images"):
        without = build_data(request(root, input_size=96, memory_mb=float(memory), batch_size=100), CPU)
        without.train.set_epoch(0)
        for _ in without.train:
            pass


def test_hidden_files_and_other_files_are_ignored(images: Path, tmp_path: Path) -> None:
    def litter(root: Path) -> None:
        (root / "train" / ".ipynb_checkpoints").mkdir()
        (root / "val" / ".ipynb_checkpoints").mkdir()
        (root / "train" / "red" / "notes.txt").write_text("x")
        (root / "train" / "red" / ".hidden.png").write_bytes(b"junk")

    data = build_data(request(bad_copy(images, tmp_path, litter)), CPU)
    assert data.class_names == ["blue", "green", "red"] and len(data.train.labels) == 60


# -- sizes, families, memory ------------------------------------------------------------------------
def test_input_size_picks_the_network_family(tmp_path: Path) -> None:
    from idml.config import parse_train_args
    from idml.models.registry import build_from_spec

    small = parse_train_args(["--dataset", "folder", "--input_size", "64", "--net_type", "resnet", "--depth", "8",
                              "--no-bottleneck"]).model_spec
    large = parse_train_args(["--dataset", "folder", "--input_size", "65", "--net_type", "resnet",
                              "--depth", "18"]).model_spec
    assert isinstance(build_from_spec(small.__class__(**small.to_dict() | {"num_classes": 3})).backbone, CifarResNet)
    big = build_from_spec(large.__class__(**large.to_dict() | {"num_classes": 3}))
    assert not isinstance(big.backbone, CifarResNet) and big.head.uncertainty.out_features == 512


def test_in_memory_mean_and_std_are_those_of_the_training_images(images: Path) -> None:
    data = build_data(request(images, input_size=48), CPU)
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255
                       for p in sorted((images / "train").rglob("*.png"))])
    assert data.mean == pytest.approx(pixels.mean(axis=(0, 1, 2)), abs=1e-9)
    assert data.std == pytest.approx(pixels.std(axis=(0, 1, 2)), abs=1e-9)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (60, 3, 48, 48)
    given = build_data(request(images, input_size=48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)), CPU)
    assert given.mean == (0.5, 0.5, 0.5) and "mean/std given" in given.note


def test_memory_budget_chooses_streaming(images: Path) -> None:
    streamed = build_data(request(images, input_size=48, memory_mb=0.0), CPU)
    assert "streamed through 0 DataLoader workers" in streamed.note and "> --data_memory_mb 0" in streamed.note
    x, y = next(iter(streamed.train))
    assert x.dtype == torch.uint8 and x.shape == (8, 3, 48, 48) and y.dtype == torch.int64  # normalised on the device
    in_memory = build_data(request(images, input_size=48), CPU)
    assert in_memory.mean == pytest.approx(streamed.mean, abs=1e-6)  # the same 60 images (sample > 60)
    v_stream = torch.cat([streamed.eval_transform(x) for x, _ in streamed.test])
    v_memory = torch.cat([in_memory.eval_transform(x) for x, _ in in_memory.test])
    assert torch.equal(v_stream, v_memory)  # the same validation images, the same normalisation


def test_large_inputs_are_kept_at_r_and_cropped_on_the_device(images: Path) -> None:
    data = build_data(request(images, input_size=72), CPU)
    side = train_storage_size(72)
    assert side == 82 and data.train.images.shape[-1] == side and data.test.images.shape[-1] == 72
    x, _ = next(iter(data.train))
    out = data.train_transform(x, np.random.default_rng(0))
    assert out.shape == (8, 3, 72, 72) and out.dtype == torch.float32
    again = data.train_transform(x, np.random.default_rng(0))
    assert torch.equal(out, again)  # a function of the step's generator


def test_random_resized_crop_flip_boxes_and_flip() -> None:
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    whole = RandomResizedCropFlip(6, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out = whole(images, np.random.default_rng(3))
    for i in range(2):  # the whole image, resampled at its own size: itself or its mirror image
        assert torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(-1))
    boxes = RandomResizedCropFlip(32).boxes(1000, 40, 50, np.random.default_rng(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 50).all() and (boxes[:, 3] <= 40).all()
    assert ((w * h) / 2000).min() >= 0.08 * 0.9 and ((w * h) / 2000).max() <= 1.0


def test_channel_stats() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    mean, std = channel_stats(x)
    assert mean == pytest.approx((0.5,) * 3) and std == pytest.approx((0.5,) * 3)


@pytest.mark.parametrize(("size", "memory"), [(72, "2048"), (40, "0")], ids=["large_in_memory", "small_streamed"])
def test_folder_runs_resume_exactly(images: Path, tmp_path: Path, capsys, monkeypatch, size: int,
                                    memory: str) -> None:
    """A stop signal inside an epoch, then --resume auto: bitwise the uninterrupted run."""
    import os
    import signal

    from idml.training import trainer
    from runs import assert_same_weights

    original = trainer.step_rng

    def stop_at_step_1(seed: int, epoch: int, step: int, rank: int):
        if (epoch, step) == (0, 1):
            os.kill(os.getpid(), signal.SIGTERM)
        return original(seed, epoch, step, rank)

    net = ["--net_type", "resnet", "--depth", "18"] if size > 64 else SMALL_NET[:5]
    args = ["train", "--dataset", "folder", "--data_dir", str(images), "--input_size", str(size), "--epochs", "2",
            "--data_memory_mb", memory, "--output_dir", str(tmp_path), *net, *SMALL_NET[5:]]
    assert idml([*args, "--expname", "ref"], capsys)[0] == 0
    monkeypatch.setattr(trainer, "step_rng", stop_at_step_1)
    assert idml([*args, "--expname", "run"], capsys)[0] == 143
    monkeypatch.undo()
    code, _, err = idml([*args, "--expname", "run", "--resume", "auto"], capsys)
    assert code == 0, err
    assert_same_weights(load(tmp_path / "run" / "checkpoint.pth.tar"), load(tmp_path / "ref" / "checkpoint.pth.tar"))


def test_a_folder_without_val_holds_out_a_stratified_share_that_eval_finds_again(images: Path, tmp_path: Path,
                                                                                  capsys) -> None:
    only_train = tmp_path / "only_train"
    shutil.copytree(images / "train", only_train / "train")
    code, _, err = idml(["train", "--dataset", "folder", "--data_dir", str(only_train), "--input_size", "48",
                         "--epochs", "1", "--output_dir", str(tmp_path), "--expname", "nv", *SMALL_NET], capsys)
    assert "pass --val_split 0.1" in one_error_line(err, code=code)

    code, out, err = idml(["train", "--dataset", "folder", "--data_dir", str(only_train), "--input_size", "48",
                           "--val_split", "0.25", "--epochs", "1", "--output_dir", str(tmp_path), "--expname", "vs",
                           *SMALL_NET], capsys)
    assert code == 0, err
    assert "45 training and 15 validation images" in out  # 5 of the 20 images of each class held out
    code, out, err = idml(["eval", "--checkpoint", str(tmp_path / "vs" / "model_best.pth.tar"), "--json",
                           "--device", "cpu", "-j", "0"], capsys)
    assert code == 0, err
    state = load(tmp_path / "vs" / "model_best.pth.tar")
    report = json.loads(out)
    assert report["test_images"] == 15 and report["top1_err"] == pytest.approx(state["best_err1"], abs=1e-9)

    code, _, err = idml(["train", "--dataset", "folder", "--data_dir", str(images), "--val_split", "0.25",
                         "--epochs", "1", "--output_dir", str(tmp_path), "--expname", "both", *SMALL_NET], capsys)
    assert "has one: drop --val_split" in one_error_line(err, code=code)
