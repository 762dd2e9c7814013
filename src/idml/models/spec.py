"""What names a network: :class:`ModelSpec` and the checks of ``--net_type``, without importing torch.

The settings (:mod:`idml.config`) and the checkpoints (:mod:`idml.checkpoint`) describe networks
with these; :mod:`idml.models.registry` builds them. Keeping this module free of torch lets a
command refuse a bad flag, or print its help, before the heavy imports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from idml.errors import describe

#: The networks idml builds itself (the official code's two).
BUILTIN_NET_TYPES = ("pyramidnet", "resnet")
#: The depths of the ImageNet-style ResNets and PyramidNets (torchvision's stage layouts; 200 adds
#: the official code's [3, 24, 36, 3]): 18 and 34 have basic blocks, the deeper ones bottlenecks.
IMAGENET_DEPTHS = (18, 34, 50, 101, 152, 200)


@dataclass(frozen=True)
class ExternalSource:
    """A library of networks usable as ``--net_type <prefix>:<name>``: its package, and the
    extra of :mod:`idml.extras` that installs it (None: part of the base install)."""

    package: str
    extra: str | None = None


#: ``<prefix>:<name>`` -> the library the network comes from (:mod:`idml.models.external` builds it).
EXTERNAL_SOURCES: dict[str, ExternalSource] = {
    "torchvision": ExternalSource("torchvision"),
    "timm": ExternalSource("timm", "timm"),
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; stored in every checkpoint as its ``model`` field."""

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

    @property
    def external(self) -> bool:
        """A network from another library (``torchvision:<name>``, ``timm:<name>``)."""
        return ":" in self.net_type


def canonical_net_type(net_type: str) -> str:
    """How a network is named in settings and checkpoints: idml's own in lower case, another
    library's as ``<prefix in lower case>:<name as given>`` (model names are case-sensitive)."""
    prefix, colon, name = net_type.partition(":")
    return f"{prefix.lower()}:{name}" if colon else net_type.lower()


def form_problem(net_type: str) -> str | None:
    """Why ``<prefix>:<name>`` is not a well-formed external backbone name, or None."""
    prefix, _, name = net_type.partition(":")
    if prefix.lower() not in EXTERNAL_SOURCES:
        forms = " or ".join(f"{p}:<name>" for p in EXTERNAL_SOURCES)
        return f"unknown backbone source {describe(prefix)} in --net_type {describe(net_type)}: use {forms}"
    if not name:
        return f"--net_type {describe(net_type)} names no model after the colon"
    return None


def net_type_problem(net_type: str) -> str | None:
    """Why ``--net_type`` names no network: neither a built-in name nor ``<library>:<name>``.

    Only the form is checked here; whether the library is installed and knows the name is the
    run's preflight check (:func:`idml.models.external.name_problem`).
    """
    if ":" in net_type:
        return form_problem(net_type)
    if net_type.lower() in BUILTIN_NET_TYPES:
        return None
    choices = ", ".join([*BUILTIN_NET_TYPES, *(f"{prefix}:<name>" for prefix in EXTERNAL_SOURCES)])
    return f"unknown --net_type {describe(net_type)}: choose one of {choices}"


def cifar_depth_step(bottleneck: bool) -> int:
    """A CIFAR-style network of 3 stages has depth ``step * n + 2``: 3 layers per bottleneck
    block, 2 per basic block, n blocks per stage."""
    return 9 if bottleneck else 6


def cifar_depth_fits(depth: int, bottleneck: bool) -> bool:
    step = cifar_depth_step(bottleneck)
    return depth >= step + 2 and (depth - 2) % step == 0


def _blocks(bottleneck: bool) -> str:
    return "bottleneck blocks" if bottleneck else "basic blocks (--no-bottleneck)"


def _depths(bottleneck: bool) -> str:
    step = cifar_depth_step(bottleneck)
    return f"{step}n+2 ({', '.join(str(step * n + 2) for n in range(1, 6))}, ...)"


def depth_problem(net_type: str, family: str, depth: int, bottleneck: bool) -> str | None:
    """Why ``--depth`` gives no ``net_type`` network for ``family`` inputs ("cifar" or "imagenet"),
    naming the depths that work for either block type and the switch between them; None if it fits.
    Networks of other libraries take their depth from their name (None)."""
    if net_type not in BUILTIN_NET_TYPES:
        return None
    if family == "imagenet":
        if depth in IMAGENET_DEPTHS:
            return None
        return (f"--depth {depth} is impossible for an ImageNet-style {net_type}: use one of "
                f"{', '.join(map(str, IMAGENET_DEPTHS))}")
    if cifar_depth_fits(depth, bottleneck):
        return None
    step = cifar_depth_step(bottleneck)
    n = max(1, (depth - 2) // step)
    near = sorted({step * k + 2 for k in (n, n + 1)} - {depth})
    fix = f"give --depth {' or '.join(map(str, near))}"
    if cifar_depth_fits(depth, not bottleneck):
        switch = "add --no-bottleneck" if bottleneck else "drop --no-bottleneck"
        fix = f"{switch} ({_blocks(not bottleneck).split(' (')[0]} take depth {depth}), or {fix}"
    return (f"--depth {depth} is impossible for {net_type} with {_blocks(bottleneck)}, whose depth is "
            f"{_depths(bottleneck)}; {_blocks(not bottleneck)} take {_depths(not bottleneck)}; {fix}")
