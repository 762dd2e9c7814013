"""PyramidNet (Han, Kim, Kim, CVPR 2017): residual networks whose width grows linearly.

Every block widens the features by ``alpha / total_blocks`` channels. Blocks are pre-activation
with an extra BatchNorm after the last convolution and no ReLU before the addition; downsampling
shortcuts are a 2x2 average pool, and the channels the shortcut lacks are zero-padded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idml.errors import ConfigError
from idml.models.resnet import _init_weights, blocks_per_stage
from idml.models.spec import depth_problem

IMAGENET_STAGES = {  # one layout per depth of idml.models.spec.IMAGENET_DEPTHS
    18: (False, [2, 2, 2, 2]),
    34: (False, [3, 4, 6, 3]),
    50: (True, [3, 4, 6, 3]),
    101: (True, [3, 4, 23, 3]),
    152: (True, [3, 8, 36, 3]),
    200: (True, [3, 24, 36, 3]),
}


class _AddIntoLeadingChannels(torch.autograd.Function):
    """``out[:, :C] += shortcut`` in place, with a backward that only takes views.

    Autograd's generic in-place-on-a-slice path (``CopySlices``) clones and zero-fills the whole
    gradient in backward; here the gradient passes through unchanged and the shortcut's gradient
    is a view of its leading channels. Safe because BatchNorm's backward does not read its output.
    """

    @staticmethod
    def forward(ctx, out: Tensor, shortcut: Tensor) -> Tensor:
        ctx.mark_dirty(out)
        ctx.channels = shortcut.shape[1]
        out[:, : ctx.channels].add_(shortcut)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        return grad, grad[:, : ctx.channels]


def add_zero_padded(out: Tensor, shortcut: Tensor) -> Tensor:
    """``out + shortcut`` with the shortcut's missing trailing channels taken as zeros.

    Eagerly this allocates no padding (see :class:`_AddIntoLeadingChannels`); under
    ``torch.compile`` the plain pad-and-add form is used, which inductor fuses into one kernel, and
    under ``torch.jit.trace`` (``idml export --format torchscript``), which cannot record a Python
    autograd function.
    """
    extra = out.shape[1] - shortcut.shape[1]
    if extra == 0:
        return out + shortcut
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return out + F.pad(shortcut, (0, 0, 0, 0, 0, extra))
    return _AddIntoLeadingChannels.apply(out, shortcut)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class PyramidBlock(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 with x4 output) pyramidal residual unit."""

    def __init__(self, inplanes: int, planes: int, stride: int, bottleneck: bool) -> None:
        super().__init__()
        self.out_channels = planes * (4 if bottleneck else 1)
        if bottleneck:
            layers = [
                nn.BatchNorm2d(inplanes), nn.Conv2d(inplanes, planes, 1, bias=False),
                nn.BatchNorm2d(planes), nn.ReLU(inplace=True), _conv3x3(planes, planes, stride),
                nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
                nn.Conv2d(planes, self.out_channels, 1, bias=False),
            ]
        else:
            layers = [
                nn.BatchNorm2d(inplanes), _conv3x3(inplanes, planes, stride),
                nn.BatchNorm2d(planes), nn.ReLU(inplace=True), _conv3x3(planes, planes),
            ]
        self.residual = nn.Sequential(*layers, nn.BatchNorm2d(self.out_channels))
        self.shortcut = nn.AvgPool2d(2, stride=2, ceil_mode=True) if stride != 1 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return add_zero_padded(self.residual(x), self.shortcut(x))


class PyramidNet(nn.Module):
    """PyramidNet feature extractor for CIFAR (3 stages) or ImageNet (4 stages); returns B x D."""

    def __init__(self, stages: list[int], alpha: float, bottleneck: bool, imagenet: bool) -> None:
        super().__init__()
        total_blocks = sum(stages)
        self.addrate = alpha / total_blocks
        start = 64 if imagenet else 16
        if imagenet:
            self.stem = nn.Sequential(
                nn.Conv2d(3, start, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(start),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(_conv3x3(3, start), nn.BatchNorm2d(start))
        self.width = float(start)
        self.channels = start
        blocks = []
        for index, n in enumerate(stages):
            for b in range(n):
                stride = 2 if index > 0 and b == 0 else 1
                self.width += self.addrate
                block = PyramidBlock(self.channels, round(self.width), stride, bottleneck)
                self.channels = block.out_channels
                blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Sequential(nn.BatchNorm2d(self.channels), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = self.channels
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.final(self.blocks(self.stem(x)))
        return torch.flatten(self.pool(x), 1)


def cifar_pyramidnet(depth: int, alpha: float, bottleneck: bool = True) -> PyramidNet:
    n = blocks_per_stage(depth, bottleneck, "pyramidnet")
    return PyramidNet([n, n, n], alpha, bottleneck, imagenet=False)


def imagenet_pyramidnet(depth: int, alpha: float) -> PyramidNet:
    problem = depth_problem("pyramidnet", "imagenet", depth, True)
    if problem:
        raise ConfigError(problem)
    bottleneck, stages = IMAGENET_STAGES[depth]
    return PyramidNet(stages, alpha, bottleneck, imagenet=True)

