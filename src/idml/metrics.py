"""Evaluation metrics of a classifier's predictions, as pure functions of NumPy arrays.

Everything here takes the plain logits (N x C), the integer targets (N) and per-image
uncertainty scores (N; larger = less sure), and returns plain floats, so that the numbers can be
checked by hand and reused outside the ``idml eval`` command. What exists in scikit-learn or SciPy
(ROC and precision-recall curves, the Brier score, entropy, Spearman's rho, the 1-D search of the
temperature) is taken from there; what does not (ECE, the risk-coverage curve) is written out and
tested against brute-force versions.

Conventions: errors and ECE are in percent (as the paper reports errors), NLL in nats per image,
AUROC/AUPR/FPR in [0, 1]. A detection metric is ``None`` when it is undefined: every prediction
right, or every one wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp
from scipy.stats import entropy, spearmanr
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

from idml.errors import IdmlError
from idml.scores import LOGIT_SCORE_NAMES

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


# -- uncertainty scores: larger = more uncertain ---------------------------------------------------

@dataclass(frozen=True)
class ScoreOps:
    """The array operations the logit scores are written with, each over the classes (axis 1) of
    an N x C array.

    :data:`NUMPY_OPS` computes them here, for ``idml eval`` and ``idml predict``; the exported
    graph passes torch's (:mod:`idml.export.graph`), so that its ``uncertainty`` output is the
    definition below and not a second copy of it.
    """

    softmax: Callable[[Any], Any]
    amax: Callable[[Any], Any]
    logsumexp: Callable[[Any], Any]
    entropy: Callable[[Any], Any]  # of rows of probabilities, nats


NUMPY_OPS = ScoreOps(softmax=softmax, amax=lambda x: x.max(axis=1), logsumexp=lambda x: logsumexp(x, axis=1),
                     entropy=lambda p: entropy(p, axis=1))


def _msp(logits: Any, ops: ScoreOps) -> Any:
    return 1.0 - ops.amax(ops.softmax(logits))


def _entropy(logits: Any, ops: ScoreOps) -> Any:
    return ops.entropy(ops.softmax(logits))


def _max_logit(logits: Any, ops: ScoreOps) -> Any:
    return -ops.amax(logits)


def _energy(logits: Any, ops: ScoreOps) -> Any:
    return -ops.logsumexp(logits)


#: :data:`idml.scores.LOGIT_SCORE_NAMES` -> the score, a function of the logits and the
#: :class:`ScoreOps` to compute with.
LOGIT_SCORES: dict[str, Callable[[Any, ScoreOps], Any]] = dict(
    zip(LOGIT_SCORE_NAMES, (_msp, _entropy, _max_logit, _energy), strict=True))


def uncertainty_scores(
    logits: np.ndarray, *, feature_sq: np.ndarray, introspective: np.ndarray | None = None,
    u_sq: np.ndarray | None = None, ism_exponent: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every score of :data:`idml.scores.SCORES` that the model's outputs allow, one value per image.

    ``logits`` are the plain logits, ``feature_sq`` the squared norms ||f||^2 of the pooled features;
    the ISM quantities (introspective logits, ||u||^2, the exponent at the predicted class) are None
    for a model trained without ISM.
    """
    logits = np.asarray(logits, dtype=np.float64)
    scores = {name: score(logits, NUMPY_OPS) for name, score in LOGIT_SCORES.items()}
    scores["neg_f_norm"] = -np.sqrt(feature_sq)
    if u_sq is not None and introspective is not None and ism_exponent is not None:
        scores |= {
            "u_norm2": u_sq,
            "u_over_f": u_sq / np.maximum(feature_sq, np.finfo(np.float64).tiny),
            "ism_exponent": ism_exponent,
            "ism_msp": 1.0 - softmax(introspective).max(axis=1),
        }
    return scores


# -- detection: mistakes or out-of-distribution images as the positives ------------------------------

