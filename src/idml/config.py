"""The one typed settings object of a training run, built once from YAML and the command line.

Each setting is declared once, as a field of :class:`TrainConfig` with its default, flags and
help (:func:`setting`); the ``idml train`` parser and the flag reference of docs/configuration.md
are derived from those declarations. Every official flag keeps the official code's spelling,
meaning and default. Building a ``TrainConfig`` checks types and values only; what depends on the
environment (an installed package, a model name in timm's list) is checked by :func:`preflight`.
"""

from __future__ import annotations

import argparse
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from idml.data.catalog import DATASETS, DEFAULT_UNCERTAINTY_DIM
from idml.errors import ConfigError, one_line
from idml.mixing import MixConfig
from idml.models import ModelSpec, net_type_problem

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: Bounds that keep a value from passing validation and failing later: seeds feed NumPy's and torch's
#: generators (``seed * 1_000_003 + epoch`` must fit in 64 bits), the deepest network in the
#: literature has 1202 layers (a depth past this takes minutes just to build), and each worker is a
#: process. Per-process batches beyond this are past what any accelerator holds.
MAX_SEED = 2**32 - 1
MAX_DEPTH = 2000
MAX_WORKERS = 256
MAX_BATCH = 2**16
MAX_UNCERTAINTY_DIM = 2**16
MAX_DIST_TIMEOUT = 7 * 24 * 3600
EXPNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
OFFICIAL = "official flags (same meaning and default as the official code's train.py)"
IDML = "flags idml adds"


