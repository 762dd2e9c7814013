"""Backbones from other libraries: ``--net_type torchvision:<name>`` and ``--net_type timm:<name>``.

Each source builds the named network without its classifier, so that it returns pooled features
(B x D), and the IDML head goes on top. D is measured by running the network once on a blank
image of the dataset's input size: that also proves the network accepts that size (32x32 for
CIFAR and digits) before any training starts. Weights start from random initialisation.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from idml.errors import ConfigError, describe, one_line
from idml.extras import missing
from idml.models.spec import EXTERNAL_SOURCES, form_problem


def _strip_torchvision_classifier(net: nn.Module, name: str) -> nn.Module:
    """Replace the network's last ``nn.Linear`` (its classifier) by an identity.

    Auxiliary training classifiers (GoogLeNet, Inception v3) are removed, so that the network
    returns one tensor in training mode too.
    """
    if hasattr(net, "aux_logits"):
        net.aux_logits = False
        for child in [n for n, _ in net.named_children() if n.lower().startswith("aux")]:
            setattr(net, child, None)
    linears = [qualified for qualified, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"torchvision:{name} has no nn.Linear classifier to replace; "
                          "wrap it yourself with idml.IntrospectiveClassifier (see docs/training.md, Python API)")
    parent_name, _, attr = linears[-1].rpartition(".")
    setattr(net.get_submodule(parent_name), attr, nn.Identity())
    return net


def _torchvision_features(name: str) -> nn.Module:
    import torchvision

    return _strip_torchvision_classifier(torchvision.models.get_model(name, weights=None), name)


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _timm_features(name: str) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0)


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


@dataclass(frozen=True)
class Source:
    """How to build a library's network without its classifier, and which names it knows."""

    build: Callable[[str], nn.Module]
    names: Callable[[], list[str]]


#: ``<prefix>:<name>`` -> how to build it; the prefixes, packages and install hints are
#: :data:`idml.models.spec.EXTERNAL_SOURCES`.
SOURCES: dict[str, Source] = {
    "torchvision": Source(_torchvision_features, _torchvision_names),
    "timm": Source(_timm_features, _timm_names),
}


def name_problem(net_type: str) -> str | None:
    """Why ``<prefix>:<name>`` cannot be built here (unknown source, missing package, unknown
    name), or None when it can."""
    problem = form_problem(net_type)
    if problem:
        return problem
    prefix, _, name = net_type.partition(":")
    facts = EXTERNAL_SOURCES[prefix.lower()]
    if importlib.util.find_spec(facts.package) is None:
        if facts.extra is not None:
            return missing(facts.extra, f"--net_type {net_type}")
        return f"--net_type {net_type} needs the {facts.package} package: pip install {facts.package}"
    if name not in SOURCES[prefix.lower()].names():
        return (f"{facts.package} has no model {describe(name)} (--net_type {describe(net_type)}); "
                f"list them with python -c 'import {facts.package}; print({facts.package}.list_models())'")
    return None


class FeatureBackbone(nn.Module):
    """A classifier-less network with the feature width ``num_features`` the IDML head needs."""

    def __init__(self, net: nn.Module, num_features: int) -> None:
        super().__init__()
        self.net = net
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _feature_width(net: nn.Module, net_type: str, input_size: int) -> int:
    """Run the network once (eval mode, no gradients) on a blank image and read D."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, 3, input_size, input_size))
    except (RuntimeError, ValueError, AssertionError) as exc:  # how networks reject an input size
        raise ConfigError(f"--net_type {net_type} cannot run on {input_size}x{input_size} images: "
                          f"{one_line(exc)}") from exc
    finally:
        net.train(was_training)
    if not isinstance(out, Tensor) or out.ndim != 2:
        raise ConfigError(f"--net_type {net_type} does not return pooled features (B x D) once its classifier "
                          "is removed; wrap it yourself with idml.IntrospectiveClassifier")
    return out.shape[1]


def external_backbone(net_type: str, input_size: int) -> FeatureBackbone:
    """Build ``<prefix>:<name>`` as a feature extractor for ``input_size`` x ``input_size`` images."""
    problem = name_problem(net_type)
    if problem:
        raise ConfigError(problem)
    prefix, _, name = net_type.partition(":")
    net = SOURCES[prefix.lower()].build(name)
    return FeatureBackbone(net, _feature_width(net, net_type, input_size))
