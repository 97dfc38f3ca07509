"""Paired comparisons by seed (a hand-worked example), matching a front student to a hand-designed one, and
a front's hypervolume."""

from __future__ import annotations

import pytest

from distilnas.results.compare import compare_runs, front_hypervolume, matched, paired


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


def run_table(seed: int) -> list[dict]:
    """A results table as ``distilnas run`` returns it: the teacher, a mapping search's students (random
    search found the searched mapping; in seed 2 the search found the uniform one), a hand-designed
    student and a supernet front of two."""

    def row(model: str, origin: str, glue: float, params: float, ms: float) -> dict:
        kind = "teacher" if origin == "teacher" else "student"
        shape = model.split("_")[0]
        return {
            "model": model, "kind": kind, "origin": origin, "shape": shape, "glue": glue, "params": params,
            "latency_ms": ms,
        }  # fmt: skip

    searched = [] if seed == 2 else [row("3L_searched", "searched+random", 70.0 + seed, 30.0, 5.0)]
    uniform = ("3L_searched", "searched+uniform+random") if seed == 2 else ("3L_uniform", "uniform")
    return [
        row("teacher", "teacher", 80.0, 100.0, 10.0),
        *searched,
        row(*uniform, 69.0, 30.0, 5.0),  # one student chosen twice is named after its first origin
        row("3L_last", "last", 68.0, 30.0, 5.0),
        row("2L-96_hand", "hand", 60.0, 10.0, 2.0),
        row(f"nasA-{seed}", "supernet", 61.0 + seed / 2, 9.0, 1.9),
        row(f"nasB-{seed}", "supernet", 65.0, 20.0, 4.0),
    ]


def test_seed_runs_pair_every_comparison_by_hand() -> None:
    out = compare_runs({s: run_table(s) for s in (0, 1, 2)})
    assert out["seeds"] == [0, 1, 2]
    # the searched mapping: +1, +2, 0 over uniform (mean 1, std 1: t(0.975, 2) / sqrt(3) = 2.484138),
    # +2, +3, +1 over last; random search found the searched student: 0 in every seed
    uniform = out["mapping"]["uniform"]
    assert uniform["differences"] == [1.0, 2.0, 0.0] and uniform["mean"] == pytest.approx(1.0)
    assert (uniform["low"], uniform["high"]) == pytest.approx((1 - 2.484138, 1 + 2.484138), abs=1e-5)
    assert out["mapping"]["last"]["differences"] == [2.0, 3.0, 1.0]
    assert out["mapping"]["random"]["differences"] == [0.0, 0.0, 0.0]
    # hand-designed: the hand student and the uniform-mapped one (in seed 2 under the searched name);
    # each against the best front student at most 10% slower or larger
    front = out["fronts"]["supernet"]
    small = front["2L-96_hand@latency_ms"]
    assert small["matched"] == ["nasA-0", "nasA-1", "nasA-2"] and small["differences"] == [1.0, 1.5, 2.0]
    assert front["3L_uniform@latency_ms"]["differences"] == [-4.0, -4.0, -4.0]  # nasB, the best at <= 5.5 ms
    assert front["3L_uniform@params"]["matched"] == ["nasB-0", "nasB-1", "nasB-2"]
    assert out["dominance"]["supernet"] == {
        "3L_uniform": [None] * 3,
        "2L-96_hand": ["nasA-0", "nasA-1", "nasA-2"],
    }
    assert out["students"]["3L_searched"]["glue"] == [70.0, 71.0, 69.0]
    assert "3L_uniform" not in out["students"] and "nasA-0" not in out["students"]  # not in every seed
    # hand-designed group: boxes 0.6 * 0.9 * 0.8 and 0.69 * 0.7 * 0.5 overlapping in 0.6 * 0.7 * 0.5
    assert out["hypervolume"]["hand-designed"]["per_seed"] == pytest.approx([0.4635] * 3)
    assert out["hypervolume"]["hand-designed"]["std"] == pytest.approx(0.0)