def detection_metrics(score: np.ndarray, positive: np.ndarray) -> dict[str, float | None]:
    """AUROC, AUPR (average precision, positives = ``positive``) and FPR at 95% TPR of ``score``.

    From scikit-learn (roc_auc_score, average_precision_score, roc_curve). All None when only one
    class is present (every prediction right, say).
    """
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return {"auroc": None, "aupr": None, "fpr95": None}
    fpr, tpr, _ = roc_curve(positive.astype(int), score, drop_intermediate=False)
    return {
        "auroc": float(roc_auc_score(positive.astype(int), score)),
        "aupr": float(average_precision_score(positive.astype(int), score)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


def risk_coverage(score: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve of selective prediction: keep the k least uncertain images
    (k = 1..n); coverage k/n, risk = share of errors among them.

    Images with equal scores are kept in random order: the risk is its expectation over those
    orders, so a score with ties (a saturated softmax) is neither flattered nor penalised.
    """
    score, wrong = np.asarray(score, dtype=np.float64), np.asarray(wrong, dtype=np.float64)
    n = len(score)
    order = np.argsort(score, kind="stable")
    _, first, counts = np.unique(score[order], return_index=True, return_counts=True)
    group_errors = np.add.reduceat(wrong[order], first)
    errors_before = np.cumsum(group_errors) - group_errors
    group = np.repeat(np.arange(len(first)), counts)
    rank_in_group = np.arange(n) - first[group] + 1
    expected_errors = errors_before[group] + rank_in_group * group_errors[group] / counts[group]
    kept = np.arange(1, n + 1)
    return kept / n, expected_errors / kept


def aurc(score: np.ndarray, wrong: np.ndarray) -> float:
    """Area under the risk-coverage curve (mean risk over k = 1..n; lower is better)."""
    return float(risk_coverage(score, wrong)[1].mean())


# -- calibration -------------------------------------------------------------------------------------

def brier_score(probs: np.ndarray, targets: np.ndarray) -> float:
    """Multi-class Brier score, mean over images of sum_c (p_c - [c = y])^2 (scikit-learn)."""
    return float(brier_score_loss(targets, probs, labels=np.arange(probs.shape[1])))


def calibration(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """NLL (nats per image), Brier score and ECE (percent) of the softmax of ``logits / temperature``."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    probs = softmax(scaled)
    correct = probs.argmax(axis=1) == targets
    return {
        "nll": negative_log_likelihood(scaled, targets),
        "brier": brier_score(probs, targets),
        "ece": expected_calibration_error(probs.max(axis=1), correct),
    }


#: The range a fitted temperature may take. An optimum at either end means the NLL has no interior
#: minimum, e.g. a validation split without a single mistake (sharper is then always "better", and
#: a near-zero temperature would make every test mistake cost a huge NLL): no temperature is fitted.
TEMPERATURE_BOUNDS = (1e-2, 1e2)


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted softmax temperature, or why there is none (``reason``, one phrase for messages)."""

    value: float | None
    reason: str | None = None

    def describe(self) -> str:
        return f"{self.value:.4f}" if self.value is not None else f"none ({self.reason})"


#: before any fit (a run's first epoch, or a resumed run that has not fitted one itself)
NOT_FITTED = TemperatureFit(None, "not fitted yet")


def temperature_fit(logits: np.ndarray, targets: np.ndarray) -> TemperatureFit:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) (Guo et al., 2017), or
    no value where the minimum lies at an end of :data:`TEMPERATURE_BOUNDS` (not identifiable),
    with the reason: no mistakes at all (a sharper softmax always lowers the NLL), or mistakes but
    no interior minimum (e.g. predictions no better than a uniform guess: T wants to grow without end).

    A bounded one-dimensional search over log T (scipy's minimize_scalar); the NLL is convex in 1/T.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    if len(targets) == 0:
        raise ValueError("no images to fit a temperature on")

    def nll(log_t: float) -> float:
        return negative_log_likelihood(logits / np.exp(log_t), targets)

    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    if min(nll(low), nll(high)) > result.fun + 1e-12:
        return TemperatureFit(float(np.exp(result.x)))
    if bool((logits.argmax(axis=1) == targets).all()):
        return TemperatureFit(None, "no validation mistakes: a sharper softmax always lowers their NLL")
    end = TEMPERATURE_BOUNDS[0] if nll(low) <= nll(high) else TEMPERATURE_BOUNDS[1]
    return TemperatureFit(None, f"no interior minimum: the validation NLL is lowest at the end of the range "
                                f"searched, T = {end:g}")


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float | None:
    """The fitted temperature of :func:`temperature_fit`, or None where there is none."""
    return temperature_fit(logits, targets).value


# -- ambiguity -----------------------------------------------------------------------------------------

def spearman(score: np.ndarray, truth: np.ndarray) -> float | None:
    """Spearman's rank correlation (scipy), None where undefined (a constant score)."""
    if np.ptp(score) == 0 or np.ptp(truth) == 0:
        return None
    return float(spearmanr(score, truth).statistic)
