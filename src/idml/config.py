"""The one typed settings object of a training run, built once from YAML and the command line.

Each setting is declared once, as a field of :class:`TrainConfig` with its default, flags, rule
and help (:func:`setting`); the ``idml train`` parser, the checks of a value (:mod:`idml.rules`,
also applied to the settings a checkpoint records) and the flag reference of
docs/configuration.md are derived from those declarations. Every official flag keeps the official
code's spelling, meaning and default. Building a ``TrainConfig`` checks types and values only;
what depends on the machine (an installed package, a model name in timm's list) is checked when
a run starts (:func:`idml.training.preflight.preflight`). Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import typing
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from idml.data.catalog import (
    DEFAULT_UNCERTAINTY_DIM,
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    MIN_STD,
    canonical_name,
    dataset_info,
    dataset_problem,
    datasets_that_can,
    default_network,
    parse_classes,
    user_dataset,
)
from idml.errors import ConfigError, describe, listing, one_line
from idml.models.spec import ModelSpec, canonical_net_type, net_type_problem
from idml.rules import Rule, boolean, flag_type, integer, number, numbers, off_or, one_of, optional, text

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: Bounds that keep a value from passing validation and failing later: seeds feed NumPy's and torch's
#: generators (``seed * 1_000_003 + epoch`` must fit in 64 bits), the deepest network in the
#: literature has 1202 layers (a depth past this takes minutes just to build), and each worker is a
#: process. Per-process batches beyond this are past what any accelerator holds; epochs and steps
#: beyond these turn into numbers the schedules cannot represent (``--warmup_epochs 1e308``).
MAX_SEED = 2**32 - 1
MAX_DEPTH = 2000
MAX_ALPHA = 100_000
MAX_WORKERS = 256
MAX_BATCH = 2**16
MAX_UNCERTAINTY_DIM = 2**16
MAX_DIST_TIMEOUT = 7 * 24 * 3600
MAX_EPOCHS = 100_000
MAX_STEPS = 1_000_000_000
#: ``--devices N``: processes one command may start (one per CUDA GPU, or Gloo processes on the CPU)
MAX_DEVICES = 512
#: ``--stop_after``: at most a year, in hours
MAX_STOP_AFTER_H = 24 * 365
#: signals ``--stop_signal`` may name (SIGTERM and SIGINT always stop a run cleanly)
STOP_SIGNAL_CHOICES = ("USR1", "USR2", "HUP", "TERM")
#: --expname leaves room in a file name (255 bytes) for the ".N" of an archived run folder.
MAX_EXPNAME = 240
#: lambda scales a float32 distance in (1e-12, 4] (the ISM's scaled semantic distance): within these
#: bounds the product and its gradient stay finite and normal; 5 is the paper's value.
MIN_ISM_LAMBDA, MAX_ISM_LAMBDA = 1e-6, 1e6
#: The shape parameter of the Beta distributions of CutMix (--beta) and Mixup (--mixup_alpha); 1 is the
#: official recipe's. Beyond these bounds the value makes no difference (below, every draw is 0 or 1;
#: above, 0.5) or a wrong one: NumPy draws only 0 for a shape near the largest float (every batch
#: would be replaced by its shuffled copy), and its legacy sampler draws NaN for a subnormal one.
BETA_SHAPE = number(1e-6, 1e6)
#: Gradient norms are float32: a --clip_grad_norm below this would zero every gradient, silently.
MIN_CLIP_NORM = 1e-6
#: Far above any learning rate in use (about 10 at most), and far inside float32, in which torch
#: keeps a parameter group's learning rate (1e308 overflowed it: a traceback at the first step).
MAX_LR = 1e6
#: Momentum and weight decay are shares of the weights and of their updates: above 1 an SGD step
#: grows them without end (and torch's float32 parameter groups overflow above 3.4e38).
MAX_MOMENTUM = MAX_WEIGHT_DECAY = 1.0
#: A per-channel mean and standard deviation of images in [0, 1] units (see data/catalog.py's
#: MIN_STD): a mean outside [0, 1] (say the 0-255 ImageNet mean, 123.7) or a tiny std is no
#: statistic of such images, and would turn every input into overflow.
CHANNEL_MEAN = number(0, 1)
CHANNEL_STD = number(MIN_STD, 1)
SCHED_CHOICES = ("step", "cosine")
DECODE_CHOICES = ("cpu", "gpu", "auto")
EXPNAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+=-]*"
EXPNAME_WORDS = ("be a plain folder name of at most 240 characters (letters, digits and . _ + = -, starting "
                 "with a letter or digit), so that the run stays inside --output_dir")
#: The official defaults of --net_type, --depth and bottleneck blocks; idml's own datasets have
#: their own default network (:data:`idml.data.catalog.OWN_DEFAULT_NETWORK`).
OFFICIAL_NETWORK = ("pyramidnet", 32, True)
OFFICIAL = "official flags (same meaning and default as the official code's train.py)"
IDML = "flags idml adds"


def device_count(value: Any) -> int | None:
    """``--devices`` as a number of processes (from the command line's text or a YAML number); None
    for auto, or for a value that is no whole number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.strip().isdigit() else None


DEVICES_RULE = Rule(f"be auto or a number of devices in [1, {MAX_DEVICES}]",
                    lambda v: v == "auto" or 1 <= (device_count(v) or 0) <= MAX_DEVICES,
                    edges=("auto", 1, "2", MAX_DEVICES, MAX_DEVICES + 1, 0, "9" * 5000, "many"))


@dataclass(frozen=True)
class MixConfig:
    """CutMix with Beta(beta, beta) area when beta > 0, chosen with probability ``cutmix_prob``;
    otherwise Mixup with Beta(mixup_alpha, mixup_alpha) with probability ``mixup_prob``
    (:func:`idml.mixing.mix_batch`)."""

    beta: float = 0.0
    cutmix_prob: float = 0.0
    mixup_alpha: float = 0.0
    mixup_prob: float = 0.0

    @property
    def cutmix_share(self) -> float:
        return self.cutmix_prob if self.beta > 0 else 0.0

    @property
    def mixup_share(self) -> float:
        return self.mixup_prob if self.mixup_alpha > 0 else 0.0

    @property
    def active(self) -> bool:
        return self.cutmix_share > 0 or self.mixup_share > 0


def setting(default: Any, *flags: str, rule: Rule, help: str, group: str = IDML, action: str | None = None,
            metavar: str | None = None, choices: tuple[str, ...] | None = None, shown_default: str | None = None):
    """Declare one setting: its default, its command-line flags, its rule and its help, in one place.

    The parser (:func:`add_train_arguments`), the checks (:meth:`TrainConfig.validate`, and a
    checkpoint's record of the settings: :func:`setting_problem`) and the flag reference in
    docs/configuration.md (:func:`flag_table`) are all derived from these declarations. ``action``
    is ``"on"`` for a flag that switches a default-off setting on, ``"off"`` for one that switches
    it off and ``"both"`` for a ``--x/--no-x`` pair; ``shown_default`` replaces the default in
    help and docs.
    """
    meta = {"flags": flags, "help": help, "group": group, "action": action, "metavar": metavar,
            "choices": choices, "shown_default": shown_default, "rule": rule}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a training run. What the trainer, the checkpoint and ``config.yaml`` hold."""

    # --- the official flags, with the official defaults ---
    net_type: str | None = setting(None, "--net_type", group=OFFICIAL, shown_default=OFFICIAL_NETWORK[0],
                                   rule=optional(text(200, words="name a network", reason=net_type_problem)),
                                   help="backbone: resnet or pyramidnet (idml adds torchvision:<name> and "
                                   "timm:<name>); digits, folder and hf:<path> runs that give neither --net_type "
                                   "nor --depth train idml's default network: ResNet-20 with basic blocks "
                                   "(ResNet-18 for --input_size above 64)")
    dataset: str = setting("imagenet", "--dataset", group=OFFICIAL,
                           rule=text(words="name a dataset", reason=dataset_problem),
                           help="cifar10, cifar100, imagenet or digits (idml adds folder and hf:<path>: your own "
                           "images)")
    batch_size: int = setting(128, "-b", "--batch_size", group=OFFICIAL,
                              rule=integer(1, MAX_BATCH),
                              help="mini-batch size: per process under torchrun; the total, split evenly, when "
                              "idml starts one process per device itself (--devices)")
    lr: float = setting(0.1, "--lr", "--learning-rate", group=OFFICIAL, rule=number(above=0, high=MAX_LR),
                        help="initial learning rate")
    momentum: float = setting(0.9, "--momentum", group=OFFICIAL, rule=number(0, MAX_MOMENTUM),
                              help="SGD momentum (Nesterov)")
    weight_decay: float = setting(1e-4, "--weight-decay", "--wd", group=OFFICIAL,
                                  rule=number(0, MAX_WEIGHT_DECAY), help="weight decay")
    print_freq: int = setting(1, "--print-freq", "-p", group=OFFICIAL, rule=integer(1), help="print every N batches")
    depth: int | None = setting(None, "--depth", group=OFFICIAL, shown_default=str(OFFICIAL_NETWORK[1]),
                                rule=optional(integer(1, MAX_DEPTH)),
                                help="network depth (CIFAR-style networks: 9n+2 with bottleneck blocks, 6n+2 with "
                                "--no-bottleneck; ImageNet-style: 18, 34, 50, 101, 152, 200)")
    bottleneck: bool | None = setting(None, "--no-bottleneck", group=OFFICIAL, action="off",
                                      rule=optional(boolean()),
                                      help="basic blocks instead of bottlenecks (CIFAR-style networks)")
    verbose: bool = setting(True, "--no-verbose", group=OFFICIAL, action="off", rule=boolean(),
                            help="per-epoch summaries only")
    alpha: float = setting(300.0, "--alpha", group=OFFICIAL, rule=number(0, MAX_ALPHA),
                           help="PyramidNet widening factor")
    expname: str = setting("TEST", "--expname", group=OFFICIAL,
                           rule=text(MAX_EXPNAME, pattern=EXPNAME_PATTERN, words=EXPNAME_WORDS),
                           help="run name: files go to <output_dir>/<expname>/")
    beta: float = setting(0.0, "--beta", group=OFFICIAL, rule=off_or(BETA_SHAPE),
                          help="CutMix Beta(beta, beta) parameter; 0 = no CutMix")
    cutmix_prob: float = setting(0.0, "--cutmix_prob", group=OFFICIAL, rule=number(0, 1),
                                 help="probability of CutMix per batch")
    workers: int | None = setting(None, "-j", "--workers", group=OFFICIAL, shown_default="auto",
                                  rule=optional(integer(0, MAX_WORKERS)),
                                  help="DataLoader worker processes (ImageNet; in-memory sets need none); auto = "
                                  "the CPU cores available to each training process, less one, at most 16 (the "
                                  "official default was 4)")
    epochs: int = setting(90, "--epochs", group=OFFICIAL, rule=integer(1, MAX_EPOCHS), help="number of epochs")
    # --- idml's flags ---
    data_dir: str = setting("data", "--data_dir", rule=text(),
                            help="folder holding the datasets in the official layout "
                            "(--dataset folder: the folder holding train/<class>/ and val/<class>/)")
    output_dir: str = setting("runs", "--output_dir", rule=text(), help="runs are written to <output_dir>/<expname>/")
    seed: int = setting(0, "--seed", rule=integer(0, MAX_SEED),
                        help="seed of initialisation, data order and augmentation")
    device: str = setting("auto", "--device", choices=DEVICE_CHOICES,
                          rule=one_of(*DEVICE_CHOICES),
                          help="auto = CUDA when available, else Apple silicon's MPS, else CPU")
    ism: bool = setting(True, "--no-ism", action="off",
                        rule=boolean(), help="train the plain network (the paper's Baseline rows) without the ISM head")
    ism_lambda: float = setting(5.0, "--ism_lambda", rule=number(MIN_ISM_LAMBDA, MAX_ISM_LAMBDA),
                                   help="lambda of the introspective metric")
    uncertainty_dim: int | None = setting(None, "--uncertainty_dim", shown_default="{cifar} / {imagenet}".format(
                                          **DEFAULT_UNCERTAINTY_DIM),
                                          rule=optional(integer(1, MAX_UNCERTAINTY_DIM)),
                                          help="width K of the uncertainty embedding (32x32 data / ImageNet)")
    mixup_alpha: float = setting(0.0, "--mixup_alpha", rule=off_or(BETA_SHAPE),
                                 help="Mixup Beta(alpha, alpha) parameter; 0 = no Mixup")
    mixup_prob: float = setting(0.0, "--mixup_prob",
                                rule=number(0, 1), help="probability of Mixup per batch (drawn after CutMix's share)")
    amp: str = setting("auto", "--amp", choices=AMP_CHOICES,
                       rule=one_of(*AMP_CHOICES),
                       help="mixed precision: auto = bf16 where the hardware runs it fast (CUDA compute "
                       "capability >= 8.0, CPUs with AVX-512 BF16/AMX), fp16 on older GPUs and on MPS, else float32 "
                       "(the ISM always runs in float32)")
    channels_last: bool | None = setting(None, "--channels_last", action="both", shown_default="auto",
                                         rule=optional(boolean()),
                                         help="channels-last memory format; auto: on for CUDA, off on MPS; on the "
                                         "CPU, the faster of the two for this network, batch and precision, timed "
                                         "at the start of the run (a few steps each) and cached in "
                                         "$XDG_CACHE_HOME/idml or ~/.cache/idml; a resumed run keeps its "
                                         "checkpoint's (see docs/speed.md)")
    compile: bool = setting(False, "--compile", action="on",
                            rule=boolean(),
                            help="torch.compile the model (recommended on CUDA: see docs/gpu.md); where compilation "
                            "fails, one warning line and eager execution")
    deterministic: bool = setting(False, "--deterministic", action="on",
                                  rule=boolean(),
                                  help="deterministic kernels (cuDNN autotuning off) for a bit-exact resume on a GPU; "
                                  "slower (default: cudnn.benchmark on CUDA)")
    resume: str | None = setting(None, "--resume", metavar="auto|PATH", shown_default="none",
                                 rule=optional(text(words="be auto or the path of a checkpoint")),
                                 help="continue a run: auto = <output_dir>/<expname>/checkpoint.pth.tar if present, "
                                 "else start fresh; PATH = that checkpoint (must exist)")
    save_every_steps: int = setting(0, "--save_every_steps", metavar="N",
                                    rule=integer(0, MAX_STEPS),
                                    help="also checkpoint every N training steps inside an epoch (0 = at epoch "
                                    "ends only)")
    sync_bn: bool = setting(False, "--sync_bn", action="on",
                            rule=boolean(),
                            help="under torchrun: SyncBatchNorm (batch statistics over all processes; CUDA only)")
    skip_bad_images: bool = setting(False, "--skip_bad_images", action="on",
                                    rule=boolean(),
                                    help="skip (and count) unreadable images (damaged, of a format idml does not "
                                    "decode, above its pixel limit) instead of stopping at the first one (ImageNet, "
                                    "folder and hf:<path> datasets)")
    decode: str = setting("cpu", "--decode", choices=DECODE_CHOICES, rule=one_of(*DECODE_CHOICES),
                          help="ImageNet: where the training JPEGs are decoded. cpu = in the -j workers, at a "
                          "reduced scale where the crop allows it; gpu = the workers only read the files and the "
                          "training GPU decodes, crops and flips them in batches (CUDA only; docs/input-pipeline.md); "
                          "auto = gpu on CUDA, else cpu")
    tensorboard: bool = setting(False, "--tensorboard", action="on",
                                rule=boolean(), help="also write TensorBoard event files to <run>/tensorboard (needs "
                                "idml[tensorboard])")
    label_noise: float = setting(0.0, "--label_noise", metavar="RATE",
                                 rule=number(0, below=1),
                                 help="move this share of the training labels to another class, uniformly at "
                                 "random and fixed by --seed (cifar10, cifar100, digits; for robustness "
                                 "experiments)")
    dist_timeout: float = setting(600.0, "--dist_timeout", metavar="SECONDS",
                                  rule=number(1, MAX_DIST_TIMEOUT),
                                  help="under torchrun: how long a process waits for a silent peer before the run "
                                  "stops with one line (covers rank 0 writing a checkpoint while the others wait)")
    devices: str | int = setting("auto", "--devices", metavar="auto|N", rule=DEVICES_RULE,
                                 help="outside torchrun: train on this many devices, one DDP process each, started "
                                 "from this one command (auto = every visible CUDA GPU, else 1; with --device cpu, N "
                                 "Gloo processes); --batch_size is then the total batch, split evenly. Under torchrun "
                                 "it is ignored (see docs/cluster.md)")
    stop_signal: str = setting("USR1", "--stop_signal", choices=STOP_SIGNAL_CHOICES,
                               rule=one_of(*STOP_SIGNAL_CHOICES),
                               help="besides SIGTERM and SIGINT, this signal (SLURM's --signal=B:USR1@120 warning) "
                               "stops the run cleanly: every process stops at the same step, writes the checkpoint "
                               "and exits with 128 + its number")
    stop_after: float = setting(0.0, "--stop_after", metavar="HOURS", rule=number(0, MAX_STOP_AFTER_H),
                                help="stop cleanly, as on --stop_signal, at the first step after HOURS of wall-clock "
                                "time since idml train started, for schedulers that send no warning (0 = never)")
    # --- your own images (--dataset folder, hf:<path>); see docs/own-data.md ---
    input_size: int | None = setting(None, "--input_size", metavar="N", shown_default="32",
                                     rule=optional(integer(MIN_INPUT_SIZE, MAX_INPUT_SIZE)),
                                     help="folder and hf:<path> datasets: images are N x N; N <= 64 gives the "
                                     "CIFAR-style network and padded-crop augmentation, larger N the ImageNet stem "
                                     "and RandomResizedCrop")
    mean: list[float] | None = setting(None, "--mean", metavar=("R", "G", "B"),
                                       shown_default="from the data",
                                       rule=optional(numbers(3, each=CHANNEL_MEAN)),
                                       help="folder and hf:<path> datasets: per-channel mean in [0, 1] units "
                                       "(from the data = measured on the training images)")
    std: list[float] | None = setting(None, "--std", metavar=("R", "G", "B"),
                                      shown_default="from the data",
                                      rule=optional(numbers(3, each=CHANNEL_STD)),
                                      help="folder and hf:<path> datasets: per-channel standard deviation in [0, 1] "
                                      "units (from the data = measured on the training images)")
    image_key: str = setting("image", "--image_key", rule=text(words="name a column"),
                             help="hf:<path> datasets: the column holding the images")
    label_key: str = setting("label", "--label_key",
                             rule=text(words="name a column"),
                             help="hf:<path> datasets: the column holding the labels (a ClassLabel names the classes)")
    data_memory_mb: float = setting(2048.0, "--data_memory_mb", metavar="MIB",
                                    rule=number(0),
                                    help="folder and hf:<path> datasets: decode all images once into uint8 tensors "
                                    "on the training device when they take at most this many MiB, else stream "
                                    "them through -j DataLoader workers (0 = always stream)")
    # --- the modern recipe, all off by default; see docs/recipe.md ---
    model_ema: float = setting(0.0, "--model_ema", metavar="DECAY",
                               rule=number(0, below=1),
                               help="keep an exponential moving average of the weights, ema = DECAY * ema + "
                               "(1 - DECAY) * weights after every optimiser step, evaluated each epoch beside them "
                               "(0 = off)")
    sched: str = setting("step", "--sched", choices=SCHED_CHOICES,
                         rule=one_of(*SCHED_CHOICES),
                         help="learning-rate schedule: step = the official per-epoch steps, cosine = half a cosine "
                         "from --lr to 0 over the run, updated every step")
    warmup_epochs: float = setting(0.0, "--warmup_epochs", metavar="E",
                                   rule=number(0, MAX_EPOCHS),
                                   help="raise the learning rate linearly over the first E epochs (counted in "
                                   "steps) before --sched takes over")
    grad_accum_steps: int = setting(1, "--grad_accum_steps", metavar="N",
                                    rule=integer(1, MAX_STEPS),
                                    help="one optimiser step per N batches, on their mean gradient (BatchNorm "
                                    "still sees --batch_size images at a time)")
    label_smoothing: float = setting(0.0, "--label_smoothing", metavar="EPS",
                                     rule=number(0, below=1),
                                     help="label smoothing of the training loss on the introspective logits, for "
                                     "both label sets of a CutMix/Mixup batch")
    clip_grad_norm: float = setting(0.0, "--clip_grad_norm", metavar="MAX",
                                    rule=off_or(number(MIN_CLIP_NORM)),
                                    help="scale the gradients down to a global L2 norm of at most MAX before each "
                                    "optimiser step (0 = off)")
    init_from: str | None = setting(None, "--init_from", metavar="PATH", shown_default="none",
                                    rule=optional(text(words="be the path of a weights file")),
                                    help="start from the weights in PATH: an idml checkpoint or a state_dict file "
                                    "(torchvision/timm weights saved with torch.save); a classifier for other "
                                    "classes is left fresh")
    val_split: float = setting(0.0, "--val_split", metavar="FRACTION",
                               rule=number(0, below=1),
                               help="hold out this seeded, class-stratified share of the training set as the "
                               "validation set: the best epoch and the softmax temperature are chosen on it and "
                               "the test set is reported at the best-validation and the last epoch (cifar10, "
                               "cifar100, digits; a folder dataset without val/ holds it out of train/; 0 = the "
                               "official protocol: best chosen on the test set)")
    classes: str | None = setting(None, "--classes", metavar="SPEC", shown_default="all",
                                  rule=optional(text(words="name classes, e.g. 0-4 or 0,3,7")),
                                  help="train on these classes only, e.g. 0-4 or 0,3,7 (labels renumbered in that "
                                  "order, names kept; cifar10, cifar100, digits)")

    def __post_init__(self) -> None:
        self._check_types()
        if isinstance(self.dataset, str) and dataset_problem(self.dataset) is None:  # one spelling from here on
            self.dataset = canonical_name(self.dataset)
        self._resolve_network()
        if isinstance(self.net_type, str) and net_type_problem(self.net_type) is None:
            self.net_type = canonical_net_type(self.net_type)

        self.validate()

    def _resolve_network(self) -> None:
        """Fill in the network settings not given: idml's default network on its own datasets when
        neither --net_type nor --depth is given, else the official defaults. ``own_default_network``
        says which (for the run's first lines); what is saved is always the network itself."""
        size = self.input_size if setting_problem("input_size", self.input_size) is None else None
        known = isinstance(self.dataset, str) and dataset_problem(self.dataset) is None
        own = None
        if self.net_type is None and self.depth is None and known:
            own = default_network(self.dataset, size)
        self.own_default_network = own is not None
        net_type, depth, bottleneck = own or OFFICIAL_NETWORK
        self.net_type = net_type if self.net_type is None else self.net_type
        self.depth = depth if self.depth is None else self.depth
        self.bottleneck = bottleneck if self.bottleneck is None else self.bottleneck

    def _check_types(self) -> None:
        """Numbers in the form the settings hold them: YAML and JSON write 1 for 1.0, and a list of
        numbers may arrive as a tuple. Nothing is refused here; the rules do that."""
        for f in fields(self):
            value = getattr(self, f.name)
            kinds = _allowed_types(f.name)
            if isinstance(value, tuple) and list in kinds:
                setattr(self, f.name, value := list(value))
            if isinstance(value, list) and list in kinds:
                setattr(self, f.name, [float(v) if _whole(v) else v for v in value])
            elif _whole(value) and float in kinds:
                setattr(self, f.name, float(value))

    def validate(self) -> None:
        """Refuse impossible values with a message that names the flag and the fix: each setting
        against its own rule, then the settings that must agree with each other."""
        for f in fields(self):
            problem = setting_problem(f.name, getattr(self, f.name))
            if problem:
                raise ConfigError(problem)
        mix = self.mix
        checks = [
            (mix.cutmix_share + mix.mixup_share <= 1 + 1e-9,
             "--cutmix_prob + --mixup_prob must not exceed 1 (one draw per batch picks at most one)"),
            (self.decode == "cpu" or self.dataset == "imagenet",
             f"--decode {self.decode} applies to --dataset imagenet (other datasets decode on the CPU)"),
            (self.label_noise == 0 or self._can("in_memory"),
             f"--label_noise works on the in-memory datasets ({listing(datasets_that_can('in_memory'))}), "
             f"not {self.dataset}"),
            (self.val_split == 0 or self._can("val_split"),
             f"--val_split works on {listing(datasets_that_can('val_split'))} datasets, not {self.dataset}"),
            (self.classes is None or self._can("in_memory"),
             f"--classes works on the in-memory datasets ({listing(datasets_that_can('in_memory'))}), "
             f"not {self.dataset}"),
        ]
        for ok, message in checks + self._recipe_checks() + self._do_nothing_checks() + self._network_checks():
            if not ok:
                raise ConfigError(message)
        if self.classes is not None:
            parse_classes(self.classes, dataset_info(self.dataset).num_classes)

    def _can(self, capability: str) -> bool:
        """Whether this run's dataset has a catalog capability."""
        return capability in dataset_info(self.dataset).can

    def _recipe_checks(self) -> list[tuple[bool, str]]:
        """The own-data settings apply to the user datasets only."""
        user = user_dataset(self.dataset)
        own = "applies to --dataset folder and hf:<path> only"
        return [
            (self.input_size is None or user, f"--input_size {own} ({self.dataset} has fixed inputs)"),
            *((value is None or user, f"--{name} {own} ({self.dataset} uses the official statistics)")
              for name, value in (("mean", self.mean), ("std", self.std))),
            (not self._changed("data_memory_mb") or user, f"--data_memory_mb {own} ({self.dataset} is read "
             "as the official code reads it)"),
            *((not self._changed(name) or getattr(user, "kind", None) == "hf",
               f"--{name} applies to --dataset hf:<path> only (columns of a Hugging Face dataset)")
              for name in ("image_key", "label_key")),
        ]

    def _network_checks(self) -> list[tuple[bool, str]]:
        """Network flags that change the network. (Whether the depth gives a network at all is
        checked when the run builds it, :func:`idml.models.spec.depth_problem`: the official
        defaults, PyramidNet-32 with bottleneck blocks, give none, yet are the defaults.)"""
        family = dataset_info(self.dataset, self.input_size).family
        external = ":" in self.net_type
        return [
            (not external or not any(self._changed(n) for n in ("depth", "alpha", "bottleneck")),
             f"--depth, --alpha and --no-bottleneck do nothing for --net_type {self.net_type} (its architecture "
             "comes from its name): drop them"),
            (external or self.net_type == "pyramidnet" or not self._changed("alpha"),
             f"--alpha {self.alpha:g} does nothing for --net_type {self.net_type} (it is PyramidNet's widening "
             "factor): drop it, or use --net_type pyramidnet"),
            (external or family == "cifar" or self.bottleneck,
             f"--no-bottleneck does nothing for an ImageNet-style {self.net_type}: its block type follows --depth "
             "(18 and 34 basic blocks, 50 and deeper bottlenecks): drop it"),
        ]

    def _do_nothing_checks(self) -> list[tuple[bool, str]]:
        """Settings that would change nothing, which a user gives thinking they do something. (The
        official ISM-Baseline commands give --beta 1.0 with --cutmix_prob 0, which is accepted.)"""
        return [
            (self.cutmix_prob == 0 or self.beta > 0,
             f"--cutmix_prob {self.cutmix_prob:g} does nothing with --beta 0 (CutMix is off): add --beta 1.0 "
             "(the official value), or drop --cutmix_prob"),
            (self.mixup_prob == 0 or self.mixup_alpha > 0,
             f"--mixup_prob {self.mixup_prob:g} does nothing with --mixup_alpha 0 (Mixup is off): add "
             "--mixup_alpha 1.0, or drop --mixup_prob"),
            (self.mixup_alpha == 0 or self.mixup_prob > 0,
             f"--mixup_alpha {self.mixup_alpha:g} does nothing without --mixup_prob (the share of batches Mixup "
             "mixes, 0 by default): add --mixup_prob 1.0, or drop --mixup_alpha"),
            *((self.ism or not self._changed(name),
               f"--{name} does nothing with --no-ism (the plain network has no uncertainty embedding): drop one "
               "of them") for name in ("uncertainty_dim", "ism_lambda")),
            (self.verbose or not self._changed("print_freq"),
             f"--print-freq {self.print_freq} does nothing with --no-verbose (no per-batch lines are printed): "
             "drop one of them"),
            (not self.skip_bad_images or not self._can("in_memory"),
             f"--skip_bad_images does nothing on {self.dataset} (it reads no image files): it applies to "
             "imagenet, folder and hf:<path>"),
        ]

    def _changed(self, name: str) -> bool:
        """Whether setting ``name`` differs from its default (the official one for the network)."""
        official = dict(zip(("net_type", "depth", "bottleneck"), OFFICIAL_NETWORK, strict=True))
        default = official.get(name, TrainConfig.__dataclass_fields__[name].default)
        return getattr(self, name) != default

    def steps_problem(self, steps_per_epoch: int) -> str | None:
        """Why a setting does nothing for epochs of ``steps_per_epoch`` batches (known once the data
        is read), or None."""
        every = self.save_every_steps
        if 0 < steps_per_epoch <= every:
            return (f"--save_every_steps {every} does nothing here: an epoch has {steps_per_epoch} steps and "
                    "its end is always saved; give fewer steps (or 0)")
        return None

    @property
    def model_spec(self) -> ModelSpec:
        size = dataset_info(self.dataset, self.input_size).input_size if user_dataset(self.dataset) else None
        return ModelSpec(
            self.net_type, self.dataset, self.depth, self.alpha, self.bottleneck,
            None, self.ism, self.uncertainty_dim, self.ism_lambda, size,
        )

    @property
    def processes_requested(self) -> int | None:
        """``--devices`` as a number of processes; None for auto."""
        return device_count(self.devices)

    @property
    def official_protocol(self) -> bool:
        """An official dataset, whole, chosen on its test split as the official code does: the
        run's console shows the official code's lines (idml's own lines otherwise)."""
        return (dataset_info(self.dataset).official if user_dataset(self.dataset) is None else False) \
            and self.val_split == 0 and self.classes is None and self.label_noise == 0

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
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path} is not valid YAML: {one_line(exc)[:200]}") from exc
    except RecursionError as exc:  # PyYAML composes nested nodes recursively: [[[[...]]]]
        raise ConfigError(f"--config {path} is not a settings file: its values are nested too deeply") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of setting: value")
    unknown = [key for key in data if not (isinstance(key, str) and key in _field_names())]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ConfigError(f"--config {path}: unknown setting(s) {', '.join(describe(k) for k in unknown[:5])}{more}")
    return {key: _yaml_number(key, value) for key, value in data.items()}


def _yaml_number(name: str, value: Any) -> Any:
    """A number written as ``1e-3`` in a YAML file, as the number: PyYAML reads YAML 1.1, where a
    float needs a dot (``1.0e-3``), and hands such a value over as text; YAML 1.2 and every other
    reader take it as the number it is. Only for settings that hold numbers and no text."""
    kinds = _allowed_types(name)
    if isinstance(value, str) and str not in kinds and (float in kinds or int in kinds) and len(value) <= 64:
        try:
            number = float(value)
        except ValueError:
            return value
        if int in kinds and number.is_integer() and "." not in value and "e" not in value.lower():
            return int(value)
        return number if float in kinds else value
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line on one line, with exit status 2, and takes flags
    only as written: argparse's prefix matching would read ``--epoch 2`` as ``--epochs 2``
    without a word, and a flag added later would silently change what an old prefix means."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}{self._suggestion(message)} (see --help)\n")

    def _suggestion(self, message: str) -> str:
        """For an unknown flag that is close to a known one (``--epoch``), the known one."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [flag for flag in self._option_string_actions if flag.startswith("--")]
        for word in message.split(":", 1)[1].split():
            close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.8)
            if word.startswith("--") and close:
                return f"; did you mean {close[0]}?"
        return ""


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
            if kinds[0] is list:  # a fixed number of numbers: --mean R G B
                kwargs |= {"type": flag_type(float), "nargs": len(meta["metavar"]), "metavar": meta["metavar"]}
            else:
                parse = flag_type(kinds[0]) if kinds[0] in (int, float) else kinds[0]
                kwargs |= {"type": parse, "metavar": meta["metavar"], "choices": meta["choices"]}
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


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@cache
def _rules() -> dict[str, tuple[str, Rule]]:
    """Every setting's (name in messages: its long flag, rule)."""
    return {f.name: (next((flag for flag in f.metadata["flags"] if flag.startswith("--")), f.name), f.metadata["rule"])
            for f in fields(TrainConfig)}


