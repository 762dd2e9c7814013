"""The CPU path of ImageNet's training crops: header-first draws, reduced-scale decodes, the one opener."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from expect import one_line_message as assert_one_line_error
from fake_data import jpeg, photo
from idml.data import image_files
from idml.data.crops import CropDraw, DecodeCropFlip, crop_resize_flip, draw_crop, reduction
from idml.data.image_files import decode_rgb, read_encoded
from idml.errors import DataError


def pillow_rgb(path: Path, reduce: int = 1) -> np.ndarray:
    with Image.open(path) as img:
        if reduce > 1:
            img.draft("RGB", (img.width // reduce, img.height // reduce))
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
def test_jpegs_decode_to_pillows_pixels_at_every_scale(tmp_path: Path, reduce: int) -> None:
    """simplejpeg is only a faster way to Pillow's own pixels (the official code's decoder)."""
    path = jpeg(tmp_path / "a.jpg", photo(640, 480))
    pixels = decode_rgb(read_encoded(path), reduce)
    assert pixels.shape == (-(-480 // reduce), -(-640 // reduce), 3)
    assert np.array_equal(pixels, pillow_rgb(path, reduce))


@pytest.mark.parametrize("kind", ["gray jpeg", "cmyk jpeg", "png", "progressive jpeg"])
def test_other_files_decode_as_pillow_converts_them(tmp_path: Path, kind: str) -> None:
    img = photo(96, 64)
    path = tmp_path / "x.img"
    if kind == "gray jpeg":
        jpeg(path, img.convert("L"))
    elif kind == "cmyk jpeg":
        jpeg(path, img.convert("CMYK"))
    elif kind == "png":
        img.save(path, format="PNG")
    else:
        jpeg(path, img, progressive=True)
    encoded = read_encoded(path)
    assert (encoded.width, encoded.height) == (96, 64)
    assert encoded.plain_jpeg == (kind in ("gray jpeg", "progressive jpeg"))
    assert np.array_equal(decode_rgb(encoded), pillow_rgb(path))


def test_the_crop_at_full_scale_is_the_official_crop_within_one_grey_level(tmp_path: Path) -> None:
    """Same box, same flip: torchvision's crop-then-resize of the Pillow image (the official
    worker) and idml's uint8 kernel differ by rounding only."""
    path = jpeg(tmp_path / "a.jpg", photo(500, 375))
    encoded = read_encoded(path)
    with Image.open(path) as img:
        official_image = img.convert("RGB")
    for draw in (CropDraw(10, 20, 300, 250, False), CropDraw(0, 0, 375, 500, True), CropDraw(100, 200, 90, 120, False)):
        ours = crop_resize_flip(decode_rgb(encoded), draw, 500, 375, 224)
        official = TF.resized_crop(official_image, draw.top, draw.left, draw.height, draw.width, [224, 224])
        if draw.flip:
            official = TF.hflip(official)
        difference = (ours.int() - TF.pil_to_tensor(official).int()).abs()
        assert difference.max() <= 1 and difference.float().mean() < 0.5, (draw, difference.float().mean())


def test_a_reduced_scale_decode_changes_the_crop_only_by_resampling(tmp_path: Path) -> None:
    """A box of at least 2 x 224 pixels a side is cut from the image decoded at half size: the
    crop stays close to the full-scale one (measured: mean 1-2 grey levels on photos)."""
    path = jpeg(tmp_path / "big.jpg", photo(1000, 750))
    encoded = read_encoded(path)
    draw = CropDraw(101, 77, 600, 700, False)
    assert reduction(draw, 224) == 2
    full = crop_resize_flip(decode_rgb(encoded), draw, 1000, 750, 224).float()
    half = crop_resize_flip(decode_rgb(encoded, 2), draw, 1000, 750, 224, 2).float()
    assert (full - half).abs().mean() < 2
    assert (full - half).abs().mean() > 0  # it is a different resampling, not the same pixels
    shifted = crop_resize_flip(decode_rgb(encoded, 2), CropDraw(105, 81, 600, 700, False), 1000, 750, 224, 2)
    assert (full - shifted.float()).abs().mean() > 1.5 * (full - half).abs().mean()  # a box 4 pixels off shows


@pytest.mark.parametrize(("width", "height", "expected"), [(224, 224, 1), (447, 900, 1), (448, 448, 2),
                                                            (900, 1000, 4), (1792, 1800, 8), (4000, 4000, 8)])
def test_reduction_keeps_the_box_at_least_the_output_size(width, height, expected) -> None:
    assert reduction(CropDraw(0, 0, height, width, False), 224) == expected


def test_draws_are_a_function_of_torchs_seed_and_fit_the_image() -> None:
    torch.manual_seed(3)
    first = [draw_crop(500, 375) for _ in range(200)]
    torch.manual_seed(3)
    assert [draw_crop(500, 375) for _ in range(200)] == first
    assert all(d.top >= 0 and d.top + d.height <= 375 and d.left >= 0 and d.left + d.width <= 500 for d in first)
    assert {d.flip for d in first} == {True, False}


def test_a_box_no_try_fits_falls_back_to_the_centre_as_torchvision() -> None:
    """A 1000 x 10 strip: no box of aspect 3/4..4/3 and 8%+ of its area fits, so the centre of the
    strip at aspect 4/3 (torchvision's fallback)."""
    torch.manual_seed(0)
    draw = draw_crop(1000, 10)
    assert (draw.height, draw.width, draw.top, draw.left) == (10, 13, 0, 493)


