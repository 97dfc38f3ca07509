"""The layer-mapping search, end to end: proxies, baselines, the GA and random search under Ray Tune,
every trial in Optuna, a resumable state, and a report.

Stage folder (``output_dir/search-mapping``): ``config.json`` (the run's config and hash), ``proxy.json``
(the prepared proxy setting), ``search_state.json`` (every strategy's state, written each generation),
``results.json`` and ``report.html``. Every trial is in the run's Optuna storage, study ``<prefix>-mapping``
(``output_dir/optuna.journal`` unless an RDB URL is configured).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distilnas.distill.corpus import load_corpus
from distilnas.distill.errors import UserError
from distilnas.distill.teacher import model_config, resolve
from distilnas.distill.utils import atomic_write_json
from distilnas.proxies.agreement import rank_agreement
from distilnas.proxies.chance import task_chance, uninformative
from distilnas.proxies.config import ProxyConfig
from distilnas.proxies.mapping_fitness import MappingFitness, PreparedProxy, prepare_proxy
from distilnas.results.report import SearchTrial, write_search_report
from distilnas.search.config import RayConfig, RunConfig
from distilnas.search.rundir import RunFolder
from distilnas.search.strategies import (
    FixedSearch,
    GeneticSearch,
    Halving,
    RandomSearch,
    Strategy,
    exhaustive,
    key,
)
from distilnas.search.tune import Recorder, StrategySearcher, run_trials, shelf, start_ray
from distilnas.spaces.base import Genome
from distilnas.spaces.mapping import LayerMapping
from distilnas.spaces.mapping_space import MappingSpace
from distilnas.spaces.rungs import rung_steps, split_rung

log = logging.getLogger(__name__)

UNINFORMATIVE_WARNING = 0.25
"""A search with more than this fraction of evaluations at chance level warns."""


def mapping_space(cfg: RunConfig) -> MappingSpace:
    """The config's mapping space: ``distill.student``'s depth onto the teacher's, under the constraints."""
    n = int(model_config(resolve(cfg.teacher.name)).num_hidden_layers)
    return MappingSpace.build(cfg.distill.student.layers, n, cfg.search.mapping.constraints)


def proxy_for(cfg: RunConfig, folder: Path, proxy: ProxyConfig | None = None) -> PreparedProxy:
    """The proxy setting (``cfg.proxy`` unless another is given: fidelity's full setting) of a search in
    ``folder`` (teachers, data, caches), prepared once in the driver and recorded in ``folder/proxy.json``."""
    texts = load_corpus(cfg.data.corpus) if cfg.data.corpus is not None else None
    prepared = prepare_proxy(
        cfg.teacher,
        proxy or cfg.proxy,
        cfg.distill,
        texts,
        cfg.data.glue_dir,
        cfg.cache_dir,
        folder,
        cfg.search.mapping.mode,
        cfg.seed,
        shelf(RunFolder.of(cfg).artifacts),
    )
    atomic_write_json(folder / "proxy.json", prepared.to_json())
    return prepared


def search_with(
    lanes: dict[str, Strategy],
    recorder: Recorder,
    fitness: Callable[[str], dict[str, float]],
    folder: Path,
    checkpoint: Path | None = None,
    ray: RayConfig | None = None,
    name: str = "mapping",
    costs: Callable[[Genome], Sequence[float]] | None = None,
) -> StrategySearcher:
    """Run the strategies to their end under Ray Tune, as one searcher.

    A checkpoint left by an earlier run is restored first, and the trials the storage holds are known
    before any suggestion: after a crash nothing finished is evaluated again.
    """
    ray = ray or RayConfig()
    searcher = StrategySearcher(lanes, recorder, checkpoint, name=name, retries=ray.retries, costs=costs)
    if checkpoint is not None and checkpoint.is_file():
        searcher.restore(str(checkpoint))
    if searcher.known:
        log.info("%d finished trials taken from the storage", len(searcher.known))
    run_trials(searcher, fitness, folder, "search", ray)
    return searcher


