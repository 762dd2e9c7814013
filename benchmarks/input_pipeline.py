"""The official ImageNet worker transform beside idml's input pipeline: alternated, on the same files.

For each ``-j`` given (default 1 and 2 DataLoader workers), both pipelines load the same training
files into normalised batches on ``--device``, an epoch over ``--images`` files per turn, taking
turns in shuffled rounds (``idml bench --input_pipeline``, :mod:`idml.bench.pipeline`), and the
paired ratio idml / official is printed with images/s, images per CPU-second (this process and its
workers) and per worker-CPU-second. The official transform is written out in
:mod:`idml.bench.official_transform` (Pillow decode, RandomResizedCrop, flip, ToTensor,
ColorJitter, Lighting, Normalize per image).

    python benchmarks/make_photos.py --out /tmp/photos --count 512
    python benchmarks/input_pipeline.py --data_dir /tmp/photos --workers 1 2 --steps 6

``--photo_sets`` instead writes several folders of photos of one size and quality each (with
make_photos.py) and measures ``-j 1`` on each, to see the ratio across image sizes and JPEG
qualities. ``--out DIR`` keeps every run's JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_photos import write_folder

from idml.bench.pipeline import measure_pipeline
from idml.config import TrainConfig

#: (name, sizes, JPEG quality range) of the --photo_sets measurement: ImageNet-like sizes and qualities
PHOTO_SETS = (
    ("500x375-q75", ((500, 375),), (75, 75)),
    ("500x375-q95", ((500, 375),), (95, 95)),
    ("375x500-q85", ((375, 500),), (85, 85)),
    ("500x333-q90", ((500, 333),), (90, 90)),
    ("640x480-q80", ((640, 480),), (80, 80)),
    ("640x427-q92", ((640, 427),), (92, 92)),
)


def measure(data_dir: Path, workers: int, args: argparse.Namespace) -> dict:
    cfg = TrainConfig(dataset="imagenet", net_type="resnet", depth=50, data_dir=str(data_dir), workers=workers,
                      batch_size=args.batch_size, device=args.device, seed=args.seed, decode=args.decode)
    return measure_pipeline(cfg, ["idml", "official"], args.steps, args.warmup, args.images)


def line(label: str, result: dict) -> str:
    by = {r["variant"]: r for r in result["results"]}
    idml, official = by["idml"], by["official"]
    return (f"{label:<14} official {official['images_per_second']:7.1f} img/s {official['images_per_cpu_second']!s:>7} "
            f"img/CPU-s | idml {idml['images_per_second']:7.1f} img/s {idml['images_per_cpu_second']!s:>7} img/CPU-s "
            f"{idml['images_per_worker_cpu_second']!s:>7} img/worker-CPU-s | idml / official "
            f"{result['ratios']['idml / official']:.2f} (paired) | load {result['load_average']}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--data_dir", help="a folder with imagenet-1k/train/<class>/*.JPEG (not with --photo_sets)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="-j values (default: 1 2)")
    parser.add_argument("--photo_sets", action="store_true", help="measure -j 1 on photo folders of several sizes "
                        "and qualities, written with make_photos.py")
    parser.add_argument("--count", type=int, default=320, help="--photo_sets: photos per set (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--images", type=int, default=None, help="images per turn (default: 8 batches)")
    parser.add_argument("--steps", type=int, default=6, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--decode", default="cpu", choices=("cpu", "gpu", "auto"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder to keep each run's JSON in")
    args = parser.parse_args(argv)
    if not args.photo_sets and not args.data_dir:
        parser.error("give --data_dir (benchmarks/make_photos.py writes one) or --photo_sets")
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", flush=True)
    runs = []
    if args.photo_sets:
        with tempfile.TemporaryDirectory() as tmp:
            for name, sizes, quality in PHOTO_SETS:
                folder = Path(tmp) / name
                write_folder(folder, args.count, args.seed, sizes, quality, val_count=4)
                runs.append((name, measure(folder, 1, args)))
                print(line(f"{name} -j 1", runs[-1][1]), flush=True)
    else:
        for workers in args.workers:
            runs.append((f"j{workers}", measure(Path(args.data_dir), workers, args)))
            print(line(f"-j {workers}", runs[-1][1]), flush=True)
    if out:
        for name, result in runs:
            (out / f"input-pipeline-{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    cpu = runs[0][1]["cpu"]
    print(f"# CPU {cpu['model']} ({' '.join(cpu['flags'])}), {cpu['cores']} cores; torch threads "
          f"{runs[0][1]['threads']}; device {runs[0][1]['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
