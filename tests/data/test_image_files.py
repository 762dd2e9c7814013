"""How idml predict prepares image files: the same pixels as the model's validation images."""

import numpy as np
import pytest
import torch
from PIL import Image

from idml.data.digits import load_digits_data
from idml.data.image_files import image_files, image_preparer, read_image
from idml.errors import DataError


@pytest.mark.parametrize("ink_on_paper", [True, False])
def test_digit_picture_becomes_its_training_image(tmp_path, ink_on_paper):
    """A quick-start digit drawn as a 64x64 picture is prepared into exactly its training tensor."""
    from sklearn.datasets import load_digits

    index = 7  # a test image (i % 5 != 0 is training; either way the preparation is the same)
    ink = load_digits().images[index]  # 8x8, values 0..16
    big = np.kron(ink, np.ones((8, 8))) * 255 / 16  # each ink value fills an 8x8 block
    pixels = 255 - big if ink_on_paper else big  # dark ink on white paper, or light on black
    Image.fromarray(np.round(pixels).astype(np.uint8)).save(tmp_path / "digit.png")
    prepared = image_preparer("digits", 32)(read_image(tmp_path / "digit.png"))
    expected = load_digits_data()["train"][0][index - 1 - index // 5]  # index 7 is the 6th training image
    assert prepared.dtype == torch.uint8 and torch.equal(prepared, expected)


def test_cifar_and_imagenet_preparation(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    same = image_preparer("cifar10", 32)(read_image(tmp_path / "x.png"))
    assert torch.equal(same, torch.from_numpy(pixels).permute(2, 0, 1))  # 32x32 stays untouched
    Image.new("L", (300, 400)).save(tmp_path / "gray.jpg")
    assert image_preparer("imagenet", 224)(read_image(tmp_path / "gray.jpg")).shape == (3, 224, 224)


def test_image_files_expand_folders_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.JPG", "1.png", "b/0.webp", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in image_files([str(tmp_path)])]
    assert found == ["1.png", "b/0.webp", "b/2.JPG"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        image_files([str(tmp_path / "empty")])
    with pytest.raises(DataError, match="no such file or folder"):
        image_files([str(tmp_path / "nope.png")])


@pytest.mark.parametrize(("pixels", "mode"), [(np.full((8, 8), 1000, np.uint16), "I;16"),
                                              (np.full((8, 8), 70000, np.int32), "I"),
                                              (np.full((8, 8), 0.5, np.float32), "F")])
def test_images_of_more_than_8_bits_are_refused_not_clipped(tmp_path, pixels, mode):
    path = tmp_path / "wide.tif"
    Image.fromarray(pixels).save(path)
    with pytest.raises(DataError, match=rf"{path}.*more than 8 bits per channel \(PIL mode {mode}\)"):
        read_image(path)


def test_an_image_too_elongated_to_resize_and_crop_is_refused_before_resizing(tmp_path):
    Image.new("RGB", (3, 200)).save(tmp_path / "strip.png")  # Resize(256) would make it 256 x 17067
    with pytest.raises(DataError, match="3x200 pixels is too elongated"):
        image_preparer("imagenet", 224)(read_image(tmp_path / "strip.png"))
    Image.new("RGB", (10, 300)).save(tmp_path / "tall.png")  # 30:1 is still resized
    assert image_preparer("imagenet", 224)(read_image(tmp_path / "tall.png")).shape == (3, 224, 224)
    assert image_preparer("cifar10", 32)(read_image(tmp_path / "strip.png")).shape == (3, 32, 32)
