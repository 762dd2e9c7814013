"""Tiny trained checkpoints of every model family ``idml export`` must handle, trained for one short
epoch through ``idml train`` in this process (so that BatchNorm statistics, the temperature and the
weights are those of a real run, not of an initialisation)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import fake_data
from runs import single_thread

#: family -> (data kind, idml train arguments). Data: "cifar" (fake CIFAR-10, 32x32), or a class
#: folder "folder:<input size>:<image width>x<image height>".
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "resnet-cifar": ("cifar", ["--net_type", "resnet", "--depth", "8", "--no-bottleneck", "--val_split", "0.25"]),
    "resnet-imagenet": ("folder:72:90x80", ["--net_type", "resnet", "--depth", "18"]),
    "pyramidnet": ("cifar", ["--net_type", "pyramidnet", "--depth", "8", "--alpha", "12", "--no-bottleneck"]),
    # four epochs: after one, eval-mode BatchNorm statistics of ResNet-18's 1x1 last stage send the logits to 1e4
    "torchvision": ("cifar", ["--net_type", "torchvision:resnet18", "--epochs", "4"]),
    "timm": ("cifar", ["--net_type", "timm:resnet10t"]),
    "folder-48": ("folder:48:60x50", ["--net_type", "resnet", "--depth", "8", "--no-bottleneck"]),
    "bf16-channels_last": ("cifar", ["--net_type", "resnet", "--depth", "8", "--no-bottleneck", "--amp", "bf16",
                                     "--channels_last"]),
}
COMMON = ["--epochs", "1", "--batch_size", "16", "--lr", "0.05", "--device", "cpu", "--workers", "0", "--no-verbose"]


def make_data(root: Path, kind: str) -> list[str]:
    """Write the data ``kind`` names under ``root``; the idml train arguments that read it."""
    if kind == "cifar":
        fake_data.make_cifar10(root, n_train=160, n_test=40)
        return ["--dataset", "cifar10", "--data_dir", str(root)]
    _, size, shape = kind.split(":")
    width, height = map(int, shape.split("x"))
    fake_data.make_image_folder(root, per_class=16, val_per_class=6, size=(width, height))
    return ["--dataset", "folder", "--data_dir", str(root), "--input_size", size]


def train(root: Path, family: str) -> Path:
    """Train ``family`` under ``root``; the path of its model_best.pth.tar."""
    from idml.cli import main

    kind, args = FAMILIES[family]
    data = make_data(root / "data", kind)
    amp = [] if "--amp" in args else ["--amp", "off"]
    argv = ["train", *data, *COMMON, *args, *amp, "--output_dir", str(root / "runs"), "--expname", family]
    with single_thread(), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, argv
    return root / "runs" / family / "model_best.pth.tar"
