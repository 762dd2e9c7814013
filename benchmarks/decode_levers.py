"""The levers of a fast ImageNet worker, each timed alone on the same JPEGs: CPU milliseconds per image.

Decoders: Pillow (the official code's), simplejpeg (libjpeg-turbo; at full size and at each DCT
scale M/8), torchvision's and TorchCodec's ``decode_jpeg``, and, where installed, NVIDIA's
nvImageCodec (CPU backend, whole image and a crop window) and DALI's CPU decoder (whole image, and
a random crop window). Resizing a crop to 224 x 224: Pillow's bilinear filter against PyTorch's
uint8 antialiased kernel. Each round times every lever once over all files, in a shuffled order;
the median round is printed. Only the libraries installed are timed (the script needs neither idml
nor torch, so it runs in a DALI or nvImageCodec environment as well).

    python benchmarks/make_photos.py --out /tmp/photos --count 256
    python benchmarks/decode_levers.py /tmp/photos --rounds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def have(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def crop_windows(sizes: list[tuple[int, int]], seed: int) -> list[tuple[int, int, int, int]]:
    """One (top, left, height, width) window per image: 30% to 100% of each side, anywhere."""
    rng = np.random.default_rng(seed)
    out = []
    for width, height in sizes:
        h, w = int(rng.integers(height * 3 // 10, height + 1)), int(rng.integers(width * 3 // 10, width + 1))
        out.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w))
    return out


def pillow_levers(datas: list[bytes]) -> dict[str, Callable[[int], object]]:
    def decode(i: int):
        with Image.open(io.BytesIO(datas[i])) as img:
            return img.convert("RGB")

    return {"Pillow decode + convert RGB (official)": decode}


def simplejpeg_levers(datas: list[bytes], sizes: list[tuple[int, int]]) -> dict:
    import simplejpeg

    def scaled(eighths: int) -> Callable[[int], object]:
        def run(i: int):
            width, height = sizes[i]
            kwargs = {} if eighths == 8 else {"min_width": -(-width * eighths // 8),
                                              "min_height": -(-height * eighths // 8)}
            return simplejpeg.decode_jpeg(datas[i], "RGB", **kwargs)
        return run

    levers = {f"simplejpeg decode at {k}/8": scaled(k) for k in (8, 7, 6, 5, 4, 2, 1)}
    levers["simplejpeg decode, fast DCT + upsampling"] = lambda i: simplejpeg.decode_jpeg(
        datas[i], "RGB", fastdct=True, fastupsample=True)
    return levers


def fast_dct_difference(datas: list[bytes]) -> str:
    """How far fast DCT + fast upsampling moves the pixels from the exact decode (Pillow's)."""
    import simplejpeg

    gaps = [np.abs(simplejpeg.decode_jpeg(d, "RGB").astype(int)
                   - simplejpeg.decode_jpeg(d, "RGB", fastdct=True, fastupsample=True).astype(int)) for d in datas]
    return (f"# fast DCT + upsampling against the exact decode: mean {np.mean([g.mean() for g in gaps]):.2f} "
            f"grey levels, largest {max(int(g.max()) for g in gaps)}")


def torch_levers(datas: list[bytes], windows: list[tuple[int, int, int, int]]) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    pixels = [np.array(Image.open(io.BytesIO(d)).convert("RGB")) for d in datas]
    levers = {}
    if have("torchvision"):
        import warnings

        from torchvision.io import decode_jpeg

        warnings.simplefilter("ignore", DeprecationWarning)
        levers["torchvision decode_jpeg"] = lambda i: decode_jpeg(tensors[i])
    if have("torchcodec"):
        from torchcodec.decoders import decode_jpeg as torchcodec_decode

        levers["TorchCodec decode_jpeg"] = lambda i: torchcodec_decode(tensors[i])

    def torch_resize(i: int):
        top, left, h, w = windows[i]
        window = pixels[i][top:top + h, left:left + w].copy()
        image = torch.from_numpy(window[None]).permute(0, 3, 1, 2)
        return F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)

    def pillow_resize(i: int):
        top, left, h, w = windows[i]
        return Image.fromarray(pixels[i]).crop((left, top, left + w, top + h)).resize((224, 224), Image.BILINEAR)

    levers["resize crop to 224: PyTorch uint8 kernel"] = torch_resize
    levers["resize crop to 224: Pillow (official)"] = pillow_resize
    return levers


