"""A trained model rebuilt from its checkpoint, with what inference needs to know about its data.

``idml eval`` and ``idml predict`` both start here: the checkpoint's ``model`` settings rebuild
the network, ``state_dict`` fills it (or, with ``ema``, the moving average of a ``--model_ema``
run), and ``class_names``, ``mean``, ``std`` and ``input_size``
say how to read images and name the predictions. The network runs with the device settings its
training used (autocast dtype, memory format, cuDNN autotuning; see :mod:`idml.device.runtime`),
unless ``--amp`` says otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from idml.checkpoint.io import load_checkpoint
from idml.checkpoint.schema import Checkpoint, check_weights
from idml.data.augment import Normalize
from idml.data.catalog import dataset_info
from idml.data.image_files import Preparer, UnusableImage, image_preparer, read_image, unusable
from idml.device.runtime import Runtime, build_runtime
from idml.errors import ConfigError, IdmlError, one_line
from idml.ism import IntrospectiveClassifier, uncertainty_score
from idml.metrics import check_finite_outputs, softmax, uncertainty_scores
from idml.models.layout import channels_last_under_bf16
from idml.models.registry import build_from_spec
from idml.models.spec import ModelSpec
from idml.scores import DEFAULT_SCORE, SCORES


@dataclass
class TrainedModel:
    """A model in eval mode on its device, with its training data's facts."""

    model: IntrospectiveClassifier
    dataset: str
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    device: torch.device
    runtime: Runtime | None = None  # autocast and memory format (None: float32, NCHW)
    #: the settings of the run that wrote the checkpoint (its --data_dir, --image_key, --classes,
    #: --val_split, --seed: which images it saw)
    config: dict = field(default_factory=dict)
    #: which weights scored the checkpoint's best error: "model" or "ema"
    best_weights: str = "model"
    #: the softmax temperature fitted on the validation split (--val_split), or None
    temperature: float | None = None
    #: the settings the network was built from
    spec: ModelSpec | None = None
    #: what each split of its training data held (:mod:`idml.data.identity`), or None
    data_identity: dict | None = None

    @property
    def has_ism(self) -> bool:
        return self.model.head.ism


@dataclass
class Outputs:
    """What inference keeps of many images, on the CPU, as float64 NumPy arrays (N or N x C).

    ``uncertainty`` is ||u||^2, ``feature_sq`` the squared norm of the pooled features ||f||^2,
    ``introspective`` the introspective logits and ``ism_exponent`` ||u||^2 / (lambda ||f - p_y||^2)
    at the predicted class y; the ISM quantities are None for a model trained without ISM.
    """

    logits: np.ndarray
    uncertainty: np.ndarray | None
    feature_sq: np.ndarray | None = None
    introspective: np.ndarray | None = None
    ism_exponent: np.ndarray | None = None

    def scores(self) -> dict[str, np.ndarray]:
        """Every uncertainty score of :data:`idml.scores.SCORES` these outputs allow."""
        feature_sq = self.feature_sq if self.feature_sq is not None else np.full(len(self.logits), np.nan)
        return uncertainty_scores(self.logits, feature_sq=feature_sq, introspective=self.introspective,
                                  u_sq=self.uncertainty, ism_exponent=self.ism_exponent)


#: What eval and predict read besides ``model`` and ``state_dict``.
INFERENCE_FIELDS = ("mean", "std", "input_size")


def _expected_weights(spec: ModelSpec, path: Path) -> dict[str, Tensor] | None:
    """The state_dict the settings build, on the meta device: shapes and dtypes, no memory.

    The settings (depth, alpha, widths) decide how much a real build allocates, so they are
    compared with the saved weights before anything is allocated. ``None`` when a network from
    another library cannot be built on the meta device: its size is then fixed by its name and
    the head's widths, which :func:`idml.checkpoint.io.load_checkpoint` has matched to the weights.
    """
    try:
        with torch.device("meta"):
            return build_from_spec(spec).state_dict()
    except IdmlError as exc:  # e.g. a depth impossible for the network: name the file it came from
        raise IdmlError(f"{path}: its model settings are unusable ({exc})") from exc
    except Exception as exc:
        if spec.external:
            return None
        raise IdmlError(f"{path}: its model settings do not build a network ({one_line(exc)[:200]})") from exc