_NO_DEFAULT = object()


def setting_rule(name: str, default: Any = _NO_DEFAULT) -> Rule:
    """The rule of the setting ``name`` (``default`` for a name that is no setting, else KeyError)."""
    if name not in _rules() and default is not _NO_DEFAULT:
        return default
    return _rules()[name][1]


def setting_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is no valid value of the setting ``name`` (one line naming its flag), or None.

    The one check of a single setting, for the command line, YAML files and the settings a
    checkpoint records alike. An unknown name has no rule here (a newer idml's setting).
    """
    if name not in _rules():
        return None
    flag, rule = _rules()[name]
    return rule.problem(flag, value)


@cache
def _allowed_types(name: str) -> tuple[type, ...]:
    """The types a setting accepts, from its annotation (``int | None`` -> (int, NoneType))."""
    hint = typing.get_type_hints(TrainConfig)[name]
    return tuple(typing.get_origin(k) or k for k in typing.get_args(hint) or (hint,))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < YAML file (--config) < flags given on the command line."""
    values: dict[str, Any] = load_yaml_config(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in _field_names() and v is not None})
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid setting: {exc}") from exc


@dataclass(frozen=True)
class CommandLine:
    """How a training run was started (``prog`` and its arguments): what the run prints to say
    exactly how to continue another run."""

    prog: str
    argv: tuple[str, ...]

    def continuing(self, expname: str) -> str:
        """This command line with ``--expname expname --resume auto`` in place of its own."""
        kept: list[str] = []
        args = iter(self.argv)
        for arg in args:
            if arg in ("--expname", "--resume"):
                next(args, None)
            elif not arg.startswith(("--expname=", "--resume=")):
                kept.append(arg)
        return shlex.join([*self.prog.split(), *kept, "--expname", expname, "--resume", "auto"])


def parse_train_args(argv: list[str], prog: str = "idml train") -> TrainConfig:
    parser = OneLineParser(prog=prog, description="Train an image classifier with IDML.")
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(argv))