def setting(default: Any, *flags: str, help: str, group: str = IDML, action: str | None = None,
            metavar: str | None = None, choices: tuple[str, ...] | None = None, shown_default: str | None = None):
    """Declare one setting: its default, its command-line flags and its help, in one place.

    The parser (:func:`add_train_arguments`) and the flag reference in docs/configuration.md
    (:func:`flag_table`) are both derived from these declarations. ``action`` is ``"on"`` for a
    flag that switches a default-off setting on, ``"off"`` for one that switches it off and
    ``"both"`` for a ``--x/--no-x`` pair; ``shown_default`` replaces the default in help and docs.
    """
    meta = {"flags": flags, "help": help, "group": group, "action": action, "metavar": metavar,
            "choices": choices, "shown_default": shown_default}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a training run. What the trainer, the checkpoint and ``config.yaml`` hold."""

    # --- the official flags, with the official defaults ---
    net_type: str = setting("pyramidnet", "--net_type", group=OFFICIAL,
                            help="backbone: resnet or pyramidnet (idml adds torchvision:<name> and timm:<name>)")
    dataset: str = setting("imagenet", "--dataset", group=OFFICIAL, help="cifar10, cifar100, imagenet or digits")
    batch_size: int = setting(128, "-b", "--batch_size", group=OFFICIAL,
                              help="mini-batch size (per process under DDP)")
    lr: float = setting(0.1, "--lr", "--learning-rate", group=OFFICIAL, help="initial learning rate")
    momentum: float = setting(0.9, "--momentum", group=OFFICIAL, help="SGD momentum (Nesterov)")
    weight_decay: float = setting(1e-4, "--weight-decay", "--wd", group=OFFICIAL, help="weight decay")
    print_freq: int = setting(1, "--print-freq", "-p", group=OFFICIAL, help="print every N batches")
    depth: int = setting(32, "--depth", group=OFFICIAL, help="network depth")
    bottleneck: bool = setting(True, "--no-bottleneck", group=OFFICIAL, action="off",
                               help="basic blocks instead of bottlenecks (CIFAR networks)")
    verbose: bool = setting(True, "--no-verbose", group=OFFICIAL, action="off", help="per-epoch summaries only")
    alpha: float = setting(300.0, "--alpha", group=OFFICIAL, help="PyramidNet widening factor")
    expname: str = setting("TEST", "--expname", group=OFFICIAL,
                           help="run name: files go to <output_dir>/<expname>/")
    beta: float = setting(0.0, "--beta", group=OFFICIAL, help="CutMix Beta(beta, beta) parameter; 0 = no CutMix")
    cutmix_prob: float = setting(0.0, "--cutmix_prob", group=OFFICIAL, help="probability of CutMix per batch")
    workers: int | None = setting(None, "-j", "--workers", group=OFFICIAL, shown_default="auto",
                                  help="DataLoader worker processes (ImageNet; in-memory sets need none); auto = "
                                  "the CPU cores available to each training process, less one, at most 16 (the "
                                  "official default was 4)")
    epochs: int = setting(90, "--epochs", group=OFFICIAL, help="number of epochs")
    # --- idml's flags ---
    data_dir: str = setting("data", "--data_dir", help="folder holding the datasets in the official layout")
    output_dir: str = setting("runs", "--output_dir", help="runs are written to <output_dir>/<expname>/")
    seed: int = setting(0, "--seed", help="seed of initialisation, data order and augmentation")
    device: str = setting("auto", "--device", choices=DEVICE_CHOICES,
                          help="auto = CUDA when available, else Apple silicon's MPS, else CPU")
    ism: bool = setting(True, "--no-ism", action="off",
                        help="train the plain network (the paper's Baseline rows) without the ISM head")
    ism_lambda: float = setting(5.0, "--ism_lambda", help="lambda of the introspective metric")
    uncertainty_dim: int | None = setting(None, "--uncertainty_dim", shown_default="{cifar} / {imagenet}".format(
                                          **DEFAULT_UNCERTAINTY_DIM),
                                          help="width K of the uncertainty embedding (32x32 data / ImageNet)")
    mixup_alpha: float = setting(0.0, "--mixup_alpha", help="Mixup Beta(alpha, alpha) parameter; 0 = no Mixup")
    mixup_prob: float = setting(0.0, "--mixup_prob",
                                help="probability of Mixup per batch (drawn after CutMix's share)")
    amp: str = setting("auto", "--amp", choices=AMP_CHOICES,
                       help="mixed precision: auto = bf16 where the hardware runs it fast (CUDA compute "
                       "capability >= 8.0, CPUs with AVX-512 BF16/AMX), fp16 on older GPUs and on MPS, else float32 "
                       "(the ISM always runs in float32)")
    channels_last: bool | None = setting(None, "--channels_last", action="both", shown_default="on for CUDA",
                                         help="channels-last memory format (off on the CPU)")
    compile: bool = setting(False, "--compile", action="on",
                            help="torch.compile the model (recommended on CUDA: see docs/gpu.md); where compilation "
                            "fails, one warning line and eager execution")
    deterministic: bool = setting(False, "--deterministic", action="on",
                                  help="deterministic kernels (cuDNN autotuning off) for a bit-exact resume on a GPU; "
                                  "slower (default: cudnn.benchmark on CUDA)")
    resume: str | None = setting(None, "--resume", metavar="auto|PATH", shown_default="none",
                                 help="continue a run: auto = <output_dir>/<expname>/checkpoint.pth.tar if present, "
                                 "else start fresh; PATH = that checkpoint (must exist)")
    save_every_steps: int = setting(0, "--save_every_steps", metavar="N",
                                    help="also checkpoint every N training steps inside an epoch (0 = at epoch "
                                    "ends only)")
    sync_bn: bool = setting(False, "--sync_bn", action="on",
                            help="under torchrun: SyncBatchNorm (batch statistics over all processes; CUDA only)")
    skip_bad_images: bool = setting(False, "--skip_bad_images", action="on",
                                    help="ImageNet: skip (and count) unreadable images instead of stopping at "
                                    "the first one")
    tensorboard: bool = setting(False, "--tensorboard", action="on",
                                help="also write TensorBoard event files to <run>/tensorboard (needs "
                                "idml[tensorboard])")
    label_noise: float = setting(0.0, "--label_noise", metavar="RATE",
                                 help="move this share of the training labels to another class, uniformly at "
                                 "random and fixed by --seed (cifar10, cifar100, digits; for robustness "
                                 "experiments)")
    dist_timeout: float = setting(600.0, "--dist_timeout", metavar="SECONDS",
                                  help="under torchrun: how long a process waits for a silent peer before the run "
                                  "stops with one line (covers rank 0 writing a checkpoint while the others wait)")

    def __post_init__(self) -> None:
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        """YAML files can hold anything: refuse values of the wrong type before using them."""
        for f in fields(self):
            value = getattr(self, f.name)
            kinds = _allowed_types(f.name)
            if isinstance(value, int) and not isinstance(value, bool) and float in kinds:
                setattr(self, f.name, float(value))
            elif not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
                raise ConfigError(f"setting {f.name} must be {expected}, got {value!r}")
            if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name)):
                raise ConfigError(f"setting {f.name} must be a finite number, got {value!r}")

    def validate(self) -> None:
        """Refuse impossible values with a message that names the flag and the fix."""
        checks = [
            (self.dataset.lower() in DATASETS,
             f"unknown --dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}"),
            net_type_problem(self.net_type),
            (1 <= self.batch_size <= MAX_BATCH, f"--batch_size must lie in [1, {MAX_BATCH}] (got {self.batch_size})"),
            (self.lr > 0, f"--lr must be positive (got {self.lr})"),
            (self.momentum >= 0, f"--momentum must be >= 0 (got {self.momentum})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (self.print_freq >= 1, f"--print-freq must be at least 1 (got {self.print_freq})"),
            (1 <= self.depth <= MAX_DEPTH, f"--depth must lie in [1, {MAX_DEPTH}] (got {self.depth})"),
            (self.alpha >= 0, f"--alpha must be >= 0 (got {self.alpha})"),
            (self.beta >= 0, f"--beta must be >= 0 (got {self.beta})"),
            (0 <= self.cutmix_prob <= 1, f"--cutmix_prob must lie in [0, 1] (got {self.cutmix_prob})"),
            (self.mixup_alpha >= 0, f"--mixup_alpha must be >= 0 (got {self.mixup_alpha})"),
            (0 <= self.mixup_prob <= 1, f"--mixup_prob must lie in [0, 1] (got {self.mixup_prob})"),
            (self.mix.cutmix_share + self.mix.mixup_share <= 1 + 1e-9,
             "--cutmix_prob + --mixup_prob must not exceed 1 (one draw per batch picks at most one)"),
            (self.workers is None or 0 <= self.workers <= MAX_WORKERS,
             f"--workers must lie in [0, {MAX_WORKERS}] (got {self.workers})"),
            (0 <= self.seed <= MAX_SEED, f"--seed must lie in [0, {MAX_SEED}] (got {self.seed})"),
            (0 < self.dist_timeout <= MAX_DIST_TIMEOUT,
             f"--dist_timeout must lie in (0, {MAX_DIST_TIMEOUT}] seconds (got {self.dist_timeout})"),
            (self.epochs >= 0, f"--epochs must be >= 0 (got {self.epochs})"),
            (0 <= self.label_noise < 1, f"--label_noise must lie in [0, 1) (got {self.label_noise})"),
            (self.label_noise == 0 or self.dataset.lower() != "imagenet",
             "--label_noise works on the in-memory datasets (cifar10, cifar100, digits), not imagenet"),
            (self.ism_lambda > 0, f"--ism_lambda must be positive (got {self.ism_lambda})"),
            (self.uncertainty_dim is None or 1 <= self.uncertainty_dim <= MAX_UNCERTAINTY_DIM,
             f"--uncertainty_dim must lie in [1, {MAX_UNCERTAINTY_DIM}] (got {self.uncertainty_dim})"),
            (self.amp in AMP_CHOICES, f"--amp must be one of {', '.join(AMP_CHOICES)}"),
            (self.device in DEVICE_CHOICES, f"--device must be one of {', '.join(DEVICE_CHOICES)}"),
            (self.save_every_steps >= 0, f"--save_every_steps must be >= 0 (got {self.save_every_steps})"),
            (self.resume is None or self.resume.strip() != "",
             "--resume needs 'auto' or the path of a checkpoint"),
            (bool(EXPNAME_PATTERN.match(self.expname)) and ".." not in self.expname,
             f"--expname {self.expname!r} must be a plain folder name (letters, digits, . _ + = -), "
             "so that the run stays inside --output_dir"),
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
        raise ConfigError(f"cannot read --config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path} is not valid YAML: {one_line(exc)}") from exc
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


def shown_default(f: Any) -> str:
    """How a setting's default reads in help texts and docs."""
    meta = f.metadata
    if meta["shown_default"] is not None:
        return meta["shown_default"]
    if meta["action"] in ("on", "off"):
        return "off"
    return f"{f.default:g}" if isinstance(f.default, float) else str(f.default)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Every ``idml train`` flag, from the declarations of :class:`TrainConfig`.

    Parser defaults are None, so that a value from ``--config`` fills what the command line omits.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        text = meta["help"] if meta["action"] in ("on", "off") else f"{meta['help']} (default: {shown_default(f)})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": text}
        if meta["action"] == "on":
            kwargs |= {"action": "store_const", "const": True}
        elif meta["action"] == "off":
            kwargs |= {"action": "store_const", "const": False}
        elif meta["action"] == "both":
            kwargs |= {"action": argparse.BooleanOptionalAction, "default": None}
        else:
            kinds = [k for k in _allowed_types(f.name) if k is not type(None)]
            kwargs |= {"type": kinds[0], "metavar": meta["metavar"], "choices": meta["choices"]}
        group.add_argument(*meta["flags"], **kwargs)
    p.add_argument("--config", metavar="FILE",
                   help="YAML file of settings (field names as in config.yaml); flags given on the command "
                   "line override it")


