"""The layer-mapping GA: DEAP operators under constraints, de-duplication, state, and Ray Tune trials
recorded in Optuna."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import ray.cloudpickle as cloudpickle

from distilnas.distill.errors import UserError
from distilnas.results.storage import open_storage
from distilnas.search.ga import GeneticSearch, key
from distilnas.search.tune_runner import MappingSearcher, TrialRecorder, init_ray, run_searcher
from distilnas.spaces.mapping import LayerMapping
from distilnas.spaces.mapping_space import MappingSpace, mut_reset, mut_shift

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers get this module's functions

TARGET = [2, 5, 8]


def synthetic(mapping: str) -> dict[str, float]:
    """A known optimum: minus the distance to TARGET (best 0 at 2,5,8/8)."""
    genome = [t or 0 for t in LayerMapping.from_string(mapping).targets]
    return {"fitness": -float(sum(abs(a - b) for a, b in zip(genome, TARGET, strict=True))), "toy": 1.0}


ALL = ["monotone", "no_repeats", "supervised"]


@pytest.mark.parametrize("names", [ALL, ["monotone"], ["no_repeats"], ["supervised"], []])
def test_operators_keep_constraints(names: list[str]) -> None:
    space = MappingSpace.build(4, 6, names)
    ga = GeneticSearch(space, population=10, generations=6, mutation=0.9, seed=1)
    rng = random.Random(0)
    for _ in range(200):
        g = space.sample(rng)
        assert space.valid(g)
        assert all(0 <= x <= 6 for x in mut_reset(g, 6, 0.5, rng) + mut_shift(g, 6, 0.5, rng))
    while not ga.finished:
        for g in ga.ask():
            assert space.valid(g), (names, g)
            ga.tell(g, float(sum(g)))
        ga.advance()


def test_space_counts_and_errors() -> None:
    assert MappingSpace.build(3, 6, ALL).size() == 20  # C(6, 3) strictly increasing mappings
    assert MappingSpace.build(2, 3, []).size() == 16  # (N + 1)^M
    with pytest.raises(UserError, match="deeper than its 3-layer teacher"):
        MappingSpace.build(4, 3, ALL)
    with pytest.raises(UserError, match="unknown mapping constraints"):
        MappingSpace.build(2, 3, ["sorted"])


def test_ga_is_seeded_deduplicated_and_resumable() -> None:
    space = MappingSpace.build(3, 6, ALL)

    def run(ga: GeneticSearch, stop_at: int | None = None) -> GeneticSearch:
        evaluated: list[str] = []
        while not ga.finished and ga.generation != stop_at:
            for g in ga.ask():
                assert key(g) not in evaluated  # never evaluated twice
                evaluated.append(key(g))
                ga.tell(g, synthetic(str(space.decode(g)))["fitness"])
            ga.advance()
        return ga

    a = run(GeneticSearch(space, population=6, generations=5, seed=3))
    b = run(GeneticSearch(space, population=6, generations=5, seed=3))
    assert a.state_dict() == b.state_dict()
    half = run(GeneticSearch(space, population=6, generations=5, seed=3), stop_at=2)
    resumed = GeneticSearch(space, population=6, generations=5, seed=99)
    resumed.load_state_dict(half.state_dict())
    assert run(resumed).state_dict() == a.state_dict()
    assert a.logbook[-1]["best"] >= a.logbook[0]["best"]


def test_ga_under_ray_tune_finds_the_optimum(tmp_path: Path) -> None:
    space = MappingSpace.build(3, 8, ALL)  # 56 mappings; the GA sees at most 32
    ga = GeneticSearch(space, population=8, generations=5, mutation=0.5, seed=0)
    recorder = TrialRecorder(open_storage(None, tmp_path), "mapping", (3, 8))
    searcher = MappingSearcher(ga, recorder, tmp_path / "ga_state.json")
    init_ray(None, num_cpus=2)
    run_searcher(searcher, synthetic, tmp_path, "ga", cpus_per_trial=1)
    best = ga.best()
    assert best is not None and best == (TARGET, 0.0)
    # every evaluation is an Optuna trial, with its per-layer params and scores
    trials = recorder.study.get_trials()
    assert len(trials) == len(ga.memo)
    assert {t.user_attrs["mapping"] for t in trials} == {
        str(space.decode(list(map(int, k.split(","))))) for k in ga.memo
    }
    assert recorder.study.best_value == 0.0
    assert recorder.study.best_params == {"student_layer_1": 2, "student_layer_2": 5, "student_layer_3": 8}
    assert len(ga.memo) < space.size()  # found without trying everything
    assert all("score_toy" in t.user_attrs for t in trials)
    assert (tmp_path / "ga_state.json").is_file() and (tmp_path / "optuna.journal").is_file()
