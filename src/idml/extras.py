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
    """One extra of pyproject.toml: ``pip install -e '.[name]'`` installs ``package`` for ``adds``."""

    name: str
    #: the module whose presence means the extra is installed
    module: str
    #: the PyPI package to install without the extra
    package: str
    #: what it adds, as the docs and messages say it
    adds: str
    #: part of the ``dev`` extra (the CPU tests check the fallback of a part that is not)
    in_dev: bool = True

    @property
    def install(self) -> str:
        return f"pip install -e '.[{self.name}]' in the idml checkout (or pip install {self.package})"


EXTRAS: dict[str, Extra] = {extra.name: extra for extra in (
    Extra("tensorboard", "tensorboard", "tensorboard", "TensorBoard event files (idml train --tensorboard)"),
    Extra("timm", "timm", "timm", "timm's backbones (--net_type timm:<name>)"),
    Extra("hf", "datasets", "datasets", "Hugging Face datasets saved on disk (--dataset hf:<path>)"),
    # a speed-up, required by nothing: without it --decode gpu uses torchvision's decoders
    Extra("gpu-decode", "torchcodec", "torchcodec", "TorchCodec's JPEG decoders for --decode gpu (torchvision's "
          "otherwise)", in_dev=False),
)}
#: the extra that installs every optional part, and the one that adds the test and lint tools to
#: the extras the tests exercise (those with ``in_dev``)
ALL, DEV = "all", "dev"


def installed(name: str) -> bool:
    """Whether the optional part ``name`` (a key of :data:`EXTRAS`) can be imported here."""
    return importlib.util.find_spec(EXTRAS[name].module) is not None


def missing(name: str, what: str) -> str:
    """The line that says ``what`` needs the optional part ``name``, and how to install it."""
    extra = EXTRAS[name]
    return f"{what} needs idml[{extra.name}] ({extra.package} is not installed): {extra.install}"


def require(name: str, what: str) -> None:
    """Refuse ``what`` with one line when the optional part ``name`` is not installed."""
    if not installed(name):
        raise ConfigError(missing(name, what))
