"""ResNets: the CIFAR variant (3 stages, 16/32/64 planes) and the ImageNet one from torchvision.

Both return pooled features (B x D); the classifier lives in the IDML head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from idml.errors import ConfigError
from idml.models.spec import cifar_depth_step, depth_problem

IMAGENET_LAYERS = {  # one layout per depth of idml.models.spec.IMAGENET_DEPTHS
    18: (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    34: (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    50: (tv_resnet.Bottleneck, [3, 4, 6, 3]),
    101: (tv_resnet.Bottleneck, [3, 4, 23, 3]),
    152: (tv_resnet.Bottleneck, [3, 8, 36, 3]),
    200: (tv_resnet.Bottleneck, [3, 24, 36, 3]),
}


def blocks_per_stage(depth: int, bottleneck: bool, net_type: str = "resnet") -> int:
    """Blocks per stage for a CIFAR-style depth (6n+2 basic, 9n+2 bottleneck), or a clear error."""
    problem = depth_problem(net_type, "cifar", depth, bottleneck)
    if problem:
        raise ConfigError(problem)
    return (depth - 2) // cifar_depth_step(bottleneck)


def _init_weights(module: nn.Module) -> None:
    """Conv: normal(0, sqrt(2 / (k*k*out))) (= kaiming-normal fan_out); BN: weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al. 2016, section 4.2), built from torchvision's blocks."""

    def __init__(self, depth: int, bottleneck: bool = True) -> None:
        super().__init__()
        n = blocks_per_stage(depth, bottleneck)
        block = tv_resnet.Bottleneck if bottleneck else tv_resnet.BasicBlock
        self.inplanes = 16
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        self.layer1 = self._make_stage(block, 16, n, stride=1)
        self.layer2 = self._make_stage(block, 32, n, stride=2)
        self.layer3 = self._make_stage(block, 64, n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 64 * block.expansion
        _init_weights(self)

    def _make_stage(self, block: type[nn.Module], planes: int, n: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(n - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return torch.flatten(self.pool(x), 1)


def imagenet_resnet(depth: int) -> nn.Module:
    """torchvision's ResNet of the given depth with its classifier removed (features: B x D)."""
    problem = depth_problem("resnet", "imagenet", depth, True)
    if problem:
        raise ConfigError(problem)
    block, layers = IMAGENET_LAYERS[depth]
    net = tv_resnet.ResNet(block, layers)
    net.num_features = net.fc.in_features
    net.fc = nn.Identity()
    _init_weights(net)
    return net
