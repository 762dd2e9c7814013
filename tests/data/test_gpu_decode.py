"""--decode gpu, tested without a GPU: its CPU twin (the same code with device="cpu") and mocks
of the device decoder. No test here needs CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from expect import one_line_message as assert_one_line_error
from fake_data import jpeg, photo
from idml.config import TrainConfig
from idml.data import gpu_decode
from idml.data.build import build_data, training_decode
from idml.data.crops import CropDraw
from idml.data.gpu_decode import DeviceDecoder, EncodedBatch, EncodedCropFlip, EncodedSample
from idml.data.gpu_decode import decode_jpeg as real_decode_jpeg
from idml.data.image_files import decode_rgb, read_encoded
from idml.data.imagenet import load_imagenet
from idml.data.loaders import SeededImages
from idml.data.types import DataRequest
from idml.errors import ConfigError, DataError
from runs import run_cli

CPU = torch.device("cpu")


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """imagenet-1k/{train,val}/<2 classes> of photo JPEGs of ImageNet-like sizes."""
    sizes = ((500, 375), (375, 500), (640, 427), (500, 333))
    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / "imagenet-1k" / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i, size in enumerate(sizes):
                jpeg(folder / f"{i}.JPEG", photo(*size, index=(c + i) % 2), quality=80 + 5 * i)
    return tmp_path


def batch_of(paths: list[Path], draws: list[CropDraw] | None = None) -> EncodedBatch:
    images = [read_encoded(p) for p in paths]
    draws = draws or [CropDraw(5, 7, min(im.height, 300) - 5, min(im.width, 320) - 7, i % 2 == 1)
                      for i, im in enumerate(images)]
    return EncodedSample.collate([EncodedSample(im, d) for im, d in zip(images, draws, strict=True)])


def test_the_cpu_twin_gives_the_cpu_paths_crops(photo_folder: Path) -> None:
    """Same seed, same draws: the GPU path's batches (decoded by torchvision on the CPU here) equal
    the CPU path's within one grey level of resampling."""
    batches = {}
    for decode in ("cpu", "gpu"):
        data = build_data(DataRequest("imagenet", photo_folder, batch_size=4, workers=0, seed=3, decode=decode), CPU)
        data.train.set_epoch(1)
        batches[decode] = [images for images, _ in data.train]
    assert len(batches["gpu"]) == len(batches["cpu"]) == 2
    for ours, cpu in zip(batches["gpu"], batches["cpu"], strict=True):
        assert ours.shape == cpu.shape == (4, 3, 224, 224) and ours.dtype == torch.uint8
        difference = (ours.int() - cpu.int()).abs()
        assert difference.max() <= 1 and difference.float().mean() < 0.2


def test_workers_only_read_bytes_and_draw(photo_folder: Path) -> None:
    """The GPU path's worker transform decodes nothing, and its draws depend on (seed, epoch, index) only."""
    images = SeededImages(load_imagenet(photo_folder, "gpu")["train"], seed=5, skip_bad=False)
    sample, _ = images[(2, 3)]
    assert isinstance(sample, EncodedSample) and sample.image.data[:2] == b"\xff\xd8"
    torch.rand(50)  # the global generator plays no part
    assert images[(2, 3)][0].draw == sample.draw
    assert images[(2, 4)][0].draw != sample.draw
    assert isinstance(images.images.transform, EncodedCropFlip)


def test_one_batched_call_of_the_device_decoder(photo_folder: Path, monkeypatch) -> None:
    """On a CUDA device, every plain JPEG of a batch goes to torchvision's decoder in one call with
    device="cuda" (mocked here: it decodes on the CPU and records the call)."""
    calls = []

    def fake_decode(data, device):
        calls.append((len(data), [t.dtype for t in data], [t.dim() for t in data], device))
        return real_decode_jpeg(data, CPU)

    monkeypatch.setattr(gpu_decode, "decode_jpeg", fake_decode)
    paths = sorted((photo_folder / "imagenet-1k" / "train").rglob("*.JPEG"))[:5]
    images, labels = DeviceDecoder(torch.device("cuda"))(batch_of(paths), torch.arange(5))
    assert calls == [(5, [torch.uint8] * 5, [1] * 5, torch.device("cuda"))]
    assert images.shape == (5, 3, 224, 224) and torch.equal(labels, torch.arange(5))


def test_batch_bytes_travel_in_one_buffer(photo_folder: Path) -> None:
    paths = sorted((photo_folder / "imagenet-1k" / "train").rglob("*.JPEG"))[:3]
    batch = batch_of(paths)
    assert batch.data.dim() == 1 and batch.data.numel() == sum(p.stat().st_size for p in paths)
    assert all(bytes(batch.file(i).numpy()) == p.read_bytes() for i, p in enumerate(paths))
    assert all(head.data == b"" for head in batch.heads)  # the bytes travel once


def bad_batch(tmp_path: Path, photo_folder: Path) -> tuple[EncodedBatch, Path]:
    good = sorted((photo_folder / "imagenet-1k" / "train").rglob("*.JPEG"))[:2]
    png = tmp_path / "frame.JPEG"
    photo(300, 240).save(png, format="PNG")  # a PNG named .JPEG, as ImageNet has one
    broken = jpeg(tmp_path / "broken.JPEG", photo(300, 240))
    broken.write_bytes(broken.read_bytes()[:3000])
    return batch_of([good[0], png, broken, good[1]]), broken


