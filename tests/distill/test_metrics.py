"""The GLUE metrics against hand-computed values and scikit-learn / scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from distilnas.distill.metrics import accuracy, f1, glue_average, matthews, pearson, spearman, task_score

PREDS = [1, 0, 1, 1, 0, 0, 1, 0]
LABELS = [1, 0, 0, 1, 1, 0, 1, 0]  # tp 3, tn 3, fp 1, fn 1


def test_classification_metrics_by_hand() -> None:
    assert accuracy(PREDS, LABELS) == pytest.approx(75.0)
    # F1 = 2tp / (2tp + fp + fn) = 6 / 8
    assert f1(PREDS, LABELS) == pytest.approx(75.0)
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (9 - 1) / 16
    assert matthews(PREDS, LABELS) == pytest.approx(50.0)


def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert f1(p, y) == pytest.approx(100 * f1_score(y, p))
    assert matthews(p, y) == pytest.approx(100 * matthews_corrcoef(y, p))
    assert accuracy(p, y) == pytest.approx(100 * (p == y).mean())


def test_correlations_by_hand_and_scipy() -> None:
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0]
    # Pearson by hand: deviations x (-1.5,-.5,.5,1.5), y (-1.75,.25,-.75,2.25)
    cov = (-1.5 * -1.75) + (-0.5 * 0.25) + (0.5 * -0.75) + (1.5 * 2.25)
    r = cov / math.sqrt(5.0 * (1.75**2 + 0.25**2 + 0.75**2 + 2.25**2))
    assert pearson(x, y) == pytest.approx(100 * r)
    # Spearman: ranks of y are (1, 3, 2, 4); rho = 1 - 6 * sum(d^2) / (n(n^2-1)) = 1 - 12/60
    assert spearman(x, y) == pytest.approx(80.0)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert pearson(a, b) == pytest.approx(100 * stats.pearsonr(a, b)[0])
    assert spearman(a, b) == pytest.approx(100 * stats.spearmanr(a, b)[0])


def test_glue_average_by_hand() -> None:
    results = {
        "cola": {"mcc": 50.0},
        "mrpc": {"f1": 90.0, "accuracy": 80.0},  # task score 85
        "mnli": {"accuracy_m": 80.0, "accuracy_mm": 82.0},  # task score 81
        "stsb": {"pearson": 88.0, "spearman": 86.0},  # task score 87
        "ax": {"mcc": 10.0},  # the diagnostic set is not part of the score
    }
    assert task_score(results["mrpc"]) == pytest.approx(85.0)
    assert glue_average(results) == pytest.approx((50 + 85 + 81 + 87) / 4)
    with pytest.raises(ValueError):
        glue_average({"ax": {"mcc": 1.0}})
