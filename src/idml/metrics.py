"""Evaluation metrics of a classifier's predictions, as pure functions of NumPy arrays.

Everything here takes the plain logits (N x C), the integer targets (N) and, for IDML models,
the per-image uncertainty score ``||u||^2`` (N), and returns plain floats, so that the numbers can
be checked by hand and reused outside the ``idml eval`` command.

Conventions: errors and ECE are in percent (as the paper reports errors), NLL in nats per image,
AUROC in [0, 1]. An AUROC is ``None`` when it is undefined: every prediction right, or every one
wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import log_softmax
from sklearn.metrics import roc_auc_score

from idml.errors import IdmlError

#: Number of equal-width confidence bins of the expected calibration error (Guo et al., 2017).
ECE_BINS = 15


def check_finite_outputs(logits: np.ndarray, uncertainty: np.ndarray | None, checkpoint: str) -> None:
    """Refuse NaN or infinite outputs (a diverged model) with one line, before any metric or
    probability is computed from them (scikit-learn would raise, softmax would return NaN)."""
    bad = ~np.isfinite(logits).all(axis=1) if logits.ndim == 2 else ~np.isfinite(logits)
    if uncertainty is not None:
        bad = bad | ~np.isfinite(uncertainty)
    if bad.any():
        raise IdmlError(f"{checkpoint} gives NaN or infinite outputs for {int(bad.sum())} of {len(bad)} images: "
                        "its weights diverged; use a checkpoint from before the divergence")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits)."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64), axis=1))


def topk_error(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Percentage of images whose target is not among the k highest logits (k capped at C)."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    hits = (top == targets[:, None]).any(axis=1)
    return 100.0 * (1.0 - hits.mean())


def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of the softmax of ``logits`` (nats per image)."""
    log_probs = log_softmax(np.asarray(logits, dtype=np.float64), axis=1)
    return float(-log_probs[np.arange(len(targets)), targets].mean())


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram: bin m covers confidences (m/B, (m+1)/B]."""

    edges: np.ndarray  # B + 1 bin edges from 0 to 1
    counts: np.ndarray  # images per bin
    accuracy: np.ndarray  # fraction correct per bin (NaN where empty)
    confidence: np.ndarray  # mean confidence per bin (NaN where empty)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Group predictions into ``n_bins`` equal-width confidence bins (right edges inclusive)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin m holds (edges[m], edges[m+1]]; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins) / counts
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / counts
    return ReliabilityBins(edges, counts, accuracy, mean_conf)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE in percent: sum over bins of (share of images) * |accuracy - mean confidence|."""
    bins = reliability_bins(confidence, correct, n_bins)
    filled = bins.counts > 0
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return 100.0 * float((bins.counts[filled] / bins.counts.sum() * gaps).sum())


def misclassification_auroc(score: np.ndarray, wrong: np.ndarray) -> float | None:
    """How well a higher ``score`` flags wrong predictions (scikit-learn's ROC AUC); None if undefined."""
    if wrong.all() or not wrong.any():
        return None
    return float(roc_auc_score(wrong.astype(int), score))


@dataclass(frozen=True)
class EvalReport:
    """The numbers ``idml eval`` reports (see the module docstring for the units)."""

    images: int
    top1_err: float
    top5_err: float
    nll: float
    ece: float
    auroc_uncertainty: float | None
    auroc_msp: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_predictions(logits: np.ndarray, targets: np.ndarray, uncertainty: np.ndarray | None) -> EvalReport:
    """All metrics of one evaluation. ``uncertainty`` is the per-image score, or None without ISM.

    The maximum-softmax-probability baseline scores an image's chance of being wrong as
    ``1 - max_c p_c``.
    """
    probs = softmax(logits)
    confidence = probs.max(axis=1)
    wrong = probs.argmax(axis=1) != targets
    return EvalReport(
        images=len(targets),
        top1_err=topk_error(logits, targets, 1),
        top5_err=topk_error(logits, targets, 5),
        nll=negative_log_likelihood(logits, targets),
        ece=expected_calibration_error(confidence, ~wrong),
        auroc_uncertainty=None if uncertainty is None else misclassification_auroc(uncertainty, wrong),
        auroc_msp=misclassification_auroc(1.0 - confidence, wrong),
    )
