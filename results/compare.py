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

import pandas as pd
from scipy import stats

from distilnas.results.pareto import hypervolume
from distilnas.results.table import REFERENCE, objectives

TOLERANCE = 0.10
BASELINES = ("uniform", "last", "random")
FRONTS = ("supernet", "joint")
HAND = ("hand", "uniform")  # a uniform-mapped student at a chosen shape is what a person would build


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
        return {**asdict(self), "differences": list(self.differences), "n": self.n}


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
    points = objectives(pd.DataFrame(list(rows)), teacher["params"], teacher["latency_ms"])
    return hypervolume(points, REFERENCE)


def origins(row: dict[str, Any]) -> set[str]:
    """A results-table row's origins (``searched+uniform``: one student chosen twice)."""
    return set(str(row["origin"]).split("+"))


def of(rows: Sequence[dict[str, Any]], origin: str) -> list[dict[str, Any]]:
    return [r for r in rows if origin in origins(r)]


def dominating(front: Sequence[dict[str, Any]], hand: dict[str, Any]) -> str | None:
    """The best front student at least as good as ``hand`` on GLUE, parameters and latency alike."""
    for r in sorted(front, key=lambda r: -r["glue"]):
        if (
            r["glue"] >= hand["glue"]
            and r["params"] <= hand["params"]
            and r["latency_ms"] <= hand["latency_ms"]
        ):
            return str(r["model"])
    return None


class SeedRuns:
    """The results tables of one config's runs, one per seed (rows as ``distilnas run`` returns them)."""

    def __init__(self, runs: dict[int, list[dict[str, Any]]]) -> None:
        self.seeds = sorted(runs)
        self.students = {s: [r for r in runs[s] if r["kind"] == "student"] for s in self.seeds}
        self.teacher = {s: next(r for r in runs[s] if r["kind"] == "teacher") for s in self.seeds}

    def in_every_seed(self) -> dict[str, dict[str, Any]]:
        """GLUE average (mean ± std over seeds) of every student present (by name) in every seed."""
        out = {}
        for name in dict.fromkeys(r["model"] for r in self.students[self.seeds[0]]):
            rows = [r for s in self.seeds for r in self.students[s] if r["model"] == name]
            if len(rows) == len(self.seeds):
                glue = [r["glue"] for r in rows]
                mean, std = mean_std(glue)
                out[name] = {
                    "origin": rows[0]["origin"], "glue_mean": mean, "glue_std": std, "glue": glue,
                    "params": rows[0]["params"],
                    "latency_ms": statistics.median(r["latency_ms"] for r in rows),
                }  # fmt: skip
        return out

    def mapping(self) -> dict[str, Paired]:
        """The searched mapping's student against each baseline's, seed by seed."""
        out = {}
        for base in BASELINES:
            pairs = [(of(self.students[s], "searched"), of(self.students[s], base)) for s in self.seeds]
            if all(a and b for a, b in pairs):
                out[base] = paired([a[0]["glue"] for a, _ in pairs], [b[0]["glue"] for _, b in pairs])
        return out

    def hand_designed(self, seed: int) -> dict[str, dict[str, Any]]:
        """A seed's hand-designed students by names that hold across seeds: a ``hand`` student's own, and
        ``<shape>_uniform`` for the uniform-mapped one (named after another origin when chosen twice)."""
        out = {}
        for r in self.students[seed]:
            if "hand" in origins(r) or "uniform" in origins(r):
                out[r["model"] if "hand" in origins(r) else f"{r['shape']}_uniform"] = r
        return out

    def hands(self) -> dict[str, list[dict[str, Any]]]:
        """Every hand-designed student present in every seed: its rows, seed by seed."""
        per_seed = [self.hand_designed(s) for s in self.seeds]
        return {name: [h[name] for h in per_seed] for name in per_seed[0] if all(name in h for h in per_seed)}

    def against_hand(self, front: str, by: str) -> dict[str, tuple[Paired, list[str]]]:
        """Each hand-designed student against the best ``front`` student at most 10% above it on ``by``
        (``latency_ms`` or ``params``), over the seeds where there is one; and the matched students."""
        out = {}
        for name, hands in self.hands().items():
            picks = [
                matched(of(self.students[s], front), h, by) for s, h in zip(self.seeds, hands, strict=True)
            ]
            kept = [(p, h) for p, h in zip(picks, hands, strict=True) if p]
            if kept:
                diff = paired([p["glue"] for p, _ in kept], [h["glue"] for _, h in kept])
                out[name] = (diff, [p["model"] for p, _ in kept])
        return out

    def dominance(self, front: str) -> dict[str, list[str | None]]:
        """Per hand-designed student and seed: a ``front`` student that matches or dominates it."""
        return {
            name: [dominating(of(self.students[s], front), h) for s, h in zip(self.seeds, hands, strict=True)]
            for name, hands in self.hands().items()
        }

    def hypervolumes(self) -> dict[str, list[float]]:
        """Each group's hypervolume per seed (teacher-normalised, one reference point)."""
        groups = {"hand-designed": HAND, "mapping": ("searched", *BASELINES), **{f: (f,) for f in FRONTS}}
        out = {}
        for group, members in groups.items():
            rows = {s: [r for r in self.students[s] if origins(r) & set(members)] for s in self.seeds}
            if all(rows.values()):
                out[group] = [front_hypervolume(rows[s], self.teacher[s]) for s in self.seeds]
        return out


def compare_runs(runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Every comparison of the seeds' results tables, as JSON."""
    r = SeedRuns(runs)
    fronts = [f for f in FRONTS if all(of(r.students[s], f) for s in r.seeds)]
    return {
        "seeds": r.seeds,
        "students": r.in_every_seed(),
        "mapping": {base: p.to_json() for base, p in r.mapping().items()},
        "fronts": {
            f: {
                f"{name}@{by}": {**p.to_json(), "matched": picks}
                for by in ("latency_ms", "params")
                for name, (p, picks) in r.against_hand(f, by).items()
            }
            for f in fronts
        },
        "dominance": {f: r.dominance(f) for f in fronts},
        "hypervolume": {
            g: dict(zip(("mean", "std"), mean_std(v), strict=True)) | {"per_seed": v}
            for g, v in r.hypervolumes().items()
        },
    }
