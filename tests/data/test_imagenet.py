"""The ImageNet class-folder reader and its transforms, on tiny JPEG folders in the official layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fake_data
from expect import one_line_message as assert_one_line_error
from idml.data import DataRequest, build_data
from idml.data.imagenet import Lighting, load_imagenet
from idml.errors import DataError

WNIDS = ("n01440764", "n01443537", "n01484850")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def test_classes_come_from_the_folders(imagenet_dir: Path) -> None:
    data = load_imagenet(imagenet_dir)
    assert data["class_names"] == list(WNIDS)
    assert len(data["train"]) == 3 * 4 and len(data["val"]) == 3 * 2
    assert sorted({label for _, label in data["val"].samples}) == [0, 1, 2]


def test_any_number_of_classes(tmp_path: Path) -> None:
    fake_data.make_imagenet(tmp_path, classes=("b_cls", "a_cls"), per_class=1, val_per_class=1, size=(8, 8))
    assert load_imagenet(tmp_path)["class_names"] == ["a_cls", "b_cls"]


def test_mismatched_train_and_val_classes(imagenet_dir: Path) -> None:
    val = imagenet_dir / "imagenet-1k" / "val"
    (val / WNIDS[2]).rename(val / "n99999999")
    with pytest.raises(DataError) as info:
        load_imagenet(imagenet_dir)
    assert_one_line_error(info, "same class folders", "n99999999")


def test_val_missing_a_class(imagenet_dir: Path) -> None:
    shutil.rmtree(imagenet_dir / "imagenet-1k" / "val" / WNIDS[0])
    with pytest.raises(DataError) as info:
        load_imagenet(imagenet_dir)
    assert_one_line_error(info, WNIDS[0])


@pytest.mark.parametrize("remove", ["imagenet-1k", "imagenet-1k/val", "imagenet-1k/train"])
def test_missing_folder(imagenet_dir: Path, remove: str) -> None:
    shutil.rmtree(imagenet_dir / remove)
    with pytest.raises(DataError) as info:
        load_imagenet(imagenet_dir)
    assert_one_line_error(info, "imagenet-1k", "train/<class>")


def test_class_folder_without_images(imagenet_dir: Path) -> None:
    (imagenet_dir / "imagenet-1k" / "train" / "n00000000").mkdir()
    with pytest.raises(DataError) as info:
        load_imagenet(imagenet_dir)
    assert_one_line_error(info, "train")


def solid_jpeg_folder(root: Path, colour: tuple[int, int, int], size: tuple[int, int] = (300, 260)) -> None:
    for split in ("train", "val"):
        folder = root / "imagenet-1k" / split / "n00000001"
        folder.mkdir(parents=True)
        Image.new("RGB", size, colour).save(folder / "solid.JPEG", quality=100)


def expected_normalised(colour: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor([(c / 255 - m) / s for c, m, s in zip(colour, MEAN, STD, strict=True)])


def test_val_transform_resizes_crops_and_normalises(tmp_path: Path) -> None:
    colour = (200, 100, 50)
    solid_jpeg_folder(tmp_path, colour)
    image, label = load_imagenet(tmp_path)["val"][0]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 0
    expected = expected_normalised(colour).view(3, 1, 1).expand_as(image)
    torch.testing.assert_close(image, expected, atol=0.03, rtol=0)  # JPEG rounding


def test_train_transform_gives_normalised_224_crops(tmp_path: Path) -> None:
    colour = (120, 130, 140)
    solid_jpeg_folder(tmp_path, colour)
    train = load_imagenet(tmp_path)["train"]
    torch.manual_seed(0)
    samples = torch.stack([train[0][0] for _ in range(8)])
    assert samples.shape == (8, 3, 224, 224) and samples.dtype == torch.float32
    # a solid image stays spatially uniform under crop, flip, jitter and lighting
    assert samples.flatten(2).std(dim=2).max() < 0.05
    # ... but colour jitter and lighting move it, differently for each draw, around the normalised colour
    centres = samples.mean(dim=(2, 3))
    assert centres.std(dim=0).min() > 0.01
    assert (centres - expected_normalised(colour)).abs().max() < 2.0


def test_lighting_adds_eigvec_times_scaled_eigval() -> None:
    eigval = [0.2175, 0.0188, 0.0045]
    eigvec = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
    image = torch.rand(3, 5, 6)
    torch.manual_seed(42)
    out = Lighting(0.1)(image)
    torch.manual_seed(42)
    alpha = (torch.randn(3) * 0.1).tolist()
    shift = [sum(eigvec[c][j] * alpha[j] * eigval[j] for j in range(3)) for c in range(3)]
    torch.testing.assert_close(out - image, torch.tensor(shift).view(3, 1, 1).expand_as(image))
    assert max(abs(v) for v in shift) > 0
    assert torch.equal(Lighting(0.0)(image), image)


def test_build_data_batches(imagenet_dir: Path) -> None:
    data = build_data(DataRequest("imagenet", imagenet_dir, batch_size=4, workers=0), torch.device("cpu"))
    assert data.num_classes == 3 and data.input_size == 224
    images, labels = next(iter(data.train))
    assert images.shape == (4, 3, 224, 224) and labels.dtype == torch.int64
    val_labels = np.concatenate([labels.numpy() for _, labels in data.val])
    assert val_labels.tolist() == [0, 0, 1, 1, 2, 2]  # every validation image once, in order