def inference_runtime(device: torch.device, amp: str | None, settings: dict, spec: ModelSpec) -> Runtime:
    """The training run's device settings (``settings``: the checkpoint's config) on ``device``.

    ``amp`` overrides the saved precision; a saved fp16 on a device without it becomes auto. Runs
    record the memory format they trained in; for older checkpoints, which do not, it follows
    training's default rule for ``spec`` on this device.
    """
    saved = settings.get("amp", "off")
    if amp is None:
        amp = "auto" if saved == "fp16" and device.type not in ("cuda", "mps") else saved
    return build_runtime(device.type, amp, settings.get("channels_last"), settings.get("deterministic") is True,
                         network_prefers_channels_last=functools.partial(channels_last_under_bf16, spec))


def _weights(ckpt: Checkpoint, path: Path, ema: bool) -> dict[str, Tensor]:
    if not ema:
        return ckpt.state_dict
    if ckpt.ema is None:
        raise IdmlError(f"{path} holds no EMA of the weights (it was trained without --model_ema); drop --ema")
    return ckpt.ema["state_dict"]


def load_trained_model(path: str | Path, device: torch.device, amp: str | None = None,
                       ema: bool = False) -> TrainedModel:
    """Rebuild and load the network saved in ``path`` (an ``idml train`` checkpoint), to run with the
    device settings its training used (``amp`` overrides the precision); ``ema``: its moving
    average of the weights (``--model_ema``) instead of the weights themselves.

    :func:`load_checkpoint` has checked every field; what remains is consistency between fields
    (settings vs weights, input size vs dataset), checked here before the network is allocated,
    so any checkpoint gives either a model or one line.
    """
    path = Path(path)
    return trained_from_checkpoint(load_checkpoint(path), path, device, amp, ema)


def trained_from_checkpoint(ckpt: Checkpoint, path: Path, device: torch.device, amp: str | None = None,
                            ema: bool = False) -> TrainedModel:
    """:func:`load_trained_model` of a checkpoint already read and checked: a file's, or the one
    :mod:`idml.export.safetensors` assembles from an exported weights file and its settings
    (``path`` names the file in messages)."""
    ckpt.require(INFERENCE_FIELDS, path)
    spec = ckpt.spec
    info = dataset_info(spec.dataset, spec.input_size)
    if ckpt.input_size != info.input_size:
        raise IdmlError(f"{path}: input_size {ckpt.input_size} does not match {spec.dataset}'s "
                        f"{info.input_size}-pixel images")
    weights = _weights(ckpt, path, ema)
    expected = _expected_weights(spec, path)
    if expected is not None:
        check_weights(expected, weights, path)
    model = build_from_spec(spec)
    if expected is None:
        check_weights(model.state_dict(), weights, path)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise IdmlError(f"{path}: weights do not fit the saved model settings ({one_line(exc)[:200]})") from exc
    runtime = inference_runtime(device, amp, ckpt.config, spec)
    runtime.place(model).eval()
    names = list(ckpt.class_names or [str(i) for i in range(model.head.fc.out_features)])
    return TrainedModel(model, spec.dataset, names, tuple(ckpt.mean), tuple(ckpt.std), ckpt.input_size,
                        runtime.device, runtime, ckpt.config, ckpt.best_weights, ckpt.temperature, spec, ckpt.data)


def _ism_exponent(head, features: Tensor, logits: Tensor, u_sq: Tensor) -> Tensor:
    """||u||^2 / (lambda ||f - p_y||^2) at the predicted class y, in float64 (no overflow)."""
    prototypes = head.prototypes().double()[logits.argmax(dim=1)]
    semantic = (features.double() - prototypes).pow(2).sum(dim=1)
    return u_sq.double() / (head.lam * semantic.clamp_min(torch.finfo(torch.float64).tiny))


@torch.no_grad()
def run_model(trained: TrainedModel, batches: Iterable[Tensor]) -> Outputs:
    """Plain logits, ||u||^2 and what the uncertainty scores need, for every image in ``batches``
    (normalised float tensors).

    The backbone and the head are called one after the other (what the model's forward does) so
    that the pooled features are at hand too.
    """
    model = trained.model
    rt = trained.runtime or Runtime(trained.device, None, False)
    parts: dict[str, list[Tensor]] = {"logits": [], "uncertainty": [], "feature_sq": [], "introspective": [],
                                      "ism_exponent": []}
    for images in batches:
        images = rt.formatted(rt.to_device(images))
        with rt.autocast():
            features = torch.flatten(model.backbone(images), 1).float()
            out = model.head(features)
        parts["logits"].append(out.logits.float())
        parts["feature_sq"].append(features.pow(2).sum(dim=1))
        if out.uncertainty is not None:
            u_sq = uncertainty_score(out.uncertainty)
            parts["uncertainty"].append(u_sq)
            parts["introspective"].append(out.train_logits.float())
            parts["ism_exponent"].append(_ism_exponent(model.head, features, out.logits, u_sq))
    arrays = {name: torch.cat(chunks).cpu().numpy().astype(np.float64) if chunks else None
              for name, chunks in parts.items()}
    return Outputs(**arrays)


