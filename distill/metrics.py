"""GLUE's official metrics, on the 0-100 scale the leaderboard uses."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

ArrayLike = Sequence[float] | np.ndarray


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    p, y = np.asarray(preds), np.asarray(labels)
    return float((p == y).mean() * 100)


def f1(preds: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    return float(f1_score(np.asarray(labels), np.asarray(preds), pos_label=1, zero_division=0) * 100)


def matthews(preds: ArrayLike, labels: ArrayLike) -> float:
    return float(matthews_corrcoef(np.asarray(labels), np.asarray(preds)) * 100)


def pearson(preds: ArrayLike, labels: ArrayLike) -> float:
    return float(stats.pearsonr(np.asarray(preds, float), np.asarray(labels, float))[0] * 100)


def spearman(preds: ArrayLike, labels: ArrayLike) -> float:
    return float(stats.spearmanr(np.asarray(preds, float), np.asarray(labels, float))[0] * 100)


METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews,
    "pearson": pearson,
    "spearman": spearman,
}


def task_score(metrics: Mapping[str, float]) -> float:
    """A task's single score: the unweighted mean of its metrics (GLUE's rule for multi-metric tasks).

    For MNLI the metrics are the matched and mismatched accuracies, so its score is their mean.
    """
    if not metrics:
        raise ValueError("no metrics to average")
    return float(np.mean(list(metrics.values())))


def glue_average(results: Mapping[str, Mapping[str, float]]) -> float:
    """The GLUE score as the leaderboard computes it: the mean over tasks of each task's score.

    ``results`` maps task names to their metrics. The diagnostic set (``ax``) is not part of the score.
    Over a subset of tasks this is the average over those tasks.
    """
    scores = [task_score(m) for task, m in results.items() if task != "ax"]
    if not scores:
        raise ValueError("no GLUE task results to average")
    return float(np.mean(scores))
