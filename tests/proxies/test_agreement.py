"""Choosing what a fidelity check re-scores, and rank agreement against hand-computed values."""

from __future__ import annotations

import pytest

from distilnas.proxies.agreement import choose, rank_agreement


def test_fidelity_candidates_and_rank_agreement() -> None:
    scores = {"1,2/4": 60.0, "1,3/4": 70.0, "2,4/4": 65.0, "3,4/4": 50.0, "1,4/4": 55.0, "2,3/4": 58.0}
    picked = choose(scores, top=2, n_random=2, seed=0)
    assert [(c.text, c.chosen) for c in picked[:2]] == [("1,3/4", "top"), ("2,4/4", "top")]
    assert {c.text for c in picked[2:]} < {"1,2/4", "3,4/4", "1,4/4", "2,3/4"}
    assert picked == choose(scores, top=2, n_random=2, seed=0)  # seeded
    assert len(choose(scores, top=5, n_random=5, seed=0)) == 6  # no more than were scored
    # one swapped pair of four: tau = (5 - 1) / 6, rho = 1 - 6 * 2 / (4 * 15)
    agree = rank_agreement([1, 2, 3, 4], [10, 30, 20, 40])
    assert agree["kendall_tau"] == pytest.approx(4 / 6)
    assert agree["spearman_rho"] == pytest.approx(0.8)
    assert rank_agreement([1, 2, 3], [5, 5, 5])["kendall_tau"] is None  # all tied: undefined, not NaN
