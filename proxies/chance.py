"""What a proxy score says nothing above: a task's chance level on its dev set.

A student that learned nothing still scores: the best constant prediction (the majority class: 50.92 on
SST-2 dev; STS-B's Pearson and CoLA's MCC are 0), and a predictor that ignores its input scatters around
that by the dev set's sampling noise. A score no more than two standard deviations of that noise above
the best constant prediction is *uninformative*: a search ranking such scores ranks noise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distilnas.distill.glue import GlueTask, compute_metrics, get_task, load_split
from distilnas.distill.metrics import task_score

DRAWS = 200
"""Input-ignoring predictors (the dev labels, shuffled) drawn to measure the noise."""


@dataclass(frozen=True)
class ChanceLevel:
    """``constant``: the best constant prediction's score; ``noise``: the standard deviation of an
    input-ignoring predictor's score (both 0-100)."""

    constant: float
    noise: float

    @property
    def threshold(self) -> float:
        return self.constant + 2 * self.noise

    def informative(self, score: float) -> bool:
        return score > self.threshold

    def to_json(self) -> dict[str, float]:
        return {**asdict(self), "threshold": self.threshold}


def _score(
    task: GlueTask, preds: Sequence[np.ndarray], labels: Sequence[np.ndarray], splits: Sequence[str]
) -> float:
    metrics: dict[str, float] = {}
    with warnings.catch_warnings():  # a constant prediction's correlation is undefined: it counts as 0
        warnings.simplefilter("ignore")
        for p, y, split in zip(preds, labels, splits, strict=True):
            metrics |= compute_metrics(task, p, y, split)
    return task_score({k: 0.0 if math.isnan(v) else v for k, v in metrics.items()})


def chance_level(
    task: GlueTask, labels: Sequence[np.ndarray], splits: Sequence[str], seed: int = 0
) -> ChanceLevel:
    """The chance level of ``task`` scored on ``labels`` (one array per eval split)."""
    if task.is_regression:
        constants = [float(np.mean(np.concatenate(labels)))]
    else:
        constants = [float(c) for c in range(task.num_labels)]
    constant = max(_score(task, [np.full(len(y), c) for y in labels], labels, splits) for c in constants)
    rng = np.random.default_rng(seed)
    shuffled = [_score(task, [rng.permutation(y) for y in labels], labels, splits) for _ in range(DRAWS)]
    return ChanceLevel(constant, float(np.std(shuffled)))


def task_chance(name: str, glue_dir: str | Path | None) -> ChanceLevel:
    """The chance level of a GLUE task on its dev split(s)."""
    task = get_task(name)
    labels = [np.asarray(load_split(task, s, glue_dir)["label"]) for s in task.eval_splits]
    return chance_level(task, labels, task.eval_splits)


def uninformative(evaluations: dict[str, dict[str, float]], chance: dict[str, ChanceLevel]) -> dict[str, Any]:
    """Which evaluations (candidate -> task -> score) are uninformative: every task's score at its chance
    level. The fraction of such evaluations, and per task the fraction of scores at chance."""
    flagged = [
        c for c, scores in evaluations.items() if not any(chance[t].informative(s) for t, s in scores.items())
    ]
    n = len(evaluations)
    per_task = {
        t: sum(not level.informative(scores[t]) for scores in evaluations.values() if t in scores) / n
        if n
        else 0.0
        for t, level in chance.items()
    }
    return {
        "evaluations": n,
        "uninformative": sorted(flagged),
        "fraction": len(flagged) / n if n else 0.0,
        "per_task": per_task,
        "chance": {t: level.to_json() for t, level in chance.items()},
    }
