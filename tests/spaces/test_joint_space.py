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
from distilnas.proxies.bert_latency import plain_encoder
from distilnas.spaces.joint_space import HEAD


@pytest.mark.parametrize("constraints", [None, ["monotone"], ["no_repeats", "supervised"], []])
@pytest.mark.parametrize("embedding", [[None], [None, 8, 24]])
def test_sampling_mutation_and_crossover_keep_every_rule(
    constraints: list[str] | None, embedding: list[int | None]
) -> None:
    s = space(constraints, embedding=embedding)
    rng = random.Random(0)
    genomes = [s.sample(rng) for _ in range(200)]
    depths, tables = set(), set()
    for _ in range(2000):
        a, b = rng.sample(genomes, 2)
        for child in (s.mutate(a, rng, indpb=0.5), *s.crossover(a, b, rng)):
            assert s.valid(child), s.describe(child) if len(child) == HEAD + s.depth else child
            depths.add((s.decode(a).shape.layers, s.decode(child).shape.layers))
            candidate = s.decode(child)
            assert candidate.shape.hidden % candidate.shape.heads == 0
            assert candidate.init != "copy" or (candidate.shape.hidden, candidate.shape.intermediate) == (
                64,
                256,
            )
            assert not any(child[HEAD + candidate.shape.layers :])  # genes past the depth are 0
            table = candidate.shape.embedding
            assert table is None or table < candidate.shape.hidden  # a factorised table is narrower
            tables.add(table)
            genomes[rng.randrange(len(genomes))] = child
    assert len({d for d in depths if d[0] != d[1]}) >= 6  # depths changed both ways, and stayed valid
    assert tables == set(embedding)  # every table choice is reached


def test_repair_resizes_the_mapping_when_the_depth_changes() -> None:
    s = space()
    three = s.read("3L-64-4h-256f-copy:2,4,6/6")
    deeper = s.repair([3, *three[1:HEAD], *s.resize([2, 4, 6], 4)], random.Random(0))
    assert s.valid(deeper) and s.decode(deeper).shape.layers == 4
    shallower = s.repair([0, *three[1:HEAD], *s.resize([2, 4, 6], 1), 0, 0, 0], random.Random(0))
    assert s.describe(shallower) == "1L-64-4h-256f-copy:2/6"
    # a copy at another FFN size cannot be: extract it instead, with the heads an extraction keeps (4 of 16)
    narrow = s.repair([1, 3, 1, 0, 0, 1, 1, 3, 0, 0], random.Random(0))  # 2L-64, 3 heads, FFN 64, copy
    assert s.describe(narrow) == "2L-64-4h-64f-extract:1,3/6"
    # heads that do not divide the width: the nearest that do (2 and 4 are as near: the first)
    assert (
        s.describe(s.repair([1, 3, 1, 0, 0, 0, 1, 3, 0, 0], random.Random(0))) == "2L-64-2h-64f-random:1,3/6"
    )
    # a factorised table as wide as the student: the nearest narrower one (8 of 8 and 16 at width 16)
    tables = space(hidden=[16, 64], embedding=[None, 8, 16])
    wide = tables.repair([1, 0, 0, 0, 2, 0, 1, 3, 0, 0], random.Random(0))  # 2L-16 with a 16-wide table
    assert tables.describe(wide) == "2L-16-2h-64f-e8-random:1,3/6"


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


def test_factorised_tables_are_counted_parsed_and_exact() -> None:
    s = space(layers=[1, 2], hidden=[16, 64], heads=[4], intermediate=[256], init=["extract"],
              embedding=[None, 8, 32])  # fmt: skip
    # width 16 (4 heads of 4: not the teacher's 16-wide heads) cannot be extracted: width 64 only, with
    # every table (8 and 32 narrower than 64)
    assert s.size() == 3 * (6 + 15) and s.tables() == {(64, 8), (64, 32)}
    text = "2L-64-4h-256f-e8-extract:3,6/6"
    genome = s.read(text)
    assert s.describe(genome) == text and s.decode(genome).shape.embedding == 8
    assert s.trial_params(genome)["embedding"] == ("8", ["dense", "8", "32"])
    assert s.params(genome) == sum(
        p.numel() for p in plain_encoder(s.decode(genome).shape, TEACHER).parameters()
    )
    assert s.params(s.read("2L-64-4h-256f-extract:3,6/6")) - s.params(genome) == 100 * 64 - (100 + 64) * 8
    with pytest.raises(UserError, match=r"expected e\.g\."):
        s.read("2L-64-4h-256f-x8-extract:3,6/6")


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
        ({"init": ["copy"], "hidden": [32]}, "no width, heads, FFN size, embedding and start fit together"),
        ({"layers": []}, "search.joint.layers: give one or more distinct values"),
        ({"init": ["clone"]}, "unknown starts ['clone']"),
        ({"embedding": [None, 0]}, "a factorised table's width is positive"),
        ({"embedding": [64], "hidden": [64]}, "no width, heads, FFN size, embedding and start fit together"),
    ],
)
def test_spaces_that_cannot_exist_are_refused(choices: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        space(**choices)