def flag_table() -> str:
    """The Markdown flag reference of docs/configuration.md, derived from the declarations."""
    lines: list[str] = []
    for group in (OFFICIAL, IDML):
        lines += ["", f"{group[0].upper()}{group[1:]}:", "", "| flag | default | setting | meaning |",
                  "|---|---|---|---|"]
        for f in fields(TrainConfig):
            if f.metadata["group"] == group:
                flags = ", ".join(f"`{flag}`" for flag in f.metadata["flags"])
                if f.metadata["action"] == "both":
                    flags += f" / `--no-{f.metadata['flags'][0][2:]}`"
                meaning = f.metadata["help"].replace("|", "\\|").replace("<", "&lt;")
                lines.append(f"| {flags} | {shown_default(f)} | `{f.name}` | {meaning} |")
    return "\n".join(lines[1:]) + "\n"


@cache
def _allowed_types(name: str) -> tuple[type, ...]:
    """The types a setting accepts, from its annotation (``int | None`` -> (int, NoneType))."""
    hint = typing.get_type_hints(TrainConfig)[name]
    return typing.get_args(hint) or (hint,)


def preflight(cfg: TrainConfig) -> None:
    """Checks that depend on this machine, not on the settings alone: optional packages that a
    setting needs, and a backbone name that the installed timm or torchvision must know."""
    from idml.models.external import name_problem
    from idml.training.run_log import MISSING_TENSORBOARD, tensorboard_available

    if cfg.tensorboard and not tensorboard_available():
        raise ConfigError(MISSING_TENSORBOARD)
    if ":" in cfg.net_type:
        problem = name_problem(cfg.net_type)
        if problem:
            raise ConfigError(problem)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < YAML file (--config) < flags given on the command line."""
    values: dict[str, Any] = load_yaml_config(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in _field_names() and v is not None})
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid setting: {exc}") from exc


def parse_train_args(argv: list[str], prog: str = "idml train") -> TrainConfig:
    parser = OneLineParser(prog=prog, description="Train an image classifier with IDML.")
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(argv))
