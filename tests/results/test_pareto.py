"""Non-dominated sorting and hypervolume against brute force and hand-computed values."""

from __future__ import annotations

import itertools
import random

import pytest

from distilnas.results.pareto import dominates, hypervolume, non_dominated_sort


def brute_fronts(points: list[tuple[float, ...]]) -> list[list[int]]:
    """Peel the front by definition: the points no remaining point dominates."""
    left, fronts = set(range(len(points))), []
    while left:
        front = sorted(i for i in left if not any(dominates(points[j], points[i]) for j in left))
        fronts.append(front)
        left -= set(front)
    return fronts


def brute_volume(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    """Sum the grid cells (cut at every coordinate) that some point dominates."""
    axes = [sorted({p[d] for p in points if p[d] < ref[d]} | {ref[d]}) for d in range(len(ref))]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        low = [axes[d][c] for d, c in enumerate(cell)]
        if any(all(p[d] <= low[d] for d in range(len(ref))) for p in points):
            size = 1.0
            for d, c in enumerate(cell):
                size *= axes[d][c + 1] - axes[d][c]
            total += size
    return total


def test_known_values() -> None:
    assert non_dominated_sort([(1, 2), (2, 1), (2, 2), (3, 3), (1, 2)]) == [[0, 1, 4], [2], [3]]
    assert hypervolume([(1, 2), (2, 1)], (3, 3)) == pytest.approx(3.0)  # 2 + 2 - 1 overlap
    assert hypervolume([(0, 0, 0)], (1, 2, 3)) == pytest.approx(6.0)
    assert hypervolume([(0.5, 0.5), (4, 0)], (1, 1)) == pytest.approx(0.25)  # (4, 0) is outside
    assert hypervolume([], (1, 1)) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    dims = 2 + seed % 2
    points = [tuple(float(rng.randint(0, 6)) for _ in range(dims)) for _ in range(4 + seed)]
    assert non_dominated_sort(points) == brute_fronts(points)
    ref = tuple(7.0 for _ in range(dims))
    assert hypervolume(points, ref) == pytest.approx(brute_volume(points, ref))
    front = [points[i] for i in non_dominated_sort(points)[0]]
    assert hypervolume(front, ref) == pytest.approx(hypervolume(points, ref))  # dominated add nothing
