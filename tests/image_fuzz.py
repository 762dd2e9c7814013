"""A mutation fuzz of the one image opener (:func:`idml.data.image_files.read_image`).

Seed files of every decoder idml allows (and of modes and compressions each can hold) are mutated
(bytes flipped, set to boundary values, cut, repeated, inserted; header fields scaled), and each
mutant goes through what training and predict do with a file: decode, convert, prepare. The only
acceptable failure is :class:`idml.errors.DataError` (what ``--skip_bad_images`` skips). Any other
exception, a decode slower than :data:`SLOW_S` or a mutant that grows the process's peak memory
by more than :data:`MAX_GROWTH` is a finding.

``tests/data/test_image_files.py`` runs a few hundred mutants on every test run; a longer fuzz:

    python tests/image_fuzz.py --seconds 300
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from idml.data.image_files import image_preparer, read_image, read_training_image
from idml.errors import DataError

SLOW_S = 5.0
MAX_GROWTH = 400 * 2**20  # bytes of peak RSS one mutant may add


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def seed_files() -> dict[str, bytes]:
    """Small valid files of each allowed decoder, in the modes and compressions it can hold."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    gray = rgb.convert("L")
    wide = Image.fromarray(rng.integers(0, 4000, (12, 10), dtype=np.uint16))
    seeds = {
        "png-rgb": _save(rgb, "PNG"), "png-l": _save(gray, "PNG"), "png-rgba": _save(rgb.convert("RGBA"), "PNG"),
        "png-p": _save(rgb.convert("P"), "PNG"), "png-1": _save(gray.convert("1"), "PNG"),
        "png-i16": _save(wide, "PNG"), "png-interlaced": _save(rgb, "PNG", interlace=1),
        "jpeg-rgb": _save(rgb, "JPEG"), "jpeg-l": _save(gray, "JPEG"), "jpeg-cmyk": _save(rgb.convert("CMYK"), "JPEG"),
        "jpeg-progressive": _save(rgb, "JPEG", progressive=True),
        "bmp-rgb": _save(rgb, "BMP"), "bmp-p": _save(rgb.convert("P"), "BMP"), "bmp-1": _save(gray.convert("1"), "BMP"),
        "gif": _save(rgb.convert("P"), "GIF"),
        "gif-anim": _save(rgb.convert("P"), "GIF", save_all=True, append_images=[gray.convert("P")]),
        "tiff-raw": _save(rgb, "TIFF"), "tiff-lzw": _save(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-deflate": _save(gray, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-packbits": _save(rgb, "TIFF", compression="packbits"),
        "tiff-jpeg": _save(rgb, "TIFF", compression="jpeg"), "tiff-i16": _save(wide, "TIFF"),
        "tiff-f": _save(Image.fromarray(rng.random((12, 10), dtype=np.float32)), "TIFF"),
        "tiff-i32": _save(Image.fromarray(rng.integers(0, 70000, (12, 10), dtype=np.int32)), "TIFF"),
        "webp-lossy": _save(rgb, "WEBP"), "webp-lossless": _save(rgb, "WEBP", lossless=True),
        "ppm": _save(rgb, "PPM"), "pgm": _save(gray, "PPM"), "pbm": _save(gray.convert("1"), "PPM"),
    }
    return seeds


INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random mutations of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        kind = rng.randrange(7)
        at = rng.randrange(len(out))
        if kind == 0:  # flip a bit
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:  # a boundary byte
            out[at] = rng.choice(INTERESTING)
        elif kind == 2:  # a 16- or 32-bit boundary value (sizes, offsets and counts in headers)
            width = rng.choice((2, 4))
            out[at:at + width] = rng.choice((b"\xff", b"\x00", b"\x7f", b"\x80")) * width
        elif kind == 3:  # cut the file
            del out[at:]
        elif kind == 4:  # repeat a block
            end = min(len(out), at + rng.randint(1, 64))
            out[at:at] = out[at:end] * rng.randint(1, 8)
        elif kind == 5:  # insert random bytes
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:  # remove a block
            del out[at:at + rng.randint(1, 32)]
    return bytes(out)


#: what a file goes through: training (RGB, 32 px and 224 px preparers) and predict of a digit
PREPARERS = [image_preparer("cifar10", 32), image_preparer("folder", 96), image_preparer("digits", 32)]


def exercise(data: bytes) -> None:
    """Decode ``data`` as training and predict would, and prepare it for a model."""
    img = read_training_image(data, "mutant")
    for prepare in PREPARERS:
        prepare(img)
    read_image(data, "mutant")


@dataclass
class Report:
    files: int = 0
    refused: int = 0
    findings: list[str] = field(default_factory=list)


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mutants(count: int | None, seconds: float | None, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    seeds = seed_files()
    names = sorted(seeds)
    start = time.monotonic()
    n = 0
    while (count is None or n < count) and (seconds is None or time.monotonic() - start < seconds):
        name = names[n % len(names)]
        yield name, mutate(seeds[name], rng)
        n += 1


def fuzz(count: int | None = None, seconds: float | None = None, seed: int = 0) -> Report:
    """Run the mutants; every finding names its seed file and what went wrong."""
    report = Report()
    for name, data in mutants(count, seconds, seed):
        before, began = _peak(), time.monotonic()
        try:
            exercise(data)
        except DataError:
            report.refused += 1
        except Exception as exc:  # a finding: everything else must have become a DataError
            report.findings.append(f"{name}: {type(exc).__name__}: {exc} ({data[:64].hex()}...)")
        took, grew = time.monotonic() - began, _peak() - before
        if took > SLOW_S:
            report.findings.append(f"{name}: {took:.1f} s to decode {len(data)} bytes")
        if grew > MAX_GROWTH:
            report.findings.append(f"{name}: peak memory grew by {grew / 2**20:.0f} MiB for {len(data)} bytes")
        report.files += 1
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description="Mutation fuzz of idml's image opener.", allow_abbrev=False)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = fuzz(seconds=args.seconds, seed=args.seed)
    print(f"{report.files} mutants, {report.refused} refused with one line, {len(report.findings)} findings")
    for finding in report.findings[:50]:
        print(finding)
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
