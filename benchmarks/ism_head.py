"""The ISM head's own cost: forward + backward of the head alone, against a plain linear head.

PyramidNet-110 (alpha 48) shapes by default: a batch of 128 pooled 64-channel features, 10 classes.
Process CPU time per forward + backward, median of 5 repeats of 200 iterations, in float32 and
under bfloat16 autocast. Compare with a whole training step (``idml bench``) to see the share:

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/ism_head.py
    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/ism_head.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from idml.ism import ISMHead


def cost_ms(head: ISMHead, features: torch.Tensor, bf16: bool, iterations: int = 200) -> float:
    targets = torch.zeros(features.shape[0], dtype=torch.long)
    start = time.process_time()
    for _ in range(iterations):
        x = features.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = head(x)
        F.cross_entropy(out.train_logits.float(), targets).backward()
    return (time.process_time() - start) / iterations * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    ism, linear = ISMHead(args.features, args.classes), ISMHead(args.features, args.classes, uncertainty_dim=None)
    features = torch.randn(args.batch, args.features)
    print(f"# {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    for bf16 in (False, True):
        ism_ms = statistics.median(cost_ms(ism, features, bf16) for _ in range(5))
        linear_ms = statistics.median(cost_ms(linear, features, bf16) for _ in range(5))
        print(f"{'bf16 autocast' if bf16 else 'float32'}: ISM head {ism_ms:.3f} ms, linear head {linear_ms:.3f} ms "
              f"(CPU time per forward + backward)")


if __name__ == "__main__":
    main()
