"""The ImageNet colour step on the CPU at every batch size: the official per-image code against idml's.

The official workers run ColorJitter(0.4, 0.4, 0.4), Lighting(0.1) and Normalize on each float
image (written out in :mod:`idml.bench.official_transform`), on one thread as PyTorch runs
DataLoader workers; idml runs the same distribution
(:class:`idml.data.augment.ColorLighting`) on a uint8 batch on the training device: one image at
a time on a CPU (``per_image``), the whole batch at once elsewhere (``batched``, shown here on the
CPU for comparison). Each round times every (batch size, variant) once, in a shuffled order;
images/s are batch over the median CPU time of this process (all its threads): on a machine
that other work shares, CPU time counts the work done, where wall-clock time also counts the
waits for a core.

    python benchmarks/colour_step.py --rounds 7
    python benchmarks/colour_step.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from torchvision import transforms

from idml.bench.official_transform import OfficialColorJitter, OfficialLighting
from idml.bench.pipeline import cpu_description
from idml.data.augment import ColorLighting
from idml.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CPU = torch.device("cpu")


def variants() -> dict:
    """name -> function(uint8 batch, float batch, rng): the colour step of that code."""
    colour = ColorLighting(IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC, CPU, jitter=0.4, lighting=0.1)
    official = transforms.Compose([OfficialColorJitter(0.4), OfficialLighting(0.1),
                                   transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    def official_step(floats: torch.Tensor) -> list[torch.Tensor]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in its DataLoader workers, which PyTorch runs on one thread each
        try:
            return [official(x) for x in floats]
        finally:
            torch.set_num_threads(threads)

    return {
        "official per image": lambda u8, floats, rng: official_step(floats),
        "idml per image": lambda u8, floats, rng: colour.per_image(u8, colour.draws(len(u8), rng)),
        "idml batched": lambda u8, floats, rng: colour.batched(u8, colour.draws(len(u8), rng)),
    }


def measure(rounds: int, size: int, batches: tuple[int, ...]) -> dict[tuple[str, int], list[float]]:
    gen = torch.Generator().manual_seed(0)
    data = {b: torch.randint(0, 256, (b, 3, size, size), generator=gen, dtype=torch.uint8) for b in batches}
    floats = {b: data[b].float() / 255 for b in batches}  # the official step starts from ToTensor's floats
    fns = variants()
    times: dict[tuple[str, int], list[float]] = {(name, b): [] for name in fns for b in batches}
    order = list(times)
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        for k in rng.permutation(len(order)):
            name, b = order[k]
            start = time.process_time()
            fns[name](data[b], floats[b], rng)
            times[(name, b)].append(time.process_time() - start)
    return times


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the batched variant (default: torch's; the others use one)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = tuple(int(b) for b in args.batches.split(","))
    times = measure(args.rounds, args.size, batches)
    rates = {f"{name} @ {b}": round(b / statistics.median(t), 1) for (name, b), t in times.items()}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_description(),
              "threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in os.getloadavg()],
              "size": args.size, "rounds": args.rounds, "images_per_second": rates}
    if args.json:
        print(json.dumps(result))
        return 0
    names = list(dict.fromkeys(name for name, _ in times))
    print(f"# {result['date']}; {result['cpu']['model']} ({' '.join(result['cpu']['flags'])}); "
          f"{result['threads']} threads; load {result['load_average']}; {args.size}x{args.size}; images per CPU-second")
    print(f"{'batch':>6}" + "".join(f"{name:>22}" for name in names) + f"{'per image / official':>22}")
    for b in batches:
        row = [rates[f"{name} @ {b}"] for name in names]
        print(f"{b:>6}" + "".join(f"{r:>22.1f}" for r in row) + f"{row[1] / row[0]:>22.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
