"""The network every format exports, and the one check that an exported file computes what idml computes.

:class:`DeployedClassifier` wraps a trained model for deployment: it takes the images as users
have them (uint8 RGB, N x 3 x H x W), normalises them with the checkpoint's mean and std
(:class:`idml.data.augment.Normalize`, the training code's), runs the backbone and the classifier in
float32 and returns the plain ``logits``, the ``probabilities`` (softmax of the logits divided by the
temperature) and the ``uncertainty`` score (:data:`idml.metrics.LOGIT_SCORES`, evaluated with
torch's operations). The last two are computed in float64 from the float32 logits, exactly as
``idml eval`` and ``idml predict`` compute them with NumPy: a confident prediction's ``1 - max
softmax`` of 1e-9 would be lost to rounding in float32 (its resolution near 1 is 6e-8).

The ISM head's uncertainty branch is left out: predictions use the plain logits, as the official
code evaluates, and the default score needs nothing else.

:func:`check_outputs` is the comparison every export runs before it writes a file, and that the
tests state: see :func:`tolerances`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from idml.data.augment import Normalize
from idml.errors import IdmlError
from idml.export.metadata import ExportMetadata
from idml.inference import TrainedModel, predict_images
from idml.metrics import LOGIT_SCORES, NUMPY_OPS, ScoreOps, softmax

#: The score operations in torch, over the classes (dim 1); see :class:`idml.metrics.ScoreOps`.
TORCH_OPS = ScoreOps(softmax=lambda x: torch.softmax(x, dim=1), amax=lambda x: x.amax(dim=1),
                     logsumexp=lambda x: torch.logsumexp(x, dim=1),
                     entropy=lambda p: torch.special.entr(p).sum(dim=1))

#: (relative, absolute) tolerance of an exported model's outputs against idml's own on the same
#: images: |exported - idml| <= relative * |idml| + absolute, elementwise. The logits differ by the
#: rounding of float32 kernels (other summation orders), which grows with their size. A probability
#: (or 1 - max p), computed in float64 from them, moves *relatively* by the absolute change of the
#: logits: 1e-4 relative holds where the logits stay below about 100 in size; the absolute 1e-6
#: covers probabilities below 1 % of networks with larger logits (measured: 3e-4 relative on
#: probabilities of 1e-15 of a ResNet-18 whose logits reach 100). Scores in logit units
#: (max_logit, energy) take the logits' tolerance.
LOGIT_TOLERANCE = (1e-4, 1e-4)
PROBABILITY_TOLERANCE = (1e-4, 1e-6)
SCORE_TOLERANCES: dict[str, tuple[float, float]] = {
    "msp": PROBABILITY_TOLERANCE, "entropy": PROBABILITY_TOLERANCE,
    "max_logit": LOGIT_TOLERANCE, "energy": LOGIT_TOLERANCE,
}


def tolerances(score: str) -> dict[str, tuple[float, float]]:
    """Output name -> (relative, absolute) tolerance, for a model whose uncertainty is ``score``."""
    return {"logits": LOGIT_TOLERANCE, "probabilities": PROBABILITY_TOLERANCE, "uncertainty": SCORE_TOLERANCES[score]}


#: Images of the probe batch every export is checked on (:func:`probe_images`).
PROBE_IMAGES = 4


class DeployedClassifier(nn.Module):
    """uint8 images in; (logits, probabilities, uncertainty) out. See the module docstring."""

    def __init__(self, trained: TrainedModel, metadata: ExportMetadata) -> None:
        super().__init__()
        self.backbone = trained.model.backbone
        self.classifier = trained.model.head.fc
        self.normalize = Normalize(metadata.mean, metadata.std, torch.device("cpu"))  # constants in the graph
        self.divisor = metadata.divisor
        self.score = LOGIT_SCORES[metadata.score]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = torch.flatten(self.backbone(self.normalize(images)), 1)
        logits = self.classifier(features)
        wide = logits.double()
        return logits, torch.softmax(wide / self.divisor, dim=1), self.score(wide, TORCH_OPS)


def deployable(trained: TrainedModel, metadata: ExportMetadata) -> DeployedClassifier:
    """The trained model as it is exported: float32, NCHW (whatever memory format and precision it
    trained in), in eval mode, on the CPU."""
    model = trained.model.to("cpu", torch.float32).to(memory_format=torch.contiguous_format)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise IdmlError(f"cannot export in float32: {name} is {tensor.dtype}")
    return DeployedClassifier(trained, metadata).eval()


def probe_images(input_size: int, n: int = PROBE_IMAGES) -> Tensor:
    """The first ``n`` of a fixed batch of uint8 images to compare outputs on: random pixels (seeded),
    a smooth colour gradient, an all-black and an all-white image. The extremes matter: a network
    whose code branches on its input's values takes different branches on them, and tracing would
    have recorded one."""
    noise = torch.randint(0, 256, (1, 3, input_size, input_size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    ramp = torch.linspace(0, 255, input_size)
    gradient = torch.stack([ramp.view(1, -1) * (c + 1) / 3 + ramp.view(-1, 1) * (3 - c) / 3 for c in range(3)])
    gradient = gradient.clamp(0, 255).to(torch.uint8).unsqueeze(0)
    black = torch.zeros_like(noise)
    return torch.cat([noise, gradient, black, torch.full_like(noise, 255)])[:n]


def reference_outputs(trained: TrainedModel, images: Tensor, metadata: ExportMetadata) -> dict[str, np.ndarray]:
    """What idml computes for ``images`` (uint8): the network through :func:`idml.inference.run_model`
    as ``idml eval`` runs it, then the probabilities and the score as ``idml predict`` does."""
    outputs = predict_images(trained, images, len(images))
    return {
        "logits": outputs.logits,
        "probabilities": softmax(outputs.logits / metadata.divisor),
        "uncertainty": LOGIT_SCORES[metadata.score](outputs.logits, NUMPY_OPS),
    }


def largest_differences(reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                        score: str) -> dict[str, float]:
    """Per output, the largest |got - reference| in units of its tolerance (<= 1 passes)."""
    ratios = {}
    for name, (relative, absolute) in tolerances(score).items():
        want = np.asarray(reference[name], dtype=np.float64)
        have = np.asarray(got[name], dtype=np.float64)
        if have.shape != want.shape:
            ratios[name] = float("inf")
            continue
        allowed = relative * np.abs(want) + absolute
        with np.errstate(invalid="ignore"):
            ratio = np.abs(have - want) / allowed
        ratios[name] = float(np.nan_to_num(ratio, nan=np.inf).max(initial=0.0))
    return ratios


def check_outputs(reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], score: str,
                  what: str) -> dict[str, float]:
    """Refuse (one line) an exported model whose outputs differ from idml's beyond :func:`tolerances`."""
    ratios = largest_differences(reference, got, score)
    worst = max(ratios, key=ratios.__getitem__)
    if ratios[worst] > 1.0:
        relative, absolute = tolerances(score)[worst]
        raise IdmlError(f"{what} computes different {worst} from the checkpoint (largest difference "
                        f"{ratios[worst]:.3g} times the tolerance {relative:g} relative + {absolute:g}); "
                        "nothing was written")
    return ratios
