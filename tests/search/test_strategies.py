"""The layer-mapping GA: DEAP operators under constraints, de-duplication, state, and Ray Tune trials
recorded in Optuna."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import ray.cloudpickle as cloudpickle

from distilnas.results.storage import open_storage
from distilnas.search.strategies import (
    FAILED,
    STRATEGIES,
    Constrained,
    Deduplicated,
    Evaluations,
    FixedSearch,
    GeneticSearch,
    RandomSearch,
    genome_of,
    key,
    random_genomes,
    wrap,
)
from distilnas.search.tune import Recorder, StrategySearcher, init_ray, run_trials
from distilnas.spaces.mapping import LayerMapping
from distilnas.spaces.mapping_space import MappingSpace

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers get this module's functions

TARGET = [2, 5, 8]


def synthetic(mapping: str) -> dict[str, float]:
    """A known optimum: minus the distance to TARGET (best 0 at 2,5,8/8)."""
    genome = [t or 0 for t in LayerMapping.from_string(mapping).targets]
    return {"fitness": -float(sum(abs(a - b) for a, b in zip(genome, TARGET, strict=True))), "toy": 1.0}


ALL = ["monotone", "no_repeats", "supervised"]


@pytest.mark.parametrize("names", [ALL, ["monotone"], ["no_repeats"], ["supervised"], []])
def test_every_genome_the_ga_asks_for_keeps_the_constraints(names: list[str]) -> None:
    space = MappingSpace.build(4, 6, names)
    ga = GeneticSearch(space, population=10, generations=6, mutation=0.9, seed=1)
    while not ga.finished:
        for g in ga.ask():
            assert space.valid(g), (names, g)
            ga.tell(g, float(sum(g)))
        ga.advance()


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
    base = FixedSearch(
        space, [space.encode(LayerMapping.uniform(3, 8)), space.encode(LayerMapping.last(3, 8))]
    )
    rnd = RandomSearch(space, ga, seed=1)
    recorder = Recorder(open_storage(None, tmp_path), "mapping")
    searcher = StrategySearcher(
        {"baseline": base, "ga": ga, "random": rnd}, recorder, tmp_path / "state.json"
    )
    init_ray(None, num_cpus=2)
    run_trials(searcher, synthetic, tmp_path, "search")
    best = ga.best()
    assert best is not None and best == (TARGET, 0.0)
    assert base.memo == {"2,5,8": 0.0, "6,7,8": -6.0}  # uniform 2,5,8 and last 6,7,8 against 2,5,8
    assert len(rnd.memo) == len(ga.memo)  # random search at the GA's budget
    # every trial is an Optuna trial, with its per-layer params and scores; no mapping is trained twice
    trials = recorder.study.get_trials()
    evaluated = set(ga.memo) | set(rnd.memo) | set(base.memo)
    assert len(trials) == len(evaluated) == len(searcher.seconds)
    assert {t.user_attrs["mapping"] for t in trials} == {
        str(space.decode(list(map(int, k.split(","))))) for k in evaluated
    }
    assert {t.user_attrs["source"] for t in trials} == {"baseline", "ga", "random"}
    assert recorder.study.best_value == 0.0
    assert recorder.study.best_params == {"student_layer_1": 2, "student_layer_2": 5, "student_layer_3": 8}
    assert len(ga.memo) < space.size()  # found without trying everything
    assert all("score_toy" in t.user_attrs for t in trials)
    state = json.loads((tmp_path / "state.json").read_text())
    assert set(state) == {"baseline", "ga", "random"} and state["ga"]["generation"] == 5
    overhead = searcher.overhead()
    assert overhead["trials"] == len(trials) and overhead["slots"] == 2
    assert 0 < overhead["slot_utilisation"] <= 1


def drive(searcher: StrategySearcher, slots: int) -> list[list[str]]:
    """Tune's loop by hand: fill free slots from suggest(), complete the oldest trial; returns which
    sources ran side by side at each step."""
    live: list[tuple[str, str]] = []
    side_by_side = []
    n = 0
    while True:
        while len(live) < slots:
            config = searcher.suggest(str(n))
            if config is None or config == "FINISHED":
                break
            live.append((str(n), config["candidate"]))
            n += 1
        if not live:
            assert searcher.suggest(str(n)) == "FINISHED"
            return side_by_side
        side_by_side.append([searcher.in_flight[t][0] for t, _ in live])
        trial, mapping = live.pop(0)
        searcher.on_trial_complete(trial, {**synthetic(mapping), "seconds": 1.0})


def test_random_search_fills_the_slots_the_ga_leaves_idle() -> None:
    space = MappingSpace.build(3, 8, ALL)
    ga = GeneticSearch(space, population=3, generations=4, mutation=0.5, seed=0)
    rnd = RandomSearch(space, ga, seed=1)
    searcher = StrategySearcher({"ga": ga, "random": rnd})
    steps = drive(searcher, slots=2)
    assert all(len(s) == 2 for s in steps[:-1])  # with 3 mappings a generation, no slot ever waits
    assert any(s == ["ga", "random"] for s in steps)
    assert len(rnd.memo) == len(ga.memo)
    # the same GA alone sees the same fitnesses, so it ends the same
    alone = GeneticSearch(space, population=3, generations=4, mutation=0.5, seed=0)
    drive(StrategySearcher({"ga": alone}), slots=2)
    assert alone.state_dict() == ga.state_dict()
    # random search draws a fixed seeded stream: its first k mappings are the same for any budget
    assert rnd.ranked() and set(rnd.memo) == {key(g) for g in random_genomes(space, len(ga.memo), 1)}


def test_a_mapping_is_never_trained_twice_across_strategies() -> None:
    space = MappingSpace.build(3, 5, ALL)  # 10 mappings only
    ga = GeneticSearch(space, population=4, generations=4, seed=0)
    base = FixedSearch(space, [space.encode(LayerMapping.uniform(3, 5))])
    rnd = RandomSearch(space, ga, seed=5)
    searcher = StrategySearcher({"baseline": base, "ga": ga, "random": rnd})
    drive(searcher, slots=3)
    assert len(ga.memo) == len(rnd.memo) == 8
    # 17 evaluations, but only the 9 distinct mappings among them were trained
    assert len(searcher.seconds) == len(set(ga.memo) | set(rnd.memo) | set(base.memo)) == 9


def test_ga_can_start_from_the_baselines() -> None:
    space = MappingSpace.build(3, 8, ALL)
    plain = GeneticSearch(space, population=6, generations=2, seed=4)
    uniform, last = space.encode(LayerMapping.uniform(3, 8)), space.encode(LayerMapping.last(3, 8))
    seeded = GeneticSearch(space, population=6, generations=2, seed=4, initial=[uniform, last, uniform])
    assert seeded.population[:2] == [uniform, last] and len(seeded.population) == 6
    assert len({key(g) for g in seeded.population}) == 6
    assert plain.population == GeneticSearch(space, population=6, generations=2, seed=4).population


# ---------------------------------------------------------------------- every strategy, and the middleware


def drive_alone(strategy, stop_after: int | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    """Ask / tell a strategy to its end (or for ``stop_after`` generations) on the synthetic fitness;
    the keys it asked for, in order."""
    asked: list[str] = []
    generations = 0
    while not strategy.finished and generations != stop_after:
        for g in strategy.ask():
            asked.append(key(g))
            strategy.tell(g, synthetic(strategy.space.describe(g))["fitness"])
        if strategy.generation_done():
            strategy.advance()
            generations += 1
    return asked


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_asks_valid_new_candidates_is_seeded_and_resumes(name: str) -> None:
    space = MappingSpace.build(3, 6, ALL)  # 20 mappings: within the budget, so exhaustive search may run
    asked = drive_alone(STRATEGIES[name](space, 20, 7))
    assert asked and len(asked) == len(set(asked))  # never the same candidate twice
    assert all(space.valid(genome_of(k)) for k in asked)
    assert len(asked) <= 20 + 8  # about its budget (a GA generation may not divide it)
    again = STRATEGIES[name](space, 20, 7)
    assert drive_alone(again) == asked  # the same seed, the same candidates
    half = STRATEGIES[name](space, 20, 7)
    first = drive_alone(half, stop_after=1)
    resumed = STRATEGIES[name](space, 20, 99)
    resumed.load_state_dict(json.loads(json.dumps(half.state_dict())))
    assert first + drive_alone(resumed) == asked
    assert resumed.memo.ranked() == again.memo.ranked()


def test_deduplicated_answers_known_candidates_without_an_evaluation() -> None:
    space = MappingSpace.build(3, 8, ALL)
    fixed = FixedSearch(space, [[1, 2, 3], [2, 5, 8], [6, 7, 8]])
    known: Evaluations = {"2,5,8": 0.0, "6,7,8": None}  # one scored, one failed, earlier
    lane = Deduplicated(fixed, known)
    assert lane.ask() == [[1, 2, 3]]  # the others are answered from memory
    assert fixed.memo == {"2,5,8": 0.0, "6,7,8": FAILED}
    lane.tell([1, 2, 3], -9.0)
    assert known["1,2,3"] == -9.0 and lane.generation_done()


def test_constrained_fails_candidates_that_break_a_rule_without_an_evaluation() -> None:
    space = MappingSpace.build(3, 8, ALL)
    fixed = FixedSearch(space, [[1, 2, 3], [2, 5, 8]])
    lane = Constrained(fixed, {"uses_the_last_layer": lambda g: g[-1] == 8})
    assert lane.ask() == [[2, 5, 8]]
    assert fixed.memo == {"1,2,3": FAILED} and lane.rejected == {"1,2,3": ["uses_the_last_layer"]}


def test_retried_hands_a_failure_out_again_then_counts_it() -> None:
    space = MappingSpace.build(3, 8, ALL)
    fixed = FixedSearch(space, [[2, 5, 8]])
    lane = wrap(fixed, known={}, retries=2)
    for attempt in range(3):
        assert lane.ask() == [[2, 5, 8]], attempt
        lane.tell([2, 5, 8], None)
    assert lane.ask() == [] and fixed.memo == {"2,5,8": FAILED}  # the third failure counts


def failing(mapping: str) -> dict[str, float]:
    """The synthetic fitness, except that the uniform mapping raises."""
    if mapping == "2,5,8/8":
        raise RuntimeError("a damaged cache")
    return synthetic(mapping)


def test_a_trial_that_raises_under_ray_tune_fails_alone(tmp_path: Path) -> None:
    space = MappingSpace.build(3, 8, ALL)
    lane = FixedSearch(space, [[2, 5, 8], [1, 2, 3], [6, 7, 8]])
    recorder = Recorder(open_storage(None, tmp_path), "mapping")
    searcher = StrategySearcher({"fixed": lane}, recorder, retries=1)
    init_ray(None, num_cpus=2)
    run_trials(searcher, failing, tmp_path, "search")  # the run goes on past the failures
    assert lane.memo == {"2,5,8": FAILED, "1,2,3": -9.0, "6,7,8": -6.0}
    fails = [t for t in recorder.study.get_trials() if t.state.name == "FAIL"]
    assert len(fails) == 2 and {t.user_attrs["error"] for t in fails} == {"RuntimeError: a damaged cache"}


def test_a_failed_candidate_is_tried_again_in_the_run_and_after_a_resume(tmp_path: Path) -> None:
    space = MappingSpace.build(3, 8, ALL)
    recorder = Recorder(open_storage(None, tmp_path), "mapping")
    lane = FixedSearch(space, [[2, 5, 8], [1, 2, 3]])
    searcher = StrategySearcher({"fixed": lane}, recorder, retries=1)
    first = searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"error": "RuntimeError: worker killed", "seconds": 1.0})
    assert searcher.suggest("t2") == first  # the same candidate again: one retry
    searcher.on_trial_complete("t2", error=True)
    assert lane.memo[key(space.read(first["candidate"]))] == FAILED  # its retries are spent
    fails = [t for t in recorder.study.get_trials() if t.state.name == "FAIL"]
    assert fails[0].user_attrs["error"] == "RuntimeError: worker killed" and len(fails) == 2
    # a new search on the same storage: a candidate failed once is tried again, twice (spent) is not
    other = Recorder(open_storage(None, tmp_path / "b"), "mapping")
    other.candidate(space, [1, 2, 3], None, {"error": "x"}, "mapping")
    other.candidate(space, [2, 5, 8], None, {"error": "x"}, "mapping")
    other.candidate(space, [2, 5, 8], None, {"error": "y"}, "mapping")
    again = StrategySearcher({"fixed": FixedSearch(space, [[2, 5, 8], [1, 2, 3]])}, other, retries=1)
    assert again.known == {"2,5,8": None}
    assert again.suggest("u1")["candidate"] == "1,2,3/8"
