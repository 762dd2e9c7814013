"""The official code's ImageNet training transform, per image in a DataLoader worker: the reference
that ``idml bench --input_pipeline`` and ``benchmarks/input_pipeline.py`` time idml's pipeline against.

The official ``train.py`` composes torchvision's ``RandomResizedCrop(224)``,
``RandomHorizontalFlip()`` and ``ToTensor()`` (on a PIL image that its ImageFolder decoded and
converted to RGB) with its own ``ColorJitter(0.4, 0.4, 0.4)``, AlexNet's PCA ``Lighting(0.1)`` and
``Normalize``. The two colour steps are written here again, operation for operation as that code
runs them (so that they cost what they cost there): brightness, contrast and saturation in an
order from ``torch.randperm``, each ``img.lerp(target, a)`` with ``a`` uniform in [-0.4, 0.4]
from Python's ``random``, the target a zero image, a grey image filled with its mean, or the grey
image (a clone whose three channels hold 0.299 R + 0.587 G + 0.114 B), nothing clamped; then
``eigvec * alpha * eigval`` summed per row, added per channel. idml computes the same
distribution with torchvision's definitions (:class:`idml.data.augment.ColorLighting`).
"""

from __future__ import annotations

import random

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms

from idml.data.image_files import opened
from idml.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC

#: the official code's grey weights (ITU-R 601, rounded as fb.resnet.torch rounds them)
OFFICIAL_GRAY = (0.299, 0.587, 0.114)


def official_gray(img: Tensor) -> Tensor:
    """A 3-channel grey copy of ``img``, computed in place on a clone as the official code does."""
    gray = img.clone()
    gray[0].mul_(OFFICIAL_GRAY[0]).add_(gray[1], alpha=OFFICIAL_GRAY[1]).add_(gray[2], alpha=OFFICIAL_GRAY[2])
    gray[1].copy_(gray[0])
    gray[2].copy_(gray[0])
    return gray


class OfficialColorJitter:
    """ColorJitter(brightness, contrast, saturation = ``var``) of the official code, on one float image."""

    def __init__(self, var: float = 0.4) -> None:
        self.var = var

    def brightness(self, img: Tensor) -> Tensor:
        return img.lerp(img.new().resize_as_(img).zero_(), random.uniform(-self.var, self.var))

    def contrast(self, img: Tensor) -> Tensor:
        gray = official_gray(img)
        gray.fill_(gray.mean())
        return img.lerp(gray, random.uniform(-self.var, self.var))

    def saturation(self, img: Tensor) -> Tensor:
        return img.lerp(official_gray(img), random.uniform(-self.var, self.var))

    def __call__(self, img: Tensor) -> Tensor:
        steps = (self.brightness, self.contrast, self.saturation)
        for i in torch.randperm(len(steps)).tolist():
            img = steps[i](img)
        return img


class OfficialLighting:
    """AlexNet's PCA lighting noise as the official code adds it to one float image."""

    def __init__(self, alphastd: float = 0.1) -> None:
        self.alphastd = alphastd
        self.eigval, self.eigvec = torch.tensor(PCA_EIGVAL), torch.tensor(PCA_EIGVEC)

    def __call__(self, img: Tensor) -> Tensor:
        alpha = img.new().resize_(3).normal_(0, self.alphastd)
        rgb = (self.eigvec.clone().mul(alpha.view(1, 3).expand(3, 3))
               .mul(self.eigval.view(1, 3).expand(3, 3)).sum(1).squeeze())
        return img.add(rgb.view(3, 1, 1).expand_as(img))


def official_train_transform(size: int = 224) -> transforms.Compose:
    """The official ImageNet training transform, from an RGB PIL image to a normalised float tensor."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        OfficialColorJitter(0.4),
        OfficialLighting(0.1),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def read_official(path: str) -> Image.Image:
    """The official ImageFolder's loader (torchvision's ``pil_loader``): the file opened by Pillow
    and converted to RGB, which decodes it whole (through idml's one opener, without its copy)."""
    with opened(path, path) as img:
        return img.convert("RGB")
