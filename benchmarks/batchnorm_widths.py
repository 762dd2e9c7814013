"""BatchNorm2d forward + backward in NCHW and channels_last, per channel count, under one dtype.

Why the CPU's default memory format depends on the network's widths (``idml.models.layout``):
PyTorch's channels-last BatchNorm kernel is as fast as its NCHW one at some widths and much slower
at others. Run it on the machine you care about:

    python benchmarks/batchnorm_widths.py                      # bfloat16, batch 128 at 16x16
    python benchmarks/batchnorm_widths.py --dtype float32 --size 32 --widths 16,20,64
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils import benchmark

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
FORMATS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def seconds(channels: int, memory_format: torch.memory_format, dtype: torch.dtype, batch: int, size: int) -> float:
    """Median time of one training-mode forward + backward of a BatchNorm2d layer."""
    torch.manual_seed(0)
    layer = torch.nn.BatchNorm2d(channels)
    shape = (batch, channels, size, size)
    x = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format).requires_grad_()
    grad = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format)
    inputs = (x, layer.weight, layer.bias)  # the gradients a training step needs, returned, not accumulated
    timer = benchmark.Timer("torch.autograd.grad(layer(x), inputs, grad)",
                            globals={"torch": torch, "layer": layer, "x": x, "inputs": inputs, "grad": grad},
                            num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.5).median


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=16, help="height = width (default: %(default)s)")
    parser.add_argument("--widths", default="16,17,20,24,31,32,33,40,48,64,65")
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    dtype = DTYPES[args.dtype]
    print(f"# BatchNorm2d forward + backward, {args.dtype}, batch {args.batch} at {args.size}x{args.size}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'channels':>8}{'NCHW ms':>10}{'channels_last ms':>18}{'ratio':>8}")
    for c in widths:
        nchw, last = (seconds(c, fmt, dtype, args.batch, args.size) * 1e3 for fmt in FORMATS.values())
        print(f"{c:>8}{nchw:>10.2f}{last:>18.2f}{last / nchw:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