def test_an_unreadable_file_is_one_line(tmp_path: Path, photo_folder: Path) -> None:
    batch, broken = bad_batch(tmp_path, photo_folder)
    with pytest.raises(DataError) as info:
        DeviceDecoder(CPU)(batch, torch.arange(4))
    assert_one_line_error(info, "cannot read image", str(broken), "--skip_bad_images")


def test_skip_bad_images_drops_the_file_and_its_label(tmp_path: Path, photo_folder: Path, capfd) -> None:
    batch, broken = bad_batch(tmp_path, photo_folder)
    skipped = []
    images, labels = DeviceDecoder(CPU, skip_bad=True, note_skipped=skipped.append)(batch, torch.tensor([7, 8, 9, 10]))
    assert images.shape == (3, 3, 224, 224) and labels.tolist() == [7, 8, 10]  # the PNG decoded on the CPU
    assert skipped == [str(broken)]
    assert "refused a batch" in capfd.readouterr().err  # torchvision refused the truncated JPEG: CPU fallback


def test_a_batch_the_device_refuses_is_decoded_on_the_cpu(photo_folder: Path, monkeypatch, capfd) -> None:
    paths = sorted((photo_folder / "imagenet-1k" / "train").rglob("*.JPEG"))[:3]
    expected, _ = DeviceDecoder(CPU)(batch_of(paths), torch.arange(3))

    def refuse(data, device):
        raise RuntimeError("nvjpeg: unsupported")

    monkeypatch.setattr(gpu_decode, "decode_jpeg", refuse)
    decoder = DeviceDecoder(CPU)
    images, _ = decoder(batch_of(paths), torch.arange(3))
    images, _ = decoder(batch_of(paths), torch.arange(3))
    assert decoder.fallbacks == 2 and capfd.readouterr().err.count("refused a batch") == 1
    assert (images.int() - expected.int()).abs().max() <= 1  # the CPU path's kernel, within rounding


@pytest.mark.parametrize("library", ["torchvision", "torchcodec"])
def test_either_decoding_library_gives_pillows_pixels(photo_folder: Path, monkeypatch, library: str) -> None:
    """TorchCodec's decoder where installed, torchvision's otherwise: the same pixels as the CPU path."""
    if library == "torchcodec":
        pytest.importorskip("torchcodec.decoders")
        from torchcodec.decoders import decode_jpeg as decoder

        monkeypatch.setattr(gpu_decode, "torchcodec_decode_jpeg", decoder)
    else:
        monkeypatch.setattr(gpu_decode, "torchcodec_decode_jpeg", None)
    paths = sorted((photo_folder / "imagenet-1k" / "train").rglob("*.JPEG"))[:3]
    batch = batch_of(paths)
    decoded = gpu_decode.decode_jpeg([batch.file(i) for i in range(3)], CPU)
    for image, path in zip(decoded, paths, strict=True):
        expected = decode_rgb(read_encoded(path))
        assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))


def test_decode_choice_needs_cuda_and_imagenet(tmp_path: Path, capsys) -> None:
    assert training_decode("auto", CPU) == "cpu" and training_decode("auto", torch.device("cuda")) == "gpu"
    with pytest.raises(ConfigError) as info:
        training_decode("gpu", CPU)
    assert_one_line_error(info, "--decode gpu", "--decode cpu")
    with pytest.raises(ConfigError) as info:
        TrainConfig(dataset="cifar10", decode="gpu")
    assert_one_line_error(info, "--decode gpu applies to --dataset imagenet")
    code, _, err = run_cli(["--dataset", "imagenet", "--net_type", "resnet", "--depth", "18", "--decode", "gpu",
                            "--device", "cpu", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "runs")],
                           capsys)
    assert code == 2 and "--decode gpu" in err and len(err.strip().splitlines()) == 1, err


def test_labels_follow_the_images_with_every_file_readable(photo_folder: Path) -> None:
    data = build_data(DataRequest("imagenet", photo_folder, batch_size=8, workers=0, decode="gpu"), CPU)
    data.train.set_epoch(0)
    images, labels = next(iter(data.train))
    assert images.shape[0] == labels.shape[0] == 8 and sorted(np.bincount(labels.numpy())) == [4, 4]


def test_a_jpeg_above_the_pixel_limit_is_decoded_reduced_on_the_cpu(tmp_path: Path, monkeypatch) -> None:
    """The device decoder decodes files whole: a JPEG above idml's pixel limit goes to the CPU path,
    which decodes it at the reduced scale the limit allows; the others stay on the device."""
    from idml.data import image_files

    monkeypatch.setattr(image_files, "MAX_IMAGE_PIXELS", 400 * 300)
    paths = [jpeg(tmp_path / "small.jpg", photo(320, 240)), jpeg(tmp_path / "big.jpg", photo(640, 480))]
    on_device: list[int] = []

    def device_decoder(files, device):
        on_device.extend(len(f) for f in files)
        return real_decode_jpeg(files, device)

    monkeypatch.setattr(gpu_decode, "decode_jpeg", device_decoder)
    draws = [CropDraw(0, 0, 240, 320, False), CropDraw(0, 0, 480, 640, False)]
    images, labels = DeviceDecoder(CPU, size=32)(batch_of(paths, draws), torch.tensor([0, 1]))
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [0, 1]
    assert on_device == [paths[0].stat().st_size]
    whole = torch.from_numpy(decode_rgb(read_encoded(paths[1]), 2)).permute(2, 0, 1)
    expected = torch.nn.functional.interpolate(whole[None], size=(32, 32), mode="bilinear", antialias=True)[0]
    assert (images[1].int() - expected.round().int()).abs().max() <= 2
