"""How far idml's training crops are from the official ones, in grey levels, on real photos.

For crops drawn as RandomResizedCrop draws them, this compares idml's crop (the pipeline of
:mod:`idml.data.crops`) with the official one (the whole JPEG decoded by Pillow, then torchvision's
crop-then-resize, bilinear): the mean absolute difference per pixel and channel, in grey levels
(0-255). Two yardsticks are printed beside it: the official crop against itself from the same
photo re-encoded 5 JPEG quality points lower, and against itself shifted by one pixel.

Only crops of at least 2 x 224 pixels a side are decoded at a reduced scale, so the photos are
scikit-learn's two sample photographs resized (Lanczos) to sizes where such crops occur; the
``full`` rows are crops of the same photos taken at full scale.

    python benchmarks/crop_fidelity.py --crops 15
"""

from __future__ import annotations

import argparse
import io
import sys
from collections import defaultdict

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from idml.data.crops import CropDraw, crop_resize_flip, draw_crop, reduction
from idml.data.image_files import decode_rgb, jpeg_header

SIZES = ((640, 480), (1000, 750), (1600, 1200))
QUALITIES = (75, 90)


def encoded(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def official_crop(img: Image.Image, d: CropDraw) -> torch.Tensor:
    return TF.pil_to_tensor(TF.resized_crop(img, d.top, d.left, d.height, d.width, [224, 224])).float()


def differences(img: Image.Image, quality: int, draws: list[CropDraw]) -> list[tuple[int, float, float, float]]:
    """(reduction, idml vs official, re-encoded vs official, shifted vs official) per draw."""
    data = encoded(img, quality)
    head = jpeg_header(data, "photo")
    official = Image.open(io.BytesIO(data)).convert("RGB")
    worse = Image.open(io.BytesIO(encoded(official, quality - 5))).convert("RGB")
    rows = []
    for d in draws:
        r = reduction(d, 224)
        reference = official_crop(official, d)
        ours = crop_resize_flip(decode_rgb(head, r), d, head.width, head.height, 224, r).float()
        shifted = CropDraw(d.top + 1, d.left + 1, d.height, d.width, False)
        gap = [(other - reference).abs().mean().item()
               for other in (ours, official_crop(worse, d), official_crop(official, shifted))]
        rows.append((r, *gap))
    return rows


def main(argv: list[str]) -> int:
    from sklearn.datasets import load_sample_images

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--crops", type=int, default=15, help="crops per photo, size and quality and kind")
    args = parser.parse_args(argv)
    sources = [Image.fromarray(a) for a in load_sample_images().images]
    table: dict[tuple, list] = defaultdict(list)
    torch.manual_seed(0)
    for size in SIZES:
        for source in sources:
            img = source.resize(size, Image.Resampling.LANCZOS)
            for quality in QUALITIES:
                reduced, full = [], []
                while len(reduced) < args.crops or len(full) < args.crops:
                    d = draw_crop(*size)
                    d = CropDraw(d.top, d.left, d.height, d.width, False)
                    group = reduced if reduction(d, 224) > 1 else full
                    if len(group) < args.crops and d.top + d.height < size[1] and d.left + d.width < size[0]:
                        group.append(d)
                for r, *values in differences(img, quality, reduced + full):
                    table[(f"{size[0]}x{size[1]}", f"1/{r}" if r > 1 else "full")].append(values)
    print("photo size, decode scale, crops: mean |difference| from the official crop, grey levels (0-255):")
    print(f"{'':<22}{'idml':>8}{'official, JPEG q-5':>20}{'official, 1 px off':>20}")
    for (size, scale), rows in sorted(table.items()):
        mean = np.mean(rows, axis=0)
        print(f"{size:<11}{scale:<6}{len(rows):>5}{mean[0]:>8.2f}{mean[1]:>20.2f}{mean[2]:>20.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
