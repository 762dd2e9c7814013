"""The optional parts of idml: what each extra of pyproject.toml adds, and the one line that says a
missing one is needed.

The base install (``pip install -e .``) runs every command of the README and docs/ except the ones
a page introduces with the extra they need. A setting that needs a missing part is refused before
any work, naming the extra: :func:`require` (called by each command's checks of the machine).
Nothing here imports the optional packages; :func:`installed` only looks them up.
``tests/test_extras.py`` keeps this table equal to pyproject.toml's extras.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from idml.errors import ConfigError


@dataclass(frozen=True)
class Extra:
    """One extra of pyproject.toml: ``pip install -e '.[name]'`` installs ``packages`` for ``adds``."""

    name: str
    #: the packages it installs: their import names, which are also their PyPI names
    packages: tuple[str, ...]
    #: what it adds, as the docs and messages say it
    adds: str
    #: part of the ``dev`` extra (the CPU tests check the fallback of a part that is not)
    in_dev: bool = True


EXTRAS: dict[str, Extra] = {extra.name: extra for extra in (
    Extra("tensorboard", ("tensorboard",), "TensorBoard event files (idml train --tensorboard)"),
    Extra("timm", ("timm",), "timm's backbones (--net_type timm:<name>)"),
    Extra("hf", ("datasets",), "Hugging Face datasets saved on disk (--dataset hf:<path>)"),
    # a speed-up, required by nothing: without it --decode gpu uses torchvision's decoders
    Extra("gpu-decode", ("torchcodec",), "TorchCodec's JPEG decoders for --decode gpu (torchvision's otherwise)",
          in_dev=False),
    # torch.onnx's exporter needs onnxscript; every ONNX export is run back in onnxruntime
    Extra("onnx", ("onnx", "onnxscript", "onnxruntime"), "ONNX export and inference (idml export --format onnx, "
          "idml predict --model FILE.onnx)"),
    Extra("safetensors", ("safetensors",), "safetensors export (idml export --format safetensors)"),
)}
#: the extra that installs every optional part, and the one that adds the test and lint tools to
#: the extras the tests exercise (those with ``in_dev``)
ALL, DEV = "all", "dev"


def absent(packages: tuple[str, ...]) -> list[str]:
    """Those of ``packages`` (import names) that cannot be imported here; none is imported."""
    return [name for name in packages if importlib.util.find_spec(name) is None]


def installed(name: str) -> bool:
    """Whether every package of the optional part ``name`` (a key of :data:`EXTRAS`) is here."""
    return not absent(EXTRAS[name].packages)


def missing(name: str, what: str, packages: tuple[str, ...] | None = None) -> str:
    """The line that says ``what`` needs the optional part ``name`` (``packages``: the ones of its
    packages ``what`` uses, all by default), and how to install it."""
    lacking = absent(packages or EXTRAS[name].packages) or list(packages or EXTRAS[name].packages)
    listed = " ".join(lacking)
    verb = "is" if len(lacking) == 1 else "are"
    return (f"{what} needs idml[{name}] ({', '.join(lacking)} {verb} not installed): pip install -e '.[{name}]' "
            f"in the idml checkout (or pip install {listed})")


def require(name: str, what: str, packages: tuple[str, ...] | None = None) -> None:
    """Refuse ``what`` with one line when a package of the optional part ``name`` that it uses
    (``packages``, all by default) is not installed."""
    if absent(packages or EXTRAS[name].packages):
        raise ConfigError(missing(name, what, packages))