def predict_batches(trained: TrainedModel, batches: Iterable[Tensor]) -> Outputs:
    """Outputs of batches of images (pixel units, uint8 or float), normalised as the model's data;
    the batches may be made one at a time (``idml eval --blends``), so memory stays one batch's."""
    normalize = Normalize(trained.mean, trained.std, trained.device)
    return run_model(trained, (normalize(chunk.to(trained.device)) for chunk in batches))


def predict_images(trained: TrainedModel, images: Tensor, batch_size: int) -> Outputs:
    """Outputs of in-memory images (pixel units, uint8 or float), ``batch_size`` at a time."""
    return predict_batches(trained, images.split(batch_size))


# -- classifying image files ----------------------------------------------------------------------
@dataclass
class Prediction:
    """One image's top-k classes, their temperature-scaled probabilities, and its uncertainty score."""

    file: str
    uncertainty: float | None
    classes: list[str]
    probabilities: list[float]


@dataclass
class Predictor:
    """What ``idml predict`` needs of a model, whatever file it came from (a checkpoint, or an
    export: :mod:`idml.export.predictor`): how to prepare an image, the outputs of a batch of
    prepared images, and how to name and calibrate them."""

    #: the file, for messages
    where: str
    class_names: list[str]
    temperature: float | None
    #: uint8 images N x 3 x H x W -> what :func:`run_model` returns for them
    outputs: Callable[[Tensor], Outputs]
    #: decoded image -> uint8 3 x H x W, as the model's validation images were prepared
    prepare: Preparer
    #: the scores of :data:`idml.scores.SCORES` these outputs give, and why the others are missing
    scores: tuple[str, ...]
    missing_scores: str = ""


def checkpoint_predictor(trained: TrainedModel, where: str) -> Predictor:
    """A trained network (a checkpoint's, or a rebuilt export's) as a :class:`Predictor`."""
    scores = tuple(name for name, (_, ism) in SCORES.items() if trained.has_ism or not ism)
    return Predictor(where, trained.class_names, trained.temperature,
                     lambda images: predict_images(trained, images, len(images)),
                     image_preparer(trained.dataset, trained.input_size), scores,
                     "needs a model trained with the ISM head (this one was trained with --no-ism)")


def check_score(model: Predictor, score: str) -> None:
    """Refuse an uncertainty score the model's outputs do not give (one that needs the ISM head for
    a model trained without it, say)."""
    if score not in model.scores:
        raise ConfigError(f"--score {score} {model.missing_scores}; pick one of {', '.join(model.scores)}")


def _prepared(model: Predictor, path: Path) -> Tensor:
    """The file ``path`` decoded and prepared for ``model``; a refusal of either names the file."""
    image = read_image(path)
    try:
        return model.prepare(image)
    except UnusableImage as exc:
        raise unusable(str(path), exc) from exc


def predict_files(model: Predictor, files: list[Path], topk: int, batch_size: int,
                  score: str = DEFAULT_SCORE) -> Iterator[Prediction]:
    """Classify ``files`` ``batch_size`` at a time, each prepared as the model's validation images.

    Probabilities are the softmax of the plain logits divided by the model's temperature (fitted
    on the validation split of a ``--val_split`` run; 1 without one); ``score`` is computed as
    ``idml eval`` measures it. Files are decoded one batch at a time, so memory stays that of one
    batch however many files there are.
    """
    topk = min(topk, len(model.class_names))
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        outputs = model.outputs(torch.stack([_prepared(model, path) for path in chunk]))
        check_finite_outputs(outputs.logits, outputs.uncertainty, model.where)
        probs = softmax(outputs.logits / (model.temperature or 1.0))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :topk]
        scores = outputs.scores()[score]
        for i, path in enumerate(chunk):
            yield Prediction(str(path), float(scores[i]), [model.class_names[c] for c in order[i]],
                             [float(q) for q in probs[i, order[i]]])
