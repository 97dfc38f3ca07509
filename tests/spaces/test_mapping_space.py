"""The space of layer mappings: sampling and DEAP-style operators keep every constraint, exact counts,
and errors for spaces that cannot exist."""

from __future__ import annotations

import random
from itertools import combinations

import pytest

from distilnas.distill.errors import UserError
from distilnas.spaces.mapping_space import CONSTRAINTS, MappingSpace, Variation, mut_reset, mut_shift

ALL = ["monotone", "no_repeats", "supervised"]


@pytest.mark.parametrize("names", [ALL, ["monotone"], ["no_repeats"], ["supervised"], []])
def test_operators_keep_constraints(names: list[str]) -> None:
    space = MappingSpace.build(4, 6, names)
    variation = Variation(space)
    rng = random.Random(0)
    for _ in range(200):
        g = space.sample(rng)
        assert space.valid(g)
        assert all(0 <= x <= 6 for x in mut_reset(g, 6, 0.5, rng) + mut_shift(g, 6, 0.5, rng))
        assert space.valid(variation.variant(g, rng, mutate=True, indpb=0.9)), (names, g)
        assert space.valid(space.mutate(g, rng))


def test_space_counts_and_errors() -> None:
    assert MappingSpace.build(3, 6, ALL).size() == 20  # C(6, 3) strictly increasing mappings
    assert MappingSpace.build(2, 3, []).size() == 16  # (N + 1)^M
    with pytest.raises(UserError, match="deeper than its 3-layer teacher"):
        MappingSpace.build(4, 3, ALL)
    with pytest.raises(UserError, match="unknown mapping constraints"):
        MappingSpace.build(2, 3, ["sorted"])


@pytest.mark.parametrize("names", [list(c) for r in range(4) for c in combinations(sorted(CONSTRAINTS), r)])
@pytest.mark.parametrize(("m", "n"), [(1, 1), (2, 6), (3, 6), (4, 4), (3, 7)])
def test_size_in_closed_form_is_the_enumerated_count(names: list[str], m: int, n: int) -> None:
    space = MappingSpace.build(m, n, names)
    assert space.size() == len(space.all())


def test_size_of_a_deep_teacher_is_counted_not_enumerated() -> None:
    assert MappingSpace.build(6, 24, sorted(CONSTRAINTS)).size() == 134_596  # C(24, 6)
    assert MappingSpace.build(6, 24, []).size() == 25**6
