"""Every search space keeps the one protocol (encode, decode, describe, read, sample, mutate, smallest,
size, trial parameters), so every strategy and searcher works on each of them."""

from __future__ import annotations

import random

import pytest

from distilnas.distill.errors import UserError
from distilnas.spaces.base import SearchSpace
from distilnas.spaces.mapping_space import MappingSpace
from distilnas.spaces.nas_space import NasSpace

SPACES: dict[str, SearchSpace] = {
    "mapping": MappingSpace.build(3, 6, ["monotone", "no_repeats", "supervised"]),
    "mapping-free": MappingSpace.build(2, 3, []),
    "nas": NasSpace(4, 64, 2, (32, 64), ("mha", "ffn", "conv3"), vocab_size=500, max_positions=40),
}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_each_space_keeps_the_protocol(name: str) -> None:
    space = SPACES[name]
    rng = random.Random(0)
    for _ in range(100):
        genome = space.sample(rng)
        assert space.valid(genome)
        text = space.describe(genome)
        assert space.read(text) == genome and space.encode(space.decode(genome)) == genome
        mutated = space.mutate(genome, rng)
        assert space.valid(mutated)
        params = space.trial_params(genome)
        assert [v for v, _ in params.values()] == genome
        assert all(v in choices for v, choices in params.values())
    assert space.valid(space.smallest())
    with pytest.raises(UserError):
        space.read("not a candidate")


def test_sizes_are_exact() -> None:
    assert SPACES["mapping"].size() == 20  # C(6, 3)
    assert SPACES["mapping-free"].size() == 16  # (3 + 1)^2
    assert SPACES["nas"].size() == (2 * (3 + 9 + 27 + 81)) ** 2


def test_the_smallest_candidate_has_the_fewest_parameters() -> None:
    nas = SPACES["nas"]
    assert isinstance(nas, NasSpace)
    smallest = nas.params(nas.decode(nas.smallest()))
    rng = random.Random(1)
    assert all(smallest <= nas.params(nas.sample_path(rng)) for _ in range(300))
    assert nas.describe(nas.smallest()) == "32:conv3,id,id,id|32:conv3,id,id,id"  # conv3 is the cheapest
    assert SPACES["mapping"].smallest() == [1, 2, 3]  # every mapping trains the same student: the first
