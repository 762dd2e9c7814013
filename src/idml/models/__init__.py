"""Model registry and :func:`build_model`, which puts the IDML head on a backbone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import nn

from idml.data.catalog import DEFAULT_UNCERTAINTY_DIM, dataset_info
from idml.errors import ConfigError
from idml.ism import IntrospectiveClassifier, ISMHead
from idml.models.external import SOURCES, external_backbone, form_problem
from idml.models.pyramidnet import cifar_pyramidnet, imagenet_pyramidnet
from idml.models.resnet import CifarResNet, imagenet_resnet


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    net_type: str
    dataset: str
    depth: int
    alpha: float = 300.0
    bottleneck: bool = True
    num_classes: int | None = None
    ism: bool = True
    uncertainty_dim: int | None = None
    ism_lambda: float = 5.0
    #: square input size of a user dataset (folder, hf:<path>); None for the catalog datasets
    input_size: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


BackboneFactory = Callable[[ModelSpec], nn.Module]

#: (net_type, input family) -> function building a feature extractor with ``num_features``.
BACKBONES: dict[tuple[str, str], BackboneFactory] = {
    ("resnet", "cifar"): lambda s: CifarResNet(s.depth, s.bottleneck),
    ("resnet", "imagenet"): lambda s: imagenet_resnet(s.depth),
    ("pyramidnet", "cifar"): lambda s: cifar_pyramidnet(s.depth, s.alpha, s.bottleneck),
    ("pyramidnet", "imagenet"): lambda s: imagenet_pyramidnet(s.depth, s.alpha),
}


def net_types() -> list[str]:
    return sorted({name for name, _ in BACKBONES})


def net_type_problem(net_type: str) -> tuple[bool, str]:
    """(ok, message) for ``--net_type``: a built-in name, or ``torchvision:<name>`` / ``timm:<name>``.

    Only the form is checked here; whether the library is installed and knows the name is the
    run's preflight check (:func:`idml.config.preflight`).
    """
    if ":" in net_type:
        problem = form_problem(net_type)
        return problem is None, problem or ""
    choices = ", ".join([*net_types(), *(f"{prefix}:<name>" for prefix in SOURCES)])
    return net_type.lower() in net_types(), f"unknown --net_type {net_type!r}: choose one of {choices}"


def build_backbone(spec: ModelSpec) -> nn.Module:
    info = dataset_info(spec.dataset, spec.input_size)
    if ":" in spec.net_type:
        return external_backbone(spec.net_type, info.input_size)
    family = info.family
    factory = BACKBONES.get((spec.net_type.lower(), family))
    if factory is None:
        raise ConfigError(f"unknown --net_type {spec.net_type!r}: choose one of {', '.join(net_types())}")
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
