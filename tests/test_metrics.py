"""The evaluation metrics against cases computed by hand.

The uncertainty metrics of idml.metrics against independent computations: scikit-learn called
directly, brute-force versions, and synthetic data with a known answer.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score

from idml.ism import IntrospectiveClassifier, ISMHead
from idml.metrics import (
    NOT_FITTED,
    aurc,
    brier_score,
    calibration,
    detection_metrics,
    expected_calibration_error,
    fit_temperature,
    misclassification_auroc,
    negative_log_likelihood,
    reliability_bins,
    risk_coverage,
    softmax,
    spearman,
    temperature_fit,
    topk_error,
    uncertainty_scores,
)

# Four images, three classes. Predicted class / confidence / target / outcome:
#   0: 0.70 / 0 correct     1: 0.62 for class 1, target 2 (p = 0.28, 2nd) wrong
#   2: 0.50 for class 0, target 2 (p = 0.20, 3rd) wrong     3: 0.90 / 2 correct
PROBS = np.array([[0.70, 0.20, 0.10], [0.10, 0.62, 0.28], [0.50, 0.30, 0.20], [0.05, 0.05, 0.90]])
LOGITS = np.log(PROBS) + 3.0  # any per-row shift gives the same softmax
TARGETS = np.array([0, 2, 2, 2])
UNCERTAINTY = np.array([0.4, 2.0, 0.3, 0.1])


def test_topk_error_by_hand():
    assert topk_error(LOGITS, TARGETS, 1) == pytest.approx(50.0)
    assert topk_error(LOGITS, TARGETS, 2) == pytest.approx(25.0)  # only image 2 misses its top 2
    assert topk_error(LOGITS, TARGETS, 5) == pytest.approx(0.0)  # k capped at the 3 classes


def test_nll_by_hand():
    expected = -(math.log(0.70) + math.log(0.28) + math.log(0.20) + math.log(0.90)) / 4
    assert negative_log_likelihood(LOGITS, TARGETS) == pytest.approx(expected)  # 0.836109...


def test_ece_one_image_per_bin():
    # 0.70, 0.62, 0.50, 0.90 fall in four different bins of width 1/15: ECE = mean |acc - conf|
    confidence = PROBS.max(axis=1)
    correct = np.array([True, False, False, True])
    assert expected_calibration_error(confidence, correct) == pytest.approx(100 * (0.30 + 0.62 + 0.50 + 0.10) / 4)


def test_ece_shared_bin():
    # 0.95 (right) and 0.97 (wrong) share the last bin: accuracy 0.5, confidence 0.96, weight 2/3;
    # 0.30 (right) alone in bin (4/15, 5/15]: gap 0.7, weight 1/3.
    ece = expected_calibration_error(np.array([0.95, 0.97, 0.30]), np.array([True, False, True]))
    assert ece == pytest.approx(100 * (2 / 3 * 0.46 + 1 / 3 * 0.70))


def test_reliability_bins_right_edges_inclusive():
    edges = np.linspace(0, 1, 16)
    bins = reliability_bins(np.array([edges[1], edges[1] + 1e-9, 1.0, 0.0]), np.array([1, 0, 1, 1], dtype=bool))
    assert bins.counts[0] == 2 and bins.counts[1] == 1 and bins.counts[14] == 1 and bins.counts.sum() == 4
    assert bins.accuracy[0] == 1.0 and bins.accuracy[1] == 0.0 and np.isnan(bins.accuracy[5])


def test_auroc_by_hand():
    wrong = np.array([False, True, True, False])
    # wrong scores {2.0, 0.3} vs right {0.4, 0.1}: 3 of the 4 pairs ordered correctly
    assert misclassification_auroc(UNCERTAINTY, wrong) == pytest.approx(0.75)
    assert misclassification_auroc(UNCERTAINTY, np.zeros(4, dtype=bool)) is None
    assert misclassification_auroc(UNCERTAINTY, np.ones(4, dtype=bool)) is None


RNG = np.random.default_rng(0)


def brute_fpr95(score, positive):
    """The lowest false-positive rate over every threshold that flags >= 95% of the positives."""
    best = 1.0
    for t in np.r_[np.unique(score), np.inf]:
        flagged = score >= t
        if flagged[positive].mean() >= 0.95:
            best = min(best, flagged[~positive].mean())
    return best


def brute_aurc(score, wrong):
    """Mean over every ordering of tied scores of the mean risk of the k surest images, k = 1..n."""
    groups = [np.flatnonzero(score == v) for v in np.unique(score)]
    totals = []
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = np.concatenate(orders)
        totals.append(np.mean(np.cumsum(wrong[order]) / np.arange(1, len(order) + 1)))
    return float(np.mean(totals))


def test_detection_metrics_agree_with_sklearn_and_brute_force():
    for _ in range(5):
        score = RNG.normal(size=60).round(1)  # rounding makes ties
        positive = RNG.random(60) < 0.3 + 0.3 * (score > 0)
        m = detection_metrics(score, positive)
        assert m["auroc"] == pytest.approx(roc_auc_score(positive, score))
        assert m["aupr"] == pytest.approx(average_precision_score(positive, score))
        assert m["fpr95"] == pytest.approx(brute_fpr95(score, positive))
    assert detection_metrics(np.arange(4.0), np.zeros(4, bool)) == {"auroc": None, "aupr": None, "fpr95": None}


def test_detection_by_hand():
    # positives {0.9, 0.8, 0.3}, negatives {0.5, 0.1}: 5 of 6 pairs ordered; all positives flagged at t = 0.3
    m = detection_metrics(np.array([0.9, 0.8, 0.3, 0.5, 0.1]), np.array([1, 1, 1, 0, 0], bool))
    assert m["auroc"] == pytest.approx(5 / 6) and m["fpr95"] == pytest.approx(0.5)


def test_aurc_against_brute_force_with_ties():
    for _ in range(6):
        score = RNG.integers(0, 3, size=7).astype(float)
        wrong = RNG.random(7) < 0.4
        assert aurc(score, wrong) == pytest.approx(brute_aurc(score, wrong))


def test_risk_coverage_by_hand():
    coverage, risk = risk_coverage(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1], bool))
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk == pytest.approx([0, 1 / 2, 1 / 3, 2 / 4])
    expected = (0 + 0.5 + 1 / 3 + 0.5) / 4
    assert aurc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1], bool)) == pytest.approx(expected)


def test_brier_and_calibration_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    targets = np.array([0, 2])
    expected = ((0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2) + (0.1 ** 2 + 0.6 ** 2 + 0.7 ** 2)) / 2
    assert brier_score(probs, targets) == pytest.approx(expected)
    logits = np.log(probs)
    cal = calibration(logits, targets, temperature=2.0)
    scaled = softmax(logits / 2.0)
    assert cal["nll"] == pytest.approx(-np.mean(np.log(scaled[[0, 1], targets])))
    assert cal["brier"] == pytest.approx(((scaled - np.eye(3)[targets]) ** 2).sum(1).mean())


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    logits = RNG.normal(size=(20000, 10)) * 4
    probs = softmax(logits / true_t)
    targets = (probs.cumsum(1) > RNG.random((len(probs), 1))).argmax(1)  # labels drawn from softmax(z / T)
    fitted = fit_temperature(logits, targets)
    assert fitted == pytest.approx(true_t, rel=0.05)
    # and it is the minimum of the NLL
    for other in (fitted * 0.9, fitted * 1.1):
        assert negative_log_likelihood(logits / fitted, targets) < negative_log_likelihood(logits / other, targets)


def test_spearman_matches_scipy():
    x, y = RNG.normal(size=50), RNG.normal(size=50)
    assert spearman(x, x + y) == pytest.approx(spearmanr(x, x + y).statistic)
    assert spearman(np.ones(5), np.arange(5.0)) is None


def test_scores_by_their_definitions():
    logits = RNG.normal(size=(8, 4)) * 3
    intro = RNG.normal(size=(8, 4))
    feature_sq, u_sq, exponent = RNG.random(8) + 0.5, RNG.random(8), RNG.random(8)
    s = uncertainty_scores(logits, feature_sq=feature_sq, introspective=intro, u_sq=u_sq, ism_exponent=exponent)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert s["msp"] == pytest.approx(1 - p.max(1))
    assert s["entropy"] == pytest.approx(-(p * np.log(p)).sum(1))
    assert s["max_logit"] == pytest.approx(-logits.max(1))
    assert s["energy"] == pytest.approx(-np.log(np.exp(logits).sum(1)))
    assert s["neg_f_norm"] == pytest.approx(-np.sqrt(feature_sq))
    assert s["u_norm2"] == pytest.approx(u_sq) and s["u_over_f"] == pytest.approx(u_sq / feature_sq)
    assert s["ism_exponent"] is exponent
    q = np.exp(intro) / np.exp(intro).sum(1, keepdims=True)
    assert s["ism_msp"] == pytest.approx(1 - q.max(1))
    plain = uncertainty_scores(logits, feature_sq=feature_sq)
    assert set(plain) == {"msp", "entropy", "max_logit", "energy", "neg_f_norm"}


def test_run_model_features_and_ism_exponent_match_the_head():
    """The exponent that run_model reports is the one inside the introspective logits:
    exp(-exponent) = (1 - z_y) / (1 - s_y) at the predicted class y."""
    from idml.inference import TrainedModel, run_model

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6))
    model = IntrospectiveClassifier(backbone, ISMHead(6, 3, uncertainty_dim=4)).eval()
    trained = TrainedModel(model, "digits", ["a", "b", "c"], (0.0,), (1.0,), 2, torch.device("cpu"))
    images = torch.randn(10, 3, 2, 2)
    out = run_model(trained, [images[:4], images[4:]])
    with torch.no_grad():
        reference = model(images)
        features = backbone(images)
    assert out.logits == pytest.approx(reference.logits.double().numpy(), rel=1e-5)
    assert out.feature_sq == pytest.approx(features.pow(2).sum(1).double().numpy(), rel=1e-5)
    assert out.uncertainty == pytest.approx(reference.uncertainty.pow(2).sum(1).double().numpy(), rel=1e-5)
    y = out.logits.argmax(1)
    s_y = out.logits[np.arange(10), y]
    z_y = reference.train_logits.double().numpy()[np.arange(10), y]
    assert np.exp(-out.ism_exponent) == pytest.approx((1 - z_y) / (1 - s_y), rel=1e-4)


def test_no_temperature_without_validation_mistakes():
    """Perfectly classified logits: sharper always lowers the NLL, so no temperature is identifiable."""
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    assert fit_temperature(logits, np.array([0, 1, 0])) is None
    assert fit_temperature(logits, np.array([0, 1, 1])) is not None  # one mistake: an interior minimum


def test_the_reason_there_is_no_temperature() -> None:
    """No mistakes, and mistakes without an interior minimum, are told apart (the trainer and idml
    eval print the reason; before any fit, NOT_FITTED says so)."""
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    assert temperature_fit(logits, np.array([0, 1, 0])).describe().startswith("none (no validation mistakes")
    # every prediction confidently wrong: the NLL keeps falling as T grows, to the end of the range
    wrong = temperature_fit(logits, np.array([1, 0, 1]))
    assert wrong.value is None and wrong.reason.startswith("no interior minimum") and "T = 100" in wrong.reason
    fitted = temperature_fit(logits, np.array([0, 1, 1]))
    assert fitted.reason is None and fitted.describe() == f"{fitted.value:.4f}"
    assert NOT_FITTED.describe() == "none (not fitted yet)"
