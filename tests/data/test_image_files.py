"""How idml predict prepares image files: the same pixels as the model's validation images."""

import io
import os
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from child import in_child
from expect import one_line_message
from idml.data.digits import load_digits_data
from idml.data.image_files import MAX_IMAGE_PIXELS, image_files, image_preparer, read_image, read_training_image
from idml.errors import DataError
from image_fuzz import fuzz


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


# -- the decoders: an explicit allow-list ------------------------------------------------------------
def _saved(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


#: Pillow plug-ins outside the allow-list, as files Pillow itself writes (each opens with a plain
#: Image.open); named photo.png, they must still be refused.
FOREIGN = {fmt: (lambda img, fmt=fmt: _saved(img, fmt)) for fmt in
           ("TGA", "PCX", "SGI", "ICO", "IM", "DDS", "QOI", "EPS", "JPEG2000", "ICNS", "AVIF")}
FOREIGN["SPIDER"] = lambda img: _saved(img.convert("F"), "SPIDER")
FOREIGN["XBM"] = lambda img: _saved(img.convert("1"), "XBM")
FOREIGN["MSP"] = lambda img: _saved(img.convert("1"), "MSP")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("fmt", sorted(FOREIGN))
def test_other_pillow_plugins_are_refused_whatever_the_name(tmp_path: Path, fmt: str) -> None:
    try:
        data = FOREIGN[fmt](Image.new("RGB", (16, 16), (10, 200, 30)))
    except (OSError, KeyError) as exc:  # a codec this Pillow was built without
        pytest.skip(f"this Pillow cannot write {fmt}: {exc}")
    assert Image.open(io.BytesIO(data)).format in (fmt, "JPEG2000")  # Pillow alone would decode it
    (tmp_path / "photo.png").write_bytes(data)
    with pytest.raises(DataError) as info:
        read_image(tmp_path / "photo.png")
    one_line_message(info, "photo.png", "not an image in a format idml reads")


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")


def test_a_postscript_file_named_png_never_runs_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's EPS plug-in runs ``gs`` on the file: a fake gs on PATH records whether it ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "gs-ran"
    for name in ("gs", "gswin32c", "gswin64c"):
        (bin_dir / name).write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # look gs up again, on the fake PATH
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    (tmp_path / "photo.png").write_bytes(EPS)
    for read in (read_image, read_training_image):
        with pytest.raises(DataError) as info:
            read(tmp_path / "photo.png")
        one_line_message(info, "not an image in a format idml reads")
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM"])
def test_every_allowed_format_decodes(tmp_path: Path, fmt: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    (tmp_path / "x.img").write_bytes(_saved(img.convert("P") if fmt == "GIF" else img, fmt))
    read = read_image(tmp_path / "x.img")
    assert read.mode == "RGB" and read.size == (10, 12)
    if fmt in ("PNG", "BMP", "TIFF", "PPM"):  # lossless
        assert np.array_equal(np.asarray(read), pixels)


# -- bit depths ----------------------------------------------------------------------------------------
def png_bytes(values: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB): color type 0 gray, 2 RGB,
    4 gray + alpha, 6 RGB + alpha."""
    height, width = values.shape[:2]
    rows = values.reshape(height, -1).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


DARK = (np.arange(48 * 40).reshape(48, 40) * 7 % 3000).astype(np.uint16)  # values 0..2999 of 65535: dark
TWIN = np.rint(DARK / 257).astype(np.uint8)  # the same picture in 8 bits


def _tiff(values: np.ndarray) -> bytes:
    return _saved(Image.fromarray(values), "TIFF")


def _netpbm(magic: bytes, maxval: int, values: np.ndarray) -> bytes:
    """A binary PGM (P5) or PPM (P6) of ``values`` (0..maxval, two bytes each above 255)."""
    height, width = values.shape[:2]
    return magic + f" {width} {height} {maxval}\n".encode() + values.astype(">u2").tobytes()


#: the dark picture in every deep format, and the 8-bit picture each must read as
DEEP = {
    "png-gray16": (lambda: png_bytes(DARK, 0), TWIN),
    "png-rgb16": (lambda: png_bytes(np.stack([DARK] * 3, -1), 2), np.stack([DARK >> 8] * 3, -1)),
    "png-rgba16": (lambda: png_bytes(np.stack([DARK] * 3 + [np.full_like(DARK, 65535)], -1), 6),
                   np.stack([DARK >> 8] * 3, -1)),
    "png-graya16": (lambda: png_bytes(np.stack([DARK, np.full_like(DARK, 65535)], -1), 4),
                    np.stack([DARK >> 8] * 3, -1)),
    "tiff-i16": (lambda: _tiff(DARK), TWIN),
    "tiff-i16b": (lambda: _tiff(DARK.astype(">u2")), TWIN),
    "tiff-i32-16bit-data": (lambda: _tiff(DARK.astype(np.int32)), TWIN),
    "tiff-i32-8bit-data": (lambda: _tiff(TWIN.astype(np.int32)), TWIN),
    "pgm16": (lambda: _netpbm(b"P5", 65535, DARK), TWIN),
    "pgm16-very-dark": (lambda: _netpbm(b"P5", 65535, DARK % 200), np.rint((DARK % 200) / 257)),
    "pgm12": (lambda: _netpbm(b"P5", 4095, DARK), np.rint(DARK / 4095 * 255)),
    "ppm16": (lambda: _netpbm(b"P6", 65535, np.stack([DARK] * 3, -1)), np.stack([TWIN] * 3, -1)),
    "tiff-float-unit": (lambda: _tiff((TWIN / 255).astype(np.float32)), TWIN),
    "tiff-float-8bit-range": (lambda: _tiff(TWIN.astype(np.float32)), TWIN),
}


@pytest.mark.parametrize("case", sorted(DEEP))
def test_deep_images_are_scaled_by_their_bit_depth_not_clipped(tmp_path: Path, case: str) -> None:
    make, expected = DEEP[case]
    (tmp_path / "deep.img").write_bytes(make())
    read = np.asarray(read_image(tmp_path / "deep.img"))
    assert read.shape == expected.shape and np.abs(read.astype(int) - expected.astype(int)).max() <= 1, case
    assert (read == 255).mean() < 0.01  # the old reader made 92% of the dark picture white


def test_a_dark_16_bit_png_predicts_what_its_8_bit_twin_predicts(tmp_path: Path) -> None:
    from idml.inference import checkpoint_predictor, load_trained_model, predict_files
    from idml.models.registry import build_from_spec
    from idml.models.spec import ModelSpec

    spec = ModelSpec("resnet", "cifar10", 8, 0.0, False, 10, True, 16, 5.0)
    torch.manual_seed(0)
    torch.save({"model": spec.to_dict(), "state_dict": build_from_spec(spec).state_dict(), "mean": [0.5] * 3,
                "std": [0.25] * 3, "input_size": 32, "class_names": [str(c) for c in range(10)]}, tmp_path / "c.pth")
    (tmp_path / "deep.png").write_bytes(png_bytes(np.stack([DARK] * 3, -1) * 20, 2))  # values 0..59980
    Image.fromarray(np.stack([np.rint(DARK * 20 / 257).astype(np.uint8)] * 3, -1)).save(tmp_path / "twin.png")
    (tmp_path / "gray16.png").write_bytes(png_bytes(DARK * 20, 0))
    trained = checkpoint_predictor(load_trained_model(tmp_path / "c.pth", torch.device("cpu")), "c.pth")
    deep, twin, gray = predict_files(trained, [tmp_path / "deep.png", tmp_path / "twin.png",
                                               tmp_path / "gray16.png"], topk=3, batch_size=3)
    assert deep.classes == twin.classes == gray.classes
    assert deep.probabilities == pytest.approx(twin.probabilities, abs=1e-3)
    assert gray.probabilities == pytest.approx(twin.probabilities, abs=1e-3)


# -- sizes: one pixel limit ----------------------------------------------------------------------------
def huge_png(width: int, height: int) -> bytes:
    """A black 8-bit gray PNG of any size, compressed row by row (a few hundred KB for 13000 x 13000)."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to measure a child's memory")
@pytest.mark.parametrize("side", [6000, 13000])
def test_an_image_above_the_pixel_limit_is_refused_without_decoding_it(tmp_path: Path, side: int) -> None:
    """The review's case: a 674 KB PNG of 13000 x 13000 cost 2.1 GB (6000 x 6000: just above the limit)."""
    path = tmp_path / "big.png"
    path.write_bytes(huge_png(side, side))
    assert path.stat().st_size < 2_000_000 and side * side > MAX_IMAGE_PIXELS
    status, text, grown = in_child(lambda: read_training_image(path))
    assert os.WIFEXITED(status)
    assert grown < 60 * 2**20, f"{grown / 2**20:.0f} MiB to refuse a {path.stat().st_size}-byte file"
    assert text.startswith("DataError: ") and "more than the 33,554,432 pixels" in text and "\n" not in text, text


def test_a_big_jpeg_is_decoded_at_a_reduced_scale(tmp_path: Path) -> None:
    Image.new("RGB", (8000, 6000), (200, 30, 30)).save(tmp_path / "photo.jpg", quality=50)
    _, text, grown = in_child(lambda: read_image(tmp_path / "photo.jpg").size)
    assert text == "returned (4000, 3000)" and grown < 100 * 2**20, (text, grown)


@pytest.mark.parametrize("size", [(1, 60000), (60000, 1)])
def test_an_elongated_image_is_refused_before_it_is_resized(tmp_path: Path, size: tuple[int, int]) -> None:
    """1 x 60000 pixels is small, but resized to a shorter side of 256 it would take 11 GB."""
    Image.new("L", size).save(tmp_path / "thin.png")
    img = read_image(tmp_path / "thin.png")
    for prepare in (image_preparer("imagenet", 224), image_preparer("folder", 96)):
        with pytest.raises(DataError) as info:
            prepare(img)
        one_line_message(info, "too elongated", "crop it")
    assert image_preparer("cifar10", 32)(img).shape == (3, 32, 32)  # a plain resize to 32 x 32 is fine


# -- damaged and odd files: one DataError, which --skip_bad_images skips ----------------------------------
def test_a_named_pipe_is_refused_not_read_forever(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "n01440764_1.JPEG")

    def hung(*_args) -> None:
        raise TimeoutError("read_image waited 20 s on a named pipe")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)  # the old reader blocked forever on the pipe
    try:
        with pytest.raises(DataError) as info:
            read_image(tmp_path / "n01440764_1.JPEG")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    one_line_message(info, "not a regular file")


def test_mutated_files_of_every_allowed_format_give_one_data_error() -> None:
    """A short run of the mutation fuzz (tests/image_fuzz.py; its long runs: docs/reliability.md)."""
    report = fuzz(count=600, seed=20261205)
    assert report.findings == [] and report.refused > 100, report.findings[:5]
