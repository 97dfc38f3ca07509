"""Does a proxy rank candidates as the expensive setting does? Choosing what to re-score, and rank
agreement (Kendall's tau, Spearman's rho) between cheap and expensive scores."""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass

from scipy import stats


@dataclass
class Candidate:
    """A candidate re-scored in the expensive setting: its canonical text, why it was chosen, its proxy
    score, and (once re-scored) its full score and per-task scores."""

    text: str
    chosen: str  # "top" or "random"
    proxy: float
    full: float | None = None
    scores: dict[str, float] | None = None


def choose(proxy_scores: dict[str, float], top: int, n_random: int, seed: int) -> list[Candidate]:
    """The ``top`` best candidates by proxy score, then ``n_random`` drawn from the rest (seeded)."""
    ranked = sorted(proxy_scores.items(), key=lambda x: (-x[1], x[0]))
    best, rest = ranked[:top], sorted(ranked[top:])
    drawn = random.Random(seed).sample(rest, min(n_random, len(rest)))
    return [Candidate(m, "top", f) for m, f in best] + [Candidate(m, "random", f) for m, f in drawn]


def rank_agreement(proxy: list[float], full: list[float]) -> dict[str, float | None]:
    """Kendall's tau-b and Spearman's rho with their p-values; None where undefined (all scores tied)."""
    with warnings.catch_warnings():  # constant input: undefined, reported as None below
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        tau = stats.kendalltau(proxy, full)
        rho = stats.spearmanr(proxy, full)
    values = {
        "kendall_tau": tau.statistic,
        "kendall_p": tau.pvalue,
        "spearman_rho": rho.statistic,
        "spearman_p": rho.pvalue,
    }
    return {k: None if math.isnan(v) else float(v) for k, v in values.items()}
