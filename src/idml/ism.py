"""The introspective similarity metric (ISM) of IDML, for classification.

The official code turns plain classifier logits ``s`` into introspective logits

    z = 1 - (1 - s) * exp(-d_u / (lam * d_s))

where ``d_s`` is the squared distance between an image's embedding and each class prototype and
``d_u`` the squared distance between their uncertainty embeddings (prototype uncertainty is zero
for classification, so ``d_u = ||u||^2``).  An image that is uncertain relative to how far it lies
from a class has that class's logit pulled towards 1, which flattens the softmax: the network may
stay unsure about ambiguous images instead of being forced into confidence.

Everything here runs in float32 even under autocast, and ``d_s`` is clamped to a tiny epsilon so
that an embedding lying exactly on a prototype gives a finite value (the official code gives NaN).
``d_u / d_s`` does not change when all embeddings are divided by the same number, so they are first
divided by a power of two near their largest magnitude: exact, and no squared norm can then
overflow or underflow, which keeps values and gradients finite for every finite input.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

#: Smallest semantic distance used in the denominator, in units of the squared largest magnitude
#: of the embeddings (see :func:`common_scale`); official values are unchanged above it.
DISTANCE_EPS = 1e-12
#: exp(-88) is below float32's smallest normal number: larger exponents change nothing but can
#: overflow to inf (and inf * 0 = NaN in the backward pass), so the exponent is capped there.
MAX_EXPONENT = 88.0


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances (N x M) with one matrix product."""
    a_sq = a.pow(2).sum(dim=1, keepdim=True)
    b_sq = b.pow(2).sum(dim=1).unsqueeze(0)
    return torch.addmm(a_sq + b_sq, a, b.t(), alpha=-2.0).clamp_min_(0.0)


#: (integer view, mantissa bits) of each float type: clearing the mantissa bits of a positive
#: normal number leaves the largest power of two not above it.
_FLOAT_BITS = {
    torch.float64: (torch.int64, 52),
    torch.float32: (torch.int32, 23),
    torch.float16: (torch.int16, 10),
    torch.bfloat16: (torch.int16, 7),
}


def power_of_two_floor(x: Tensor) -> Tensor:
    """The largest power of two not above ``x`` (positive, normal), exactly, by clearing its mantissa bits.

    ``torch.frexp`` would give the same, but has no kernel on Apple's MPS; shifts and a
    reinterpretation of the bits run everywhere and involve no rounding at all.
    """
    int_type, mantissa_bits = _FLOAT_BITS[x.dtype]
    bits = x.view(int_type)
    return ((bits >> mantissa_bits) << mantissa_bits).view(x.dtype)


def common_scale(*tensors: Tensor | None) -> Tensor:
    """A power of two within a factor 2 of the largest magnitude in ``tensors`` (no gradient).

    Dividing by it is exact and leaves every entry below 2 in magnitude.
    """
    largest = torch.stack([t.detach().abs().amax() for t in tensors if t is not None and t.numel()]).amax()
    return power_of_two_floor(largest.clamp_min(torch.finfo(largest.dtype).tiny))


def uncertainty_distances(u: Tensor, prototype_uncertainty: Tensor | None) -> Tensor:
    """d_u: B x C, or B x 1 (the same for every class) when the prototype uncertainty is zero."""
    if prototype_uncertainty is None:
        return u.pow(2).sum(dim=1, keepdim=True)
    return squared_distances(u, prototype_uncertainty)


def introspective_logits(
    logits: Tensor,
    embedding: Tensor,
    prototypes: Tensor,
    uncertainty: Tensor,
    prototype_uncertainty: Tensor | None = None,
    lam: float = 5.0,
) -> Tensor:
    """Introspective logits (B x C) from plain logits and the two embeddings.

    Shapes: ``logits`` B x C, ``embedding`` B x D, ``prototypes`` C x D, ``uncertainty`` B x K,
    ``prototype_uncertainty`` C x K or ``None`` (zeros, as in the official classification code).
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        s = logits.float()
        f, p, u = embedding.float(), prototypes.float(), uncertainty.float()
        pu = None if prototype_uncertainty is None else prototype_uncertainty.float()
        scale = common_scale(f, p, u, pu)
        d_s = squared_distances(f / scale, p / scale).clamp_min(DISTANCE_EPS)
        d_u = uncertainty_distances(u / scale, None if pu is None else pu / scale)
        exponent = (d_u / (lam * d_s)).clamp(max=MAX_EXPONENT)
        return 1.0 - (1.0 - s) * torch.exp(-exponent)


def uncertainty_score(uncertainty: Tensor) -> Tensor:
    """Per-image uncertainty score: the squared norm of the uncertainty embedding (``d_u``)."""
    return uncertainty.float().pow(2).sum(dim=1)


class HeadOutput(NamedTuple):
    """What a classifier with the IDML head returns.

    ``logits`` are the plain classifier logits (used for evaluation and prediction);
    ``train_logits`` are what the training loss reads: the introspective logits when ISM is on,
    otherwise the plain logits again; ``uncertainty`` is the B x K uncertainty embedding, or
    ``None`` without ISM.
    """

    logits: Tensor
    train_logits: Tensor
    uncertainty: Tensor | None


class ISMHead(nn.Module):
    """Linear classifier plus the IDML uncertainty branch, on pooled features (B x D).

    ``fc`` is an ordinary ``nn.Linear`` (so pretrained classifier weights load into it) and the
    class prototypes are ``w_c + b_c``: exactly what the official code gets by applying ``fc`` to
    the identity matrix, without building that matrix every step.
    """

    def __init__(
        self, in_features: int, num_classes: int, uncertainty_dim: int | None = 128, lam: float = 5.0
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.uncertainty = nn.Linear(in_features, uncertainty_dim) if uncertainty_dim else None
        self.lam = lam

    @property
    def ism(self) -> bool:
        return self.uncertainty is not None

    def prototypes(self) -> Tensor:
        """Class prototypes (C x D); gradients flow into the classifier's weight and bias."""
        return self.fc.weight + self.fc.bias.unsqueeze(1)

    def forward(self, features: Tensor) -> HeadOutput:
        logits = self.fc(features)
        if self.uncertainty is None:
            return HeadOutput(logits, logits, None)
        u = torch.relu(self.uncertainty(features))
        z = introspective_logits(logits, features, self.prototypes(), u, lam=self.lam)
        return HeadOutput(logits, z, u)


class IntrospectiveClassifier(nn.Module):
    """Any feature extractor (images -> B x D pooled features) followed by an :class:`ISMHead`."""

    def __init__(self, backbone: nn.Module, head: ISMHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> HeadOutput:
        return self.head(torch.flatten(self.backbone(x), 1))
