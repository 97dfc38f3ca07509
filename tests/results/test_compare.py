"""Paired comparisons by seed (a hand-worked example), matching a front student to a hand-designed one, and
a front's hypervolume."""

from __future__ import annotations

import pytest

from distilnas.results.compare import front_hypervolume, matched, paired


def test_paired_difference_and_interval_by_hand() -> None:
    # d = (1, 2, -0.5): mean 5/6; squares of deviations 1/36 + 49/36 + 64/36 = 19/6, over 2 -> var 19/12;
    # t(0.975, 2 df) = 4.302653; half-width 4.302653 * sqrt(19/12) / sqrt(3) = 3.125805
    p = paired([70.0, 72.0, 71.0], [69.0, 70.0, 71.5])
    assert p.differences == (1.0, 2.0, -0.5) and p.n == 3
    assert p.mean == pytest.approx(5 / 6)
    assert p.std == pytest.approx((19 / 12) ** 0.5)
    assert p.low == pytest.approx(5 / 6 - 3.125805, abs=1e-5)
    assert p.high == pytest.approx(5 / 6 + 3.125805, abs=1e-5)
    assert not p.above_zero
    sure = paired([2.0, 3.0, 4.0, 3.0], [1.0, 1.0, 1.0, 1.0])  # d = 1, 2, 3, 2: t(0.975, 3) = 3.182446
    assert sure.low == pytest.approx(2 - 3.182446 * (2 / 3) ** 0.5 / 2, abs=1e-5) and sure.above_zero
    one = paired([3.0], [1.0])
    assert one.mean == 2.0 and one.low is None and not one.above_zero
    with pytest.raises(ValueError, match="2 against 1"):
        paired([1.0, 2.0], [1.0])


def test_matching_takes_the_best_front_student_within_ten_percent() -> None:
    front = [
        {"glue": 70.0, "latency_ms": 1.0, "params": 3.0},
        {"glue": 72.0, "latency_ms": 2.15, "params": 5.0},
        {"glue": 75.0, "latency_ms": 2.25, "params": 9.0},
    ]
    hand = {"glue": 71.0, "latency_ms": 2.0, "params": 5.0}
    assert matched(front, hand, "latency_ms") == front[1]  # 2.25 ms is 12.5% slower: out of the band
    assert matched(front, hand, "params") == front[1]
    assert matched(front, {"latency_ms": 0.5}, "latency_ms") is None


def test_front_hypervolume_on_the_teachers_reference() -> None:
    teacher = {"params": 10.0, "latency_ms": 4.0}
    # one student at GLUE 80, half the size and a quarter of the time: 0.8 * 0.5 * 0.75
    assert front_hypervolume([{"glue": 80.0, "params": 5.0, "latency_ms": 1.0}], teacher) == pytest.approx(
        0.3
    )
    assert front_hypervolume([], teacher) == 0.0
