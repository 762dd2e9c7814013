"""Write an ImageNet-layout folder of realistic JPEGs made from real photos, for input-pipeline timings.

Synthetic images mislead: random pixels or heavy grain decode 3-5x slower than photographs of the
same size, and flat colours much faster. So the images here are cut from scikit-learn's two sample
photographs (``sklearn.datasets.load_sample_images``: a temple and a flower, 640 x 427 each):
a random window of each, flipped at random, resized to an ImageNet-like size and re-encoded as a
baseline JPEG (4:2:0 chroma, as most of ImageNet) at a random quality in [75, 95].

    python benchmarks/make_photos.py --out /tmp/photos --count 512

writes ``/tmp/photos/imagenet-1k/{train,val}/<class>/*.JPEG``, the layout ``--dataset imagenet
--data_dir /tmp/photos`` reads. The same ``--seed`` writes the same files. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

#: (width, height) of ImageNet-like photos: ImageNet-1K's training images are mostly 500 pixels on
#: the long side (500 x 375, 500 x 333, 375 x 500), with a minority larger (640 x 480 and up)
SIZES = ((500, 375), (500, 333), (375, 500), (500, 400), (640, 480), (640, 427), (480, 640), (500, 500))
QUALITY = (75, 95)
CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")


def sample_photos() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(array) for array in load_sample_images().images]


def photo(sources: list[Image.Image], size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A window of a random source photo with ``size``'s aspect ratio, resized to ``size`` (Lanczos)
    and flipped at random. The window is at least ``size`` where the photo allows it: enlarging a
    small window would smooth the image and make it decode faster than a real photo."""
    source = sources[int(rng.integers(len(sources)))]
    width, height = source.size
    aspect = size[0] / size[1]
    most = min(width, height * aspect)  # the widest window of this aspect that fits
    w = rng.uniform(min(size[0], most), most)
    h = w / aspect
    left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
    img = source.resize(size, Image.Resampling.LANCZOS, box=(left, top, left + w, top + h))
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality, subsampling="4:2:0")
    return out.getvalue()


def write_folder(out: Path, count: int, seed: int, sizes=SIZES, quality=QUALITY, val_count: int = 8) -> dict:
    """``count`` training and ``val_count`` validation JPEGs under ``out/imagenet-1k``; returns a summary."""
    rng = np.random.default_rng(seed)
    sources = sample_photos()
    val_count = max(val_count, len(CLASSES))  # every class in val/ too, as ImageNet's layout needs
    written = {"files": 0, "bytes": 0, "sizes": {}, "qualities": []}
    for split, n in (("train", count), ("val", val_count)):
        for i in range(n):
            size = sizes[int(rng.integers(len(sizes)))]
            q = int(rng.integers(quality[0], quality[1] + 1))
            data = jpeg_bytes(photo(sources, size, rng), q)
            folder = out / "imagenet-1k" / split / CLASSES[i % len(CLASSES)]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}_{i:06d}_q{q}.JPEG").write_bytes(data)
            written["files"] += 1
            written["bytes"] += len(data)
            written["sizes"][f"{size[0]}x{size[1]}"] = written["sizes"].get(f"{size[0]}x{size[1]}", 0) + 1
            written["qualities"].append(q)
    return written


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", required=True, help="folder to write imagenet-1k/ into")
    parser.add_argument("--count", type=int, default=512, help="training images (default: %(default)s)")
    parser.add_argument("--val_count", type=int, default=8, help="validation images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default=None, help="comma-separated WxH sizes (default: ImageNet-like mix)")
    parser.add_argument("--quality", default=f"{QUALITY[0]}-{QUALITY[1]}",
                        help="JPEG quality range (default: %(default)s)")
    args = parser.parse_args(argv)
    sizes = tuple(parse_size(s) for s in args.sizes.split(",")) if args.sizes else SIZES
    low, _, high = args.quality.partition("-")
    summary = write_folder(Path(args.out), args.count, args.seed, sizes, (int(low), int(high or low)), args.val_count)
    kb = summary["bytes"] / max(summary["files"], 1) / 1024
    print(f"wrote {summary['files']} JPEGs under {Path(args.out) / 'imagenet-1k'} (mean {kb:.0f} KB; sizes "
          f"{summary['sizes']}; quality {min(summary['qualities'])}-{max(summary['qualities'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
