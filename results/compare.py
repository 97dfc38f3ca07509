"""Paired comparisons of students over seeds: does a searched student beat the one a person would design?

Every seed is a whole run (searches and final distillation) with that seed, so a difference is paired
within a seed: ``d_s = GLUE(searched_s) - GLUE(baseline_s)``. Over the seeds it is reported as its mean
with Student's t 95% interval (n - 1 degrees of freedom); with one seed there is no interval.

A front student is *matched* to a hand-designed one when it is at most ``tolerance`` (10%) slower (or
larger): within a seed, the best-scoring front student in that band stands against the hand-designed one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats

from distilnas.results.pareto import hypervolume

TOLERANCE = 0.10


@dataclass(frozen=True)
class Paired:
    """Differences paired by seed: their mean, standard deviation and 95% interval (None: one seed)."""

    differences: tuple[float, ...]
    mean: float
    std: float
    low: float | None
    high: float | None

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def above_zero(self) -> bool:
        """The whole interval is above 0."""
        return self.low is not None and self.low > 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "n": self.n}


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Paired:
    """``a - b`` seed by seed (both in the same seed order), with Student's t interval."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired: {len(a)} against {len(b)} seeds")
    d = tuple(x - y for x, y in zip(a, b, strict=True))
    mean = statistics.fmean(d)
    if len(d) == 1:
        return Paired(d, mean, 0.0, None, None)
    std = statistics.stdev(d)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1)) * std / math.sqrt(len(d))
    return Paired(d, mean, std, mean - half, mean + half)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def matched(
    front: Sequence[dict[str, Any]], target: dict[str, Any], by: str, tolerance: float = TOLERANCE
) -> dict[str, Any] | None:
    """The best-scoring (``glue``) row of ``front`` whose ``by`` (``latency_ms`` or ``params``) is at most
    ``1 + tolerance`` times ``target``'s; None when none is."""
    band = [r for r in front if r[by] <= (1 + tolerance) * target[by]]
    return max(band, key=lambda r: r["glue"]) if band else None


def front_hypervolume(rows: Sequence[dict[str, Any]], teacher: dict[str, Any]) -> float:
    """Hypervolume of ``rows`` on (GLUE up, parameters down, latency down), normalised by the teacher,
    on the results table's reference point (GLUE 0, the teacher's size, the teacher's latency)."""
    points = [
        (-r["glue"] / 100, r["params"] / teacher["params"], r["latency_ms"] / teacher["latency_ms"])
        for r in rows
    ]
    return hypervolume(points, (0.0, 1.0, 1.0))
