"""The joint space of shape and mapping: every operator keeps every rule across depth changes, exact
counts and parameters, canonical text round trips, and errors for spaces that cannot exist."""

from __future__ import annotations

import random

import pytest
from helpers import JOINT_TEACHER as TEACHER
from helpers import joint_space as space
from transformers import BertModel

from distilnas.distill.bert import bert_config
from distilnas.distill.errors import UserError


@pytest.mark.parametrize("constraints", [None, ["monotone"], ["no_repeats", "supervised"], []])
def test_sampling_mutation_and_crossover_keep_every_rule(constraints: list[str] | None) -> None:
    s = space(constraints)
    rng = random.Random(0)
    genomes = [s.sample(rng) for _ in range(200)]
    depths = set()
    for _ in range(2000):
        a, b = rng.sample(genomes, 2)
        for child in (s.mutate(a, rng, indpb=0.5), *s.crossover(a, b, rng)):
            assert s.valid(child), s.describe(child) if len(child) == 5 + s.depth else child
            depths.add((s.decode(a).shape.layers, s.decode(child).shape.layers))
            candidate = s.decode(child)
            assert candidate.shape.hidden % candidate.shape.heads == 0
            assert candidate.init != "copy" or (candidate.shape.hidden, candidate.shape.intermediate) == (
                64,
                256,
            )
            assert not any(child[5 + candidate.shape.layers :])  # genes past the depth are 0
            genomes[rng.randrange(len(genomes))] = child
    assert len({d for d in depths if d[0] != d[1]}) >= 6  # depths changed both ways, and stayed valid


def test_repair_resizes_the_mapping_when_the_depth_changes() -> None:
    s = space()
    three = s.read("3L-64-4h-256f-copy:2,4,6/6")
    deeper = s.repair([3, *three[1:5], *s.resize([2, 4, 6], 4)], random.Random(0))
    assert s.valid(deeper) and s.decode(deeper).shape.layers == 4
    shallower = s.repair([0, *three[1:5], *s.resize([2, 4, 6], 1), 0, 0, 0], random.Random(0))
    assert s.describe(shallower) == "1L-64-4h-256f-copy:2/6"
    # a copy at another FFN size cannot be: extract it instead, with the heads an extraction keeps (4 of 16)
    narrow = s.repair([1, 3, 1, 0, 1, 1, 3, 0, 0], random.Random(0))  # 2L-64, 3 heads, FFN 64, copy
    assert s.describe(narrow) == "2L-64-4h-64f-extract:1,3/6"
    # heads that do not divide the width: the nearest that do (2 and 4 are as near: the first)
    assert s.describe(s.repair([1, 3, 1, 0, 0, 1, 3, 0, 0], random.Random(0))) == "2L-64-2h-64f-random:1,3/6"


def test_count_enumeration_and_text_round_trip() -> None:
    s = space(layers=[1, 2], hidden=[32, 64], heads=[2, 4], intermediate=[256], init=["copy", "extract"])
    every = s.all()
    assert len(every) == s.size() == len({tuple(g) for g in every})
    # extract keeps 16-wide heads (32 with 2, 64 with 4); copy is 64 wide with 4: 3 shapes x (6 + 15) mappings
    assert s.size() == 3 * (6 + 15)
    for g in every:
        assert s.read(s.describe(g)) == g
    with pytest.raises(UserError, match="not in the joint space"):
        s.read("2L-48-2h-256f-extract:1,3/6")
    with pytest.raises(UserError, match="breaks the joint space's rules"):
        s.read("2L-64-2h-256f-extract:3,1/6")


def test_parameters_are_exact_and_smallest_has_the_fewest() -> None:
    s = space()
    for text in ("1L-16-2h-64f-random:6/6", "4L-64-4h-256f-copy:1,2,3,4/6", "3L-48-3h-64f-extract:1,3,5/6"):
        shape = s.decode(s.read(text)).shape
        model = BertModel(bert_config(shape, TEACHER))
        assert s.params(s.read(text)) == sum(p.numel() for p in model.parameters())
    smallest = s.smallest()
    assert s.params(smallest) == min(s.params(g) for g in s.all())


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ({"hidden": [32, 128]}, "128 is wider than the teacher (64)"),
        ({"heads": [5]}, "none divides"),
        ({"layers": [2, 7]}, "a 7-layer student is deeper than its 6-layer teacher"),
        ({"init": ["copy"], "hidden": [32]}, "no width, heads, FFN size and start fit together"),
        ({"layers": []}, "search.joint.layers: give one or more distinct values"),
        ({"init": ["clone"]}, "unknown starts ['clone']"),
    ],
)
def test_spaces_that_cannot_exist_are_refused(choices: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        space(**choices)
