"""The ImageNet class-folder reader and its transforms, on tiny JPEG folders in the official layout."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision.transforms.v2 import functional as F

import fake_data
from expect import one_line_message as assert_one_line_error
from idml.data.augment import ColorLighting
from idml.data.build import build_data, imagenet_transforms
from idml.data.imagenet import PCA_EIGVAL, PCA_EIGVEC, load_imagenet
from idml.data.loaders import ResumableSampler, default_workers
from idml.data.types import DataRequest
from idml.errors import DataError

WNIDS = ("n01440764", "n01443537", "n01484850")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CPU = torch.device("cpu")


def test_classes_come_from_the_folders(imagenet_dir: Path) -> None:
    data = load_imagenet(imagenet_dir)
    assert data["class_names"] == list(WNIDS)
    assert len(data["train"]) == 3 * 4 and len(data["test"]) == 3 * 2
    assert sorted({label for _, label in data["test"].samples}) == [0, 1, 2]


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
    image, label = load_imagenet(tmp_path)["test"][0]
    assert image.shape == (3, 224, 224) and image.dtype == torch.uint8 and label == 0  # the workers ship uint8
    _, normalise = imagenet_transforms(CPU)
    expected = expected_normalised(colour).view(1, 3, 1, 1).expand(1, 3, 224, 224)
    torch.testing.assert_close(normalise(image[None]), expected, atol=0.03, rtol=0)  # JPEG rounding


def test_train_transform_gives_normalised_224_crops(tmp_path: Path) -> None:
    colour = (120, 130, 140)
    solid_jpeg_folder(tmp_path, colour)
    train = load_imagenet(tmp_path)["train"]
    torch.manual_seed(0)
    crops = torch.stack([train[0][0] for _ in range(8)])
    assert crops.shape == (8, 3, 224, 224) and crops.dtype == torch.uint8
    samples = imagenet_transforms(CPU)[0](crops, np.random.default_rng(0))
    assert samples.dtype == torch.float32
    # a solid image stays spatially uniform under crop, flip, jitter and lighting
    assert samples.flatten(2).std(dim=2).max() < 0.05
    # ... but colour jitter and lighting move it, differently for each image, around the normalised colour
    centres = samples.mean(dim=(2, 3))
    assert centres.std(dim=0).min() > 0.01
    assert (centres - expected_normalised(colour)).abs().max() < 2.0


def per_image_reference(image: torch.Tensor, factors, order, alphas) -> torch.Tensor:
    """One uint8 image through torchvision's own colour operations, in the drawn order, then the
    official PCA lighting (eigvec @ (alpha * eigval)) and normalisation, in float64."""
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    x = image.double() / 255
    for op in order:
        x = ops[int(op)](x, float(factors[int(op)]))
    rgb = torch.tensor(PCA_EIGVEC, dtype=torch.float64) @ (torch.tensor(alphas, dtype=torch.float64)
                                                          * torch.tensor(PCA_EIGVAL, dtype=torch.float64))
    x = x + rgb.view(3, 1, 1)
    return (x - torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1)) / torch.tensor(STD, dtype=torch.float64).view(
        3, 1, 1)


def test_batched_colour_and_lighting_equal_the_per_image_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 9, 7), generator=gen, dtype=torch.uint8)
    colour = ColorLighting(MEAN, STD, PCA_EIGVAL, PCA_EIGVEC, CPU, jitter=0.4, lighting=0.1)
    out = colour(images, np.random.default_rng(7))
    draws = colour.draws(12, np.random.default_rng(7))  # the same generator state: the same draws
    factors, order, alphas = draws[:, :3], draws[:, 3:6].astype(int), draws[:, 6:]
    assert ((factors >= 0.6) & (factors <= 1.4)).all() and (np.sort(order, axis=1) == [0, 1, 2]).all()
    assert len({tuple(o) for o in order}) > 1  # the order does vary between images
    for i in range(12):
        reference = per_image_reference(images[i], factors[i], order[i], alphas[i])
        torch.testing.assert_close(out[i].double(), reference, atol=2e-5, rtol=0)


def test_colour_draws_come_from_the_steps_generator() -> None:
    """Resume stays exact: the same (seed, epoch, step) generator gives the same augmented batch."""
    images = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    colour = imagenet_transforms(CPU)[0]
    first = colour(images, np.random.default_rng([0, 3, 5, 0]))
    torch.rand(10)  # the global RNG plays no part
    assert torch.equal(colour(images, np.random.default_rng([0, 3, 5, 0])), first)
    assert not torch.equal(colour(images, np.random.default_rng([0, 3, 6, 0])), first)


def test_build_data_batches(imagenet_dir: Path) -> None:
    data = build_data(DataRequest("imagenet", imagenet_dir, batch_size=4, workers=0), torch.device("cpu"))
    assert data.num_classes == 3 and data.input_size == 224
    images, labels = next(iter(data.train))
    assert images.shape == (4, 3, 224, 224) and labels.dtype == torch.int64
    val_labels = np.concatenate([labels.numpy() for _, labels in data.test])
    assert val_labels.tolist() == [0, 0, 1, 1, 2, 2]  # every validation image once, in order


def test_no_final_batch_of_a_single_image_as_in_the_cifar_path() -> None:
    sampler = ResumableSampler(DistributedSampler(range(9), num_replicas=1, rank=0, shuffle=False), batch_size=4)
    sampler.set_epoch(0)
    assert [index for _, index in sampler] == list(range(8)) and len(sampler) == 8  # 4 + 4, not 4 + 4 + 1
    sampler.set_epoch(0, start_step=1)
    assert [index for _, index in sampler] == list(range(4, 8)) and len(sampler) == 4
    sampler = ResumableSampler(DistributedSampler(range(10), num_replicas=1, rank=0, shuffle=False), batch_size=4)
    assert len(list(sampler)) == 10  # a final batch of 2 stays


@pytest.mark.parametrize(("cores", "local_processes", "expected"), [(32, None, 16), (32, "8", 3), (8, "2", 3),
                                                                    (1, None, 1), (4, "8", 1)])
def test_default_workers_share_the_cores_of_this_process(monkeypatch, cores, local_processes, expected) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    if local_processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    assert default_workers() == expected
