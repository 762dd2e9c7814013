"""The registry of networks and :func:`build_model`, which puts the IDML head on a backbone."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from idml.data.catalog import DEFAULT_UNCERTAINTY_DIM, dataset_info
from idml.errors import ConfigError
from idml.ism import IntrospectiveClassifier, ISMHead
from idml.models.external import external_backbone
from idml.models.pyramidnet import cifar_pyramidnet, imagenet_pyramidnet
from idml.models.resnet import CifarResNet, imagenet_resnet
from idml.models.spec import ModelSpec, canonical_net_type, net_type_problem

BackboneFactory = Callable[[ModelSpec], nn.Module]

#: (net_type, input family) -> function building a feature extractor with ``num_features``;
#: the names are :data:`idml.models.spec.BUILTIN_NET_TYPES`.
BACKBONES: dict[tuple[str, str], BackboneFactory] = {
    ("resnet", "cifar"): lambda s: CifarResNet(s.depth, s.bottleneck),
    ("resnet", "imagenet"): lambda s: imagenet_resnet(s.depth),
    ("pyramidnet", "cifar"): lambda s: cifar_pyramidnet(s.depth, s.alpha, s.bottleneck),
    ("pyramidnet", "imagenet"): lambda s: imagenet_pyramidnet(s.depth, s.alpha),
}


def build_backbone(spec: ModelSpec) -> nn.Module:
    info = dataset_info(spec.dataset, spec.input_size)
    if spec.external:
        return external_backbone(spec.net_type, info.input_size)
    factory = BACKBONES.get((canonical_net_type(spec.net_type), info.family))
    if factory is None:
        raise ConfigError(net_type_problem(spec.net_type) or f"no {spec.net_type} for {info.family} inputs")
    return factory(spec)


def build_from_spec(spec: ModelSpec) -> IntrospectiveClassifier:
    info = dataset_info(spec.dataset, spec.input_size)
    backbone = build_backbone(spec)
    num_classes = spec.num_classes or info.num_classes
    if num_classes < 1:
        raise ConfigError(f"the number of classes of {spec.dataset} comes from its data; pass num_classes")
    k = (spec.uncertainty_dim or DEFAULT_UNCERTAINTY_DIM[info.family]) if spec.ism else None
    head = ISMHead(backbone.num_features, num_classes, k, lam=spec.ism_lambda)
    return IntrospectiveClassifier(backbone, head)


def build_model(
    net_type: str,
    dataset: str,
    depth: int,
    alpha: float = 300.0,
    bottleneck: bool = True,
    num_classes: int | None = None,
    ism: bool = True,
    uncertainty_dim: int | None = None,
    ism_lambda: float = 5.0,
) -> IntrospectiveClassifier:
    """Build ``net_type`` of ``depth`` for ``dataset`` with the IDML head (``ism=False``: plain fc).

    The model returns a :class:`idml.ism.HeadOutput` (plain logits, training logits,
    uncertainty embedding). ``num_classes`` defaults to the dataset's, ``uncertainty_dim`` to 128
    for 32x32 datasets and 512 for ImageNet, as in the official code.
    """
    return build_from_spec(
        ModelSpec(net_type, dataset, depth, alpha, bottleneck, num_classes, ism, uncertainty_dim, ism_lambda)
    )