def test_decode_crop_flip_gives_uint8_crops(tmp_path: Path) -> None:
    path = jpeg(tmp_path / "a.jpg", photo(500, 333))
    torch.manual_seed(0)
    crops = [DecodeCropFlip(224)(read_encoded(path)) for _ in range(3)]
    assert all(c.shape == (3, 224, 224) and c.dtype == torch.uint8 and c.is_contiguous() for c in crops)
    assert not torch.equal(crops[0], crops[1])  # each call draws its own box


# -- hostile and broken files: one clear line --------------------------------------------------------
def truncated(path: Path) -> None:
    data = jpeg(path, photo(300, 200)).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000))  # a JPEG's first bytes, then noise


def not_an_image(path: Path) -> None:
    path.write_text("hello")


def bomb(path: Path) -> None:
    """A valid JPEG header claiming 60000 x 60000 pixels (3.6e9: past Pillow's limit)."""
    data = bytearray(jpeg(path, photo(64, 48)).read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))


def fifo(path: Path) -> None:
    os.mkfifo(path)


def eps(path: Path) -> None:
    """A PostScript file under an image's name: Pillow's EPS plug-in would run Ghostscript on it."""
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\nshowpage\n%%EOF\n")


@pytest.mark.parametrize(("make", "reason"), [(truncated, "Premature end"), (garbage, ""),
                                              (not_an_image, "not an image in a format idml reads"),
                                              (eps, "not an image in a format idml reads"),
                                              (bomb, "more than the 33,554,432 pixels idml decodes"),
                                              (fifo, "not a regular file")])
def test_unreadable_files_are_one_line_naming_the_file(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "bad.JPEG"
    make(path)
    with pytest.raises(DataError) as info:
        DecodeCropFlip(224)(read_encoded(path))
    assert_one_line_error(info, "cannot read image", str(path), reason)


def test_without_simplejpeg_pillow_decodes_the_same_pixels(tmp_path: Path, monkeypatch) -> None:
    path = jpeg(tmp_path / "a.jpg", photo(640, 480))
    expected = [decode_rgb(read_encoded(path), r) for r in (1, 2)]
    monkeypatch.setattr(image_files, "simplejpeg", None)
    encoded = read_encoded(path)  # identified by Pillow
    assert encoded.format == "JPEG" and encoded.mode == "RGB"
    assert all(np.array_equal(decode_rgb(encoded, r), e) for r, e in zip((1, 2), expected, strict=True))


def test_read_image_keeps_its_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(io.BytesIO(b"not a png").getvalue())
    with pytest.raises(DataError) as info:
        image_files.read_image(tmp_path / "x.png")
    assert_one_line_error(info, "cannot read image", "x.png", "not an image in a format idml reads")


# -- idml's pixel limit: one rule for simplejpeg, Pillow and the GPU -----------------------------------
@pytest.fixture
def small_limit(monkeypatch) -> int:
    """idml's pixel limit lowered to 100 x 80, so that a 640 x 480 file is "big" (1/8 scale fits)."""
    monkeypatch.setattr(image_files, "MAX_IMAGE_PIXELS", 100 * 80)
    return 100 * 80


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
@pytest.mark.parametrize("reduce", [1, 2, 8])
def test_a_jpeg_above_the_limit_is_decoded_at_the_scale_that_fits(tmp_path: Path, monkeypatch, small_limit,
                                                                  decoder: str, reduce: int) -> None:
    """Whichever decoder and whatever scale the crop asks for, a JPEG above the pixel limit is decoded
    at the smallest reduction that fits it (here 1/8), never whole; its crops are still crops."""
    path = jpeg(tmp_path / "big.jpg", photo(640, 480))
    if decoder == "pillow":
        monkeypatch.setattr(image_files, "simplejpeg", None)
    encoded = read_encoded(path)
    assert (encoded.width, encoded.height, encoded.fits_whole) == (640, 480, False)
    pixels = decode_rgb(encoded, reduce)
    assert pixels.shape == (60, 80, 3) and np.array_equal(pixels, pillow_rgb(path, 8))
    torch.manual_seed(0)
    assert DecodeCropFlip(32)(encoded).shape == (3, 32, 32)
    assert image_files.read_image(path).size == (80, 60)


def test_other_files_above_the_limit_are_refused_at_the_header(tmp_path: Path, small_limit) -> None:
    path = tmp_path / "big.png"
    photo(640, 480).save(path, format="PNG")
    with pytest.raises(DataError) as info:
        read_encoded(path)
    assert_one_line_error(info, str(path), "640 x 480 is more than the 8,000 pixels idml decodes", "downscale it")


def test_pillows_own_check_never_refuses_what_idmls_rule_decodes(tmp_path: Path) -> None:
    """Pillow refuses more than twice its MAX_IMAGE_PIXELS at Image.open (179 million pixels by
    default); idml decodes a JPEG of up to 64 times its own limit at 1/8 scale. A JPEG whose header
    says 16000 x 12000 (192 million pixels; its data is a small picture's) is decoded by Pillow at
    1/4 scale, not refused."""
    assert 2 * Image.MAX_IMAGE_PIXELS >= 64 * image_files.MAX_IMAGE_PIXELS
    data = bytearray(jpeg(tmp_path / "small.jpg", photo(64, 48)).read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (12000).to_bytes(2, "big") + (16000).to_bytes(2, "big")
    assert image_files.read_image(bytes(data), "huge.jpg").size == (4000, 3000)
