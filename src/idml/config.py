"""The one typed settings object of a training run, built once from YAML and the command line.

Every seed flag keeps its official spelling, meaning and default (CutMix-PyTorch's ``train.py``);
new flags are documented in the README. ``TrainConfig`` is what the trainer, the checkpoint and
``config.yaml`` in the run folder all hold.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from idml.datasets_info import DATASETS
from idml.errors import ConfigError
from idml.logs import MISSING_TENSORBOARD, tensorboard_available
from idml.mixing import MixConfig
from idml.models import ModelSpec, net_type_problem

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
_TYPE_NAMES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (float,), "bool": (bool,),
    "int | None": (int, type(None)), "bool | None": (bool, type(None)), "str | None": (str, type(None)),
}
EXPNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


@dataclass
class TrainConfig:
    # --- the seed's flags (official defaults) ---
    net_type: str = "pyramidnet"
    dataset: str = "imagenet"
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    print_freq: int = 1
    depth: int = 32
    bottleneck: bool = True
    verbose: bool = True
    alpha: float = 300.0
    expname: str = "TEST"
    beta: float = 0.0
    cutmix_prob: float = 0.0
    workers: int = 4
    epochs: int = 90
    # --- idml's flags ---
    data_dir: str = "data"
    output_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    ism: bool = True
    ism_lambda: float = 5.0
    uncertainty_dim: int | None = None
    mixup_alpha: float = 0.0
    mixup_prob: float = 0.0
    amp: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    # --- reliability and scale-out (see the README's "Resuming" and "Distributed" sections) ---
    resume: str | None = None
    save_every_steps: int = 0
    sync_bn: bool = False
    skip_bad_images: bool = False
    tensorboard: bool = False
    # --- experiments ---
    label_noise: float = 0.0

    def __post_init__(self) -> None:
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        """YAML files can hold anything: refuse values of the wrong type before using them."""
        for f in fields(self):
            value = getattr(self, f.name)
            kinds = _TYPE_NAMES[str(f.type)]
            if isinstance(value, int) and not isinstance(value, bool) and float in kinds:
                setattr(self, f.name, float(value))
            elif not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                expected = " or ".join(k.__name__ for k in kinds)
                raise ConfigError(f"setting {f.name} must be {expected}, got {value!r}")
            if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name)):
                raise ConfigError(f"setting {f.name} must be a finite number, got {value!r}")

    def validate(self) -> None:
        """Refuse impossible values with a message that names the flag and the fix."""
        checks = [
            (self.dataset.lower() in DATASETS,
             f"unknown --dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}"),
            net_type_problem(self.net_type),
            (self.batch_size >= 1, f"--batch_size must be at least 1 (got {self.batch_size})"),
            (self.lr > 0, f"--lr must be positive (got {self.lr})"),
            (self.momentum >= 0, f"--momentum must be >= 0 (got {self.momentum})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (self.print_freq >= 1, f"--print-freq must be at least 1 (got {self.print_freq})"),
            (self.depth >= 1, f"--depth must be positive (got {self.depth})"),
            (self.alpha >= 0, f"--alpha must be >= 0 (got {self.alpha})"),
            (self.beta >= 0, f"--beta must be >= 0 (got {self.beta})"),
            (0 <= self.cutmix_prob <= 1, f"--cutmix_prob must lie in [0, 1] (got {self.cutmix_prob})"),
            (self.mixup_alpha >= 0, f"--mixup_alpha must be >= 0 (got {self.mixup_alpha})"),
            (0 <= self.mixup_prob <= 1, f"--mixup_prob must lie in [0, 1] (got {self.mixup_prob})"),
            (self.mix.cutmix_share + self.mix.mixup_share <= 1 + 1e-9,
             "--cutmix_prob + --mixup_prob must not exceed 1 (one draw per batch picks at most one)"),
            (self.workers >= 0, f"--workers must be >= 0 (got {self.workers})"),
            (self.epochs >= 0, f"--epochs must be >= 0 (got {self.epochs})"),
            (0 <= self.label_noise < 1, f"--label_noise must lie in [0, 1) (got {self.label_noise})"),
            (self.label_noise == 0 or self.dataset.lower() != "imagenet",
             "--label_noise works on the in-memory datasets (cifar10, cifar100, digits), not imagenet"),
            (self.ism_lambda > 0, f"--ism_lambda must be positive (got {self.ism_lambda})"),
            (self.uncertainty_dim is None or self.uncertainty_dim >= 1,
             f"--uncertainty_dim must be at least 1 (got {self.uncertainty_dim})"),
            (self.amp in AMP_CHOICES, f"--amp must be one of {', '.join(AMP_CHOICES)}"),
            (self.device in DEVICE_CHOICES, f"--device must be one of {', '.join(DEVICE_CHOICES)}"),
            (self.save_every_steps >= 0, f"--save_every_steps must be >= 0 (got {self.save_every_steps})"),
            (self.resume is None or self.resume.strip() != "",
             "--resume needs 'auto' or the path of a checkpoint"),
            (bool(EXPNAME_PATTERN.match(self.expname)) and ".." not in self.expname,
             f"--expname {self.expname!r} must be a plain folder name (letters, digits, . _ + = -), "
             "so that the run stays inside --output_dir"),
            (not self.tensorboard or tensorboard_available(), MISSING_TENSORBOARD),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec(
            self.net_type.lower(), self.dataset.lower(), self.depth, self.alpha, self.bottleneck,
            None, self.ism, self.uncertainty_dim, self.ism_lambda,
        )

    @property
    def mix(self) -> MixConfig:
        return MixConfig(self.beta, self.cutmix_prob, self.mixup_alpha, self.mixup_prob)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.expname

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _field_names() -> set[str]:
    return {f.name for f in fields(TrainConfig)}


def load_yaml_config(path: str) -> dict[str, Any]:
    """Settings from a YAML file of ``TrainConfig`` field names (unknown keys are an error)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read --config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of setting: value")
    unknown = sorted(set(data) - _field_names())
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting(s) {', '.join(unknown)}")
    return data


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line on one line, with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """All ``idml train`` flags. Defaults are None here so that YAML values can fill the gaps."""
    seed = p.add_argument_group("official flags (same meaning and default as the seed README's train.py)")
    seed.add_argument("--net_type", help="backbone: resnet or pyramidnet (default: pyramidnet)")
    seed.add_argument("--dataset", help="cifar10, cifar100, imagenet or digits (default: imagenet)")
    seed.add_argument("-b", "--batch_size", type=int, help="mini-batch size per process (default: 128)")
    seed.add_argument("--lr", "--learning-rate", type=float, dest="lr", help="initial learning rate (default: 0.1)")
    seed.add_argument("--momentum", type=float, help="SGD momentum, Nesterov (default: 0.9)")
    seed.add_argument("--weight-decay", "--wd", type=float, dest="weight_decay", help="weight decay (default: 1e-4)")
    seed.add_argument("--print-freq", "-p", type=int, dest="print_freq", help="print every N batches (default: 1)")
    seed.add_argument("--depth", type=int, help="network depth (default: 32)")
    seed.add_argument("--no-bottleneck", dest="bottleneck", action="store_const", const=False,
                      help="use basic blocks instead of bottlenecks")
    seed.add_argument("--no-verbose", dest="verbose", action="store_const", const=False,
                      help="print per-epoch summaries only")
    seed.add_argument("--alpha", type=float, help="PyramidNet widening factor (default: 300)")
    seed.add_argument("--expname", help="run name: files go to <output_dir>/<expname>/ (default: TEST)")
    seed.add_argument("--beta", type=float, help="CutMix Beta(beta, beta) parameter; 0 = off (default: 0)")
    seed.add_argument("--cutmix_prob", type=float, help="probability of CutMix per batch (default: 0)")
    seed.add_argument("-j", "--workers", type=int, help="data-loading worker processes, ImageNet (default: 4)")
    seed.add_argument("--epochs", type=int, help="number of epochs (default: 90)")
    new = p.add_argument_group("idml flags")
    new.add_argument("--config", help="YAML file of settings; flags given on the command line override it")
    new.add_argument("--data_dir", help="folder holding the datasets in the seed's layout (default: data)")
    new.add_argument("--output_dir", help="runs are written to <output_dir>/<expname>/ (default: runs)")
    new.add_argument("--seed", type=int, help="seed for initialisation, data order and augmentation (default: 0)")
    new.add_argument("--device", choices=DEVICE_CHOICES, help="auto = CUDA when available, else CPU")
    new.add_argument("--no-ism", dest="ism", action="store_const", const=False,
                     help="train the plain network (the paper's Baseline rows) without the ISM head")
    new.add_argument("--ism_lambda", type=float, help="lambda of the introspective metric (default: 5.0)")
    new.add_argument("--uncertainty_dim", type=int,
                     help="width K of the uncertainty embedding (default: 128 for 32x32 data, 512 for ImageNet)")
    new.add_argument("--mixup_alpha", type=float, help="Mixup Beta(alpha, alpha) parameter; 0 = off (default: 0)")
    new.add_argument("--mixup_prob", type=float, help="probability of Mixup per batch when CutMix is not drawn")
    new.add_argument("--amp", choices=AMP_CHOICES,
                     help="mixed precision: auto = bf16 where the hardware runs it fast, fp16 on older GPUs")
    new.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                     help="channels-last memory format (default: on for CUDA, off on CPU)")
    new.add_argument("--compile", action="store_const", const=True, help="torch.compile the model")
    new.add_argument("--resume", metavar="auto|PATH",
                     help="continue a run: auto = <output_dir>/<expname>/checkpoint.pth.tar if present, "
                     "else start fresh; PATH = that checkpoint (must exist)")
    new.add_argument("--save_every_steps", type=int, metavar="N",
                     help="also checkpoint every N training steps inside an epoch (default: 0 = epoch ends only)")
    new.add_argument("--sync_bn", action="store_const", const=True,
                     help="under torchrun: convert BatchNorm to SyncBatchNorm (statistics over all processes)")
    new.add_argument("--skip_bad_images", action="store_const", const=True,
                     help="ImageNet: skip (and count) unreadable images instead of stopping at the first one")
    new.add_argument("--label_noise", type=float, metavar="RATE",
                     help="move this share of the training labels to another class, uniformly at random "
                     "(in-memory datasets; fixed by --seed; default: 0)")
    new.add_argument("--tensorboard", action="store_const", const=True,
                     help="also write TensorBoard event files to <run>/tensorboard (needs idml[tensorboard])")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < YAML file (--config) < flags given on the command line."""
    values: dict[str, Any] = load_yaml_config(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in _field_names() and v is not None})
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None


def parse_train_args(argv: list[str], prog: str = "idml train") -> TrainConfig:
    parser = OneLineParser(prog=prog, description="Train an image classifier with IDML.")
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(argv))