def nvimagecodec_levers(datas: list[bytes], windows: list[tuple[int, int, int, int]]) -> dict:
    from nvidia import nvimgcodec as nv

    decoder = nv.Decoder(device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
                         backends=[nv.Backend(nv.BackendKind.CPU_ONLY)])

    def window(i: int):
        top, left, h, w = windows[i]
        region = nv.Region(start=(top, left), end=(top + h, left + w))
        stream = nv.CodeStream(datas[i]).get_sub_code_stream(region=region)
        return np.asarray(decoder.decode(stream).cpu())

    return {"nvImageCodec CPU decode": lambda i: np.asarray(decoder.decode(nv.CodeStream(datas[i])).cpu()),
            "nvImageCodec CPU decode of the crop window only": window}


def dali_rates(paths: list[str], rounds: int) -> dict[str, float]:
    """DALI's CPU pipelines (one thread, batches of 32): ms per image, whole image or a random crop window."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    batch = 32
    usable = paths[: len(paths) // batch * batch]

    def build(kind: str):
        @pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=1)
        def pipe():
            jpegs, _ = fn.readers.file(files=usable, name="files")
            if kind == "whole":
                return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
            return fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB,
                                                 random_area=[0.08, 1.0], random_aspect_ratio=[0.75, 4 / 3])
        p = pipe()
        p.build()
        return p

    out = {}
    for kind in ("whole", "crop window"):
        p = build(kind)
        for _ in range(len(usable) // batch):  # warm up: one epoch
            p.run()
        times = []
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(len(usable) // batch):
                p.run()
            times.append((time.process_time() - start) / len(usable) * 1e3)
        out[f"DALI CPU decode ({kind}, its file reader included)"] = statistics.median(times)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("data_dir", help="a folder of JPEGs (searched recursively), e.g. from make_photos.py")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=200, help="at most this many files (default: %(default)s)")
    args = parser.parse_args(argv)
    paths = sorted(str(p) for p in Path(args.data_dir).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    paths = paths[: args.limit]
    datas = [Path(p).read_bytes() for p in paths]
    sizes = [Image.open(io.BytesIO(d)).size for d in datas]
    windows = crop_windows(sizes, 0)
    levers = pillow_levers(datas)
    if have("simplejpeg"):
        levers |= simplejpeg_levers(datas, sizes)
    if have("torch"):
        levers |= torch_levers(datas, windows)
    if have("nvidia.nvimgcodec"):
        levers |= nvimagecodec_levers(datas, windows)
    times: dict[str, list[float]] = {name: [] for name in levers}
    order = list(levers)
    for _ in range(args.rounds):
        random.shuffle(order)
        for name in order:
            start = time.process_time()
            for i in range(len(datas)):
                levers[name](i)
            times[name].append((time.process_time() - start) / len(datas) * 1e3)
    results = {name: statistics.median(t) for name, t in times.items()}
    if have("nvidia.dali"):
        results |= dali_rates(paths, args.rounds)
    if have("simplejpeg"):
        print(fast_dct_difference(datas))
    kb = sum(map(len, datas)) / len(datas) / 1024
    print(f"# {len(datas)} JPEGs of {args.data_dir} (mean {kb:.0f} KB); CPU ms per image, median of "
          f"{args.rounds} rounds, one thread; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for name, ms in results.items():
        print(f"{name:<52}{ms:8.3f} ms  ({1e3 / ms:7.0f} images/CPU-s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
