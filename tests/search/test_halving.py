"""Successive halving around any strategy: exactly the best ceil(n / eta) of each rung are promoted, each
candidate is evaluated once per rung it reaches, a strategy is told its highest rung's score, and the
whole state resumes; under the Ray Tune searcher the rung is a trial parameter."""

from __future__ import annotations

import json
import math

import pytest

from distilnas.search.strategies import FixedSearch, GeneticSearch, Halving, RandomSearch, key
from distilnas.search.strategies.base import Strategy
from distilnas.search.tune import StrategySearcher
from distilnas.spaces.mapping_space import MappingSpace
from distilnas.spaces.rungs import rung_steps, split_rung

SPACE = MappingSpace.build(3, 6, ["monotone", "no_repeats", "supervised"])  # 20 mappings


def score(genome: list[int], rung: int) -> float:
    """A rung's score: the true one (closest to 2,4,6) plus a rung-dependent wobble."""
    true = -sum(abs(a - b) for a, b in zip(genome, [2, 4, 6], strict=True))
    return true + 0.3 * ((sum(genome) * (rung + 3)) % 5) + rung


def drive(lane: Strategy, stop_after: int | None = None) -> list[tuple[str, int]]:
    asked: list[tuple[str, int]] = []
    while not lane.finished:
        todo = lane.ask()
        for tagged in todo:
            g, r = tagged[:-1], tagged[-1]
            asked.append((key(g), r))
            lane.tell(tagged, score(g, r))
            if stop_after is not None and len(asked) >= stop_after:
                return asked
        if lane.generation_done():
            lane.advance()
    return asked


@pytest.mark.parametrize(("rungs", "eta"), [(3, 3), (2, 2), (2, 4)])
def test_exactly_the_top_of_each_rung_is_promoted(rungs: int, eta: int) -> None:
    every = FixedSearch(SPACE, SPACE.all())
    asked = drive(Halving(every, rungs, eta))
    assert len(asked) == len(set(asked))  # once per candidate and rung
    members = [key(g) for g in SPACE.all()]
    for rung in range(rungs):
        at = [k for k, r in asked if r == rung]
        assert sorted(at) == sorted(members), rung
        best = sorted(members, key=lambda k: (-score(list(map(int, k.split(","))), rung), k))
        members = best[: math.ceil(len(members) / eta)]
    # told its highest rung's score: the last rung's for the promoted, the rung it stopped at otherwise
    for k, fitness in every.memo.items():
        top = max(r for kk, r in asked if kk == k)
        assert fitness == score(list(map(int, k.split(","))), top)


def test_halving_resumes_and_wraps_a_generational_strategy() -> None:
    whole = drive(Halving(GeneticSearch(SPACE, 6, 3, seed=1), 2, 3))
    part = Halving(GeneticSearch(SPACE, 6, 3, seed=1), 2, 3)
    first = drive(part, stop_after=8)
    resumed = Halving(GeneticSearch(SPACE, 6, 3, seed=5), 2, 3)
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))
    assert first + drive(resumed) == whole
    per_generation = [sum(1 for _, r in whole if r == rung) for rung in (0, 1)]
    assert per_generation[1] <= math.ceil(per_generation[0] / 3) * 3  # a third of each cohort, rounded up


def test_baselines_start_at_the_top_rung_and_share_evaluations() -> None:
    base = Halving(FixedSearch(SPACE, [[2, 4, 6], [4, 5, 6]]), 2, 3, first=1)
    every = Halving(FixedSearch(SPACE, SPACE.all()), 2, 3)
    searcher = StrategySearcher({"baseline": base, "exhaustive": every})
    trials = []
    while (config := searcher.suggest(f"t{len(trials)}")) not in ("FINISHED", None):
        trials.append(config["candidate"])
        text, rung = split_rung(config["candidate"])
        genome = SPACE.read(text)
        searcher.on_trial_complete(
            f"t{len(trials) - 1}", {"fitness": score(genome, rung or 0), "seconds": 0.1}
        )
    assert len(trials) == len(set(trials))  # the baselines' top-rung evaluations are shared, not repeated
    assert sum(t.endswith("@r0") for t in trials) == 20
    top = sorted(SPACE.all(), key=lambda g: (-score(g, 0), g))[:7]  # ceil(20 / 3) promoted
    promoted = {f"{SPACE.describe(g)}@r1" for g in top}
    assert {t for t in trials if t.endswith("@r1")} == promoted | {"2,4,6/6@r1", "4,5,6/6@r1"}
    assert base.inner.memo == {"2,4,6": score([2, 4, 6], 1), "4,5,6": score([4, 5, 6], 1)}


def test_a_rung_trains_eta_times_fewer_steps_per_rung_below_the_top() -> None:
    assert [rung_steps(200, r, 3, 3) for r in (0, 1, 2, None)] == [22, 66, 200, 200]
    assert rung_steps(2, 0, 3, 3) == 1  # never below one step
    assert split_rung("2,4,6/6@r1") == ("2,4,6/6", 1) and split_rung("2,4,6/6") == ("2,4,6/6", None)


def test_the_ga_and_random_search_at_its_budget_both_finish_under_halving() -> None:
    ga = GeneticSearch(SPACE, 4, 3, seed=0)
    rnd = RandomSearch(SPACE, ga, seed=1)
    lanes = {"ga": Halving(ga, 2, 2), "random": Halving(rnd, 2, 2)}
    searcher = StrategySearcher(lanes)
    done = 0
    while (config := searcher.suggest(f"t{done}")) not in ("FINISHED", None):
        text, rung = split_rung(config["candidate"])
        searcher.on_trial_complete(
            f"t{done}", {"fitness": score(SPACE.read(text), rung or 0), "seconds": 0.1}
        )
        done += 1
    assert config == "FINISHED" and ga.finished and rnd.finished
    assert len(rnd.memo) == len(ga.memo)  # random search at the GA's budget, counted in candidates
