"""Training compute of the paper's full-scale recipes, counted with PyTorch's FlopCounterMode.

Prints, for each model the recipes train, the forward FLOPs of one image (multiply-adds count as
two), the training FLOPs of one image (forward + backward, counted too) and the total training
FLOPs of the recipe (epochs x training images). Wall-clock hours depend on the card: divide by the
throughput that `idml bench` measures on yours.

    python experiments/compute_cost.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from idml import build_model

RECIPES = {  # name -> (build_model arguments, input size, epochs, training images)
    "PyramidNet-200/alpha 240, CIFAR-10": (("pyramidnet", "cifar10", 200), {"alpha": 240}, 32, 300, 50_000),
    "PyramidNet-200/alpha 240, CIFAR-100": (("pyramidnet", "cifar100", 200), {"alpha": 240}, 32, 300, 50_000),
    "ResNet-50, ImageNet-1K": (("resnet", "imagenet", 50), {}, 224, 300, 1_281_167),
}


def training_flops(args: tuple, kwargs: dict, size: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per image, with the ISM head, in training mode."""
    model = build_model(*args, **kwargs)
    images = torch.randn(2, 3, size, size)
    with FlopCounterMode(display=False) as forward:
        out = model(images)
    with FlopCounterMode(display=False) as backward:
        torch.nn.functional.cross_entropy(out.train_logits, torch.zeros(2, dtype=torch.long)).backward()
    fwd = forward.get_total_flops() / 2
    return fwd, fwd + backward.get_total_flops() / 2


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("| recipe | forward GFLOPs / image | training GFLOPs / image | epochs x images | training PFLOPs |")
    print("|---|---|---|---|---|")
    for name, (args, kwargs, size, epochs, images) in RECIPES.items():
        fwd, train = training_flops(args, kwargs, size)
        total = train * epochs * images
        print(f"| {name} | {fwd / 1e9:.2f} | {train / 1e9:.2f} | {epochs} x {images:,} | {total / 1e15:,.0f} |")


if __name__ == "__main__":
    main()