def run_mapping_search(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Baselines (uniform, last) and every valid mapping when the space fits the budget; else the GA and
    random search at its budget. Returns the results."""
    run = RunFolder.of(cfg)
    stage = run.mapping
    stage.check(cfg, resume)
    scfg = cfg.search.mapping
    if cfg.data.corpus is None and scfg.mode == "task-agnostic":
        raise UserError("data.corpus: the task-agnostic mapping search needs a corpus")
    space = mapping_space(cfg)
    m, n = space.student_layers, space.teacher_layers
    storage = run.storage(cfg.storage.url)
    start_ray(cfg.ray, address)  # an unreachable cluster fails here, before any work
    stage.record(cfg)

    recorder = Recorder(storage, run.studies.mapping)
    fitness = MappingFitness(proxy_for(cfg, stage.path))

    baselines = {"uniform": LayerMapping.uniform(m, n), "last": LayerMapping.last(m, n)}
    base = FixedSearch(space, [space.encode(b) for b in baselines.values()])
    size = space.size()
    if scfg.exhaustive(size):
        log.info(
            "%d valid mappings, within the budget of %d evaluations: each evaluated once", size, scfg.budget
        )
        every = exhaustive(space, scfg.budget)
        lanes = halved({"baseline": base, "exhaustive": every}, cfg)
        searcher = search_with(lanes, recorder, fitness, stage.path, stage / "search_state.json", cfg.ray)
        ranked = at_top(every.memo.ranked(), lanes)
        strategies: dict[str, Any] = {
            "exhaustive": {
                "best": _named(space, ranked[0] if ranked else None),
                "ranked": [_named(space, x) for x in ranked],
                "evaluations": len(every.memo),
            }
        }
    else:
        searcher, strategies = _genetic(cfg, space, base, recorder, fitness, stage.path)
    mode = "exhaustive" if "exhaustive" in strategies else "ga"
    results: dict[str, Any] = {
        "space": {
            "student_layers": m,
            "teacher_layers": n,
            "constraints": scfg.constraints,
            "size": size,
        },
        "mode": mode,
        "proxy_mode": scfg.mode,
        "budget": scfg.budget,
        "best": strategies[mode]["best"],  # the searched mapping (random search is a yardstick)
        "baselines": {name: base.memo.get(key(space.encode(b))) for name, b in baselines.items()},
        **strategies,
        "trials": len(searcher.known),
        "trial_seconds": searcher.seconds,
        "ray": searcher.overhead(),
    }
    results["signal"] = signal(cfg, recorder)
    stage.write_results(results)
    trials = [
        SearchTrial(*split_rung(t.user_attrs["mapping"]), float(t.value or 0.0), t.user_attrs.get("source"))
        for t in recorder.complete()
    ]
    write_search_report(stage / "report.html", results, trials)
    return results


def signal(cfg: RunConfig, recorder: Recorder, name: str = "mapping") -> dict[str, Any]:
    """How many of the search's evaluations are uninformative (every task at its chance level), rung by
    rung (``rungs``; the lowest rung's figures also at the top level), with each lower rung's rank
    agreement with the top rung; a warning when over a quarter of the lowest rung's are."""
    p = cfg.proxy
    chance = {t: task_chance(t, cfg.data.glue_dir) for t in p.tasks}
    scores: dict[int, dict[str, dict[str, float]]] = {}
    fitness: dict[int, dict[str, float]] = {}
    for t in recorder.complete():
        text, rung = split_rung(t.user_attrs[name])
        r = p.rungs - 1 if rung is None else rung
        scores.setdefault(r, {})[text] = {
            k.removeprefix("score_"): v for k, v in t.user_attrs.items() if k.startswith("score_")
        }
        fitness.setdefault(r, {})[text] = float(t.values[0])
    top = fitness.get(p.rungs - 1, {})
    rungs = []
    for r in sorted(scores):
        common = [c for c in fitness[r] if c in top]
        agreement = (
            rank_agreement([fitness[r][c] for c in common], [top[c] for c in common])
            if r < p.rungs - 1 and len(common) >= 3
            else {}
        )
        rungs.append(
            {
                "rung": r,
                "general_steps": rung_steps(p.general_steps, r, p.rungs, p.eta),
                "task_steps": rung_steps(p.task_steps, r, p.rungs, p.eta),
                **uninformative(scores[r], chance),
                "kendall_tau_vs_top": agreement.get("kendall_tau"),
            }
        )
    found = {**(rungs[0] if rungs else uninformative({}, chance)), "rungs": rungs}
    if found["fraction"] > UNINFORMATIVE_WARNING:
        log.warning(
            "%d of %d proxy evaluations%s are at chance level (%s): the proxy cannot rank them; a larger"
            " budget should fix it (proxy.general_steps %d -> %d, proxy.task_steps %d -> %d)",
            len(found["uninformative"]),
            found["evaluations"],
            " at the lowest rung" if len(rungs) > 1 else "",
            ", ".join(f"{t} {c.threshold:.2f}" for t, c in chance.items()),
            p.general_steps,
            2 * p.general_steps,
            p.task_steps,
            2 * p.task_steps,
        )
    return found


def at_top(ranked: list[tuple[Genome, float]], lanes: dict[str, Strategy]) -> list[tuple[Genome, float]]:
    """``ranked`` less the candidates that never reached the top rung (their scores, at fewer steps, do
    not compare); all of it without rungs."""
    halving = [lane for lane in lanes.values() if isinstance(lane, Halving)]
    if not halving:
        return ranked
    top = set().union(*(lane.finalists() for lane in halving))
    return [(g, f) for g, f in ranked if key(g) in top]


def halved(lanes: dict[str, Strategy], cfg: RunConfig) -> dict[str, Strategy]:
    """Every lane under successive halving when the proxy has rungs (the baselines only at the top)."""
    p = cfg.proxy
    if p.rungs == 1:
        return lanes
    return {
        name: Halving(lane, p.rungs, p.eta, first=p.rungs - 1 if name == "baseline" else 0)
        for name, lane in lanes.items()
    }


def _genetic(
    cfg: RunConfig,
    space: MappingSpace,
    base: FixedSearch,
    recorder: Recorder,
    fitness: MappingFitness,
    folder: Path,
) -> tuple[StrategySearcher, dict[str, Any]]:
    """The GA (and random search at its budget) beside the baselines; what each found."""
    scfg = cfg.search.mapping
    ga = GeneticSearch(
        space,
        scfg.population,
        scfg.generations,
        scfg.crossover,
        scfg.mutation,
        scfg.tournament,
        scfg.hall_of_fame,
        scfg.crossover_kind,
        cfg.seed,
        initial=base.genomes if scfg.seed_with_baselines else None,
    )
    lanes: dict[str, Strategy] = {"baseline": base, "ga": ga}
    rnd = RandomSearch(space, ga, cfg.seed + 1)
    if scfg.random_baseline:
        lanes["random"] = rnd
    lanes = halved(lanes, cfg)
    searcher = search_with(lanes, recorder, fitness, folder, folder / "search_state.json", cfg.ray)
    hall = at_top(ga.hall_of_fame(), lanes)
    found: dict[str, Any] = {
        "ga": {
            "best": _named(space, hall[0] if hall else None),
            "hall_of_fame": [_named(space, x) for x in hall[: max(scfg.hall_of_fame, 5)]],
            "logbook": ga.logbook,
            "evaluations": len(ga.memo),
        }
    }
    if scfg.random_baseline:
        ranked = at_top(rnd.ranked(), lanes)
        found["random"] = {"best": _named(space, ranked[0]) if ranked else None, "evaluations": len(rnd.memo)}
    return searcher, found


def _named(space: MappingSpace, item: tuple[Genome, float] | None) -> dict[str, Any] | None:
    if item is None:
        return None
    return {"mapping": space.describe(item[0]), "fitness": item[1]}
