"""The evaluation metrics against cases computed by hand."""

import math

import numpy as np
import pytest

from idml.metrics import (
    expected_calibration_error,
    misclassification_auroc,
    negative_log_likelihood,
    reliability_bins,
    topk_error,
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
