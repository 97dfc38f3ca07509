"""The joint search of a plain BERT student's shape and its layer mapping, end to end.

NSGA-II (:class:`~distilnas.search.strategies.NSGA2Search`) over :class:`~distilnas.spaces.joint_space.
JointSpace` on (proxy score up, parameters down, predicted latency down); every valid student once when
the space fits the budget. Proxy evaluations are Ray Tune trials through the same searcher as the
mapping search (de-duplicated, retried, resumable), each in the run's Optuna storage as a three-objective
trial (study ``<prefix>-joint``), under successive halving when the proxy has rungs (the front is then
chosen among full-proxy scores). Budgets (``max_params``, ``max_latency_ms``) exclude a student before any
trial.

Stage folder (``output_dir/search-joint``): ``config.json``, ``proxy.json``, ``latency.json`` (the table
of plain BERT layers timed at ``final.latency``'s setting), ``search_state.json``, ``results.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PretrainedConfig

from distilnas.distill.errors import UserError
from distilnas.distill.measure import round_robin
from distilnas.distill.teacher import model_config, resolve
from distilnas.distill.utils import atomic_write_json
from distilnas.proxies.bert_latency import (
    BertLatencyTable,
    measure_bert_table,
    plain_encoder,
    reference_encoders,
)
from distilnas.proxies.latency import mape
from distilnas.proxies.mapping_fitness import JointFitness
from distilnas.results.pareto import hypervolume, non_dominated_sort
from distilnas.search.config import RunConfig
from distilnas.search.rundir import Folder, RunFolder
from distilnas.search.stages.mapping import halved, proxy_for, search_with, signal
from distilnas.search.strategies import (
    FAILED,
    Constrained,
    Halving,
    NSGA2Search,
    Strategy,
    exhaustive,
    genome_of,
    wrap,
)
from distilnas.search.strategies.fixed import FixedSearch
from distilnas.search.strategies.middleware import Middleware
from distilnas.search.tune import Recorder, start_ray
from distilnas.spaces.base import Genome
from distilnas.spaces.joint_space import JointSpace

log = logging.getLogger(__name__)

OBJECTIVES = ("proxy score", "parameters", "predicted latency (ms)")
LATENCY = "latency.json"


def joint_space(cfg: RunConfig, teacher: PretrainedConfig | None = None) -> JointSpace:
    """The config's joint space over the teacher's config (no weights needed)."""
    j = cfg.search.joint
    teacher = teacher or model_config(resolve(cfg.teacher.name))
    return JointSpace(
        list(j.layers),
        list(j.hidden),
        list(j.heads),
        list(j.intermediate),
        list(j.init),
        teacher,
        list(cfg.search.mapping.constraints),
        list(j.embedding),
    )


def latency_table(cfg: RunConfig, space: JointSpace, stage: Folder) -> BertLatencyTable:
    """The stage's latency table: read back when it was timed at this setting on this kind of device,
    else timed now (every width the space has; written by :func:`run_joint_search` once it is accepted)."""
    path = stage / LATENCY
    if path.is_file():
        table = BertLatencyTable.from_json(json.loads(path.read_text()))
        if table.matches(cfg.final.latency):
            return table
        log.info("%s was timed at another setting or device: timing it again", path)
    return measure_bert_table(space.widths(), space.teacher, cfg.final.latency, tables=space.tables())


class Costs:
    """A candidate's parameters and predicted latency (the objectives NSGA-II minimises)."""

    def __init__(self, space: JointSpace, table: BertLatencyTable) -> None:
        self.space, self.table = space, table

    def __call__(self, genome: Genome) -> tuple[float, float]:
        return float(self.space.params(genome)), self.table.predict(self.space.decode(genome).shape)


class Untagged:
    """Costs of a rung-tagged genome (the rung costs nothing)."""

    def __init__(self, costs: Costs) -> None:
        self.costs = costs

    def __call__(self, genome: Sequence[int]) -> tuple[float, float]:
        return self.costs(list(genome[:-1]))


def rejected(lane: Strategy) -> dict[str, list[str]]:
    """The students a budget excluded, with the budgets each broke."""
    while isinstance(lane, Middleware):
        if isinstance(lane, Constrained):
            return dict(lane.rejected)
        lane = lane.inner
    return {}


class Within:
    """A budget as a rule: objective ``index`` of a candidate's costs is at most ``limit``."""

    def __init__(self, costs: Costs, index: int, limit: float) -> None:
        self.costs, self.index, self.limit = costs, index, limit

    def __call__(self, genome: Sequence[int]) -> bool:
        return self.costs(list(genome))[self.index] <= self.limit


def budget_rules(cfg: RunConfig, costs: Costs) -> dict[str, Callable[[Sequence[int]], bool]]:
    """The budgets as rules: a student above one is never evaluated."""
    j = cfg.search.joint
    rules: dict[str, Callable[[Sequence[int]], bool]] = {}
    if j.max_params is not None:
        rules[f"max_params={j.max_params}"] = Within(costs, 0, j.max_params)
    if j.max_latency_ms is not None:
        rules[f"max_latency_ms={j.max_latency_ms}"] = Within(costs, 1, j.max_latency_ms)
    return rules


def affordable(cfg: RunConfig, space: JointSpace, table: BertLatencyTable) -> None:
    """Refuse a latency budget no student of the space meets (the parameter budget is checked by the
    preflight: it needs no table)."""
    limit = cfg.search.joint.max_latency_ms
    if limit is None:
        return
    fastest = min(space.all_shapes(), key=lambda g: table.predict(space.decode(g).shape))
    ms = table.predict(space.decode(fastest).shape)
    if ms > limit:
        raise UserError(
            f"search.joint.max_latency_ms: {limit} is below the fastest student "
            f"({space.describe(fastest)}, {ms:.2f} ms predicted)"
        )


def run_joint_search(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """NSGA-II over shape and mapping (or every student, when the space fits the budget); the results."""
    run = RunFolder.of(cfg)
    stage = run.joint
    stage.check(cfg, resume)
    j = cfg.search.joint
    if cfg.data.corpus is None and cfg.search.mapping.mode == "task-agnostic":
        raise UserError("data.corpus: the task-agnostic joint search needs a corpus")
    teacher = model_config(resolve(cfg.teacher.name))
    space = joint_space(cfg, teacher)
    table = latency_table(cfg, space, stage)
    affordable(cfg, space, table)  # a latency budget no student meets: refused before anything is written
    storage = run.storage(cfg.storage.url)
    start_ray(cfg.ray, address)
    stage.record(cfg)
    atomic_write_json(stage / LATENCY, table.to_json())
    costs = Costs(space, table)

    recorder = Recorder(storage, run.studies.joint, ("maximize", "minimize", "minimize"), OBJECTIVES)
    prepared = proxy_for(cfg, stage.path)
    size = space.size()
    search: NSGA2Search | FixedSearch
    if j.exhaustive(size):
        log.info(
            "%d valid students, within the budget of %d evaluations: each evaluated once", size, j.budget
        )
        search, mode = exhaustive(space, j.budget), "exhaustive"
    else:
        search = NSGA2Search(space, j.population, j.generations, costs, j.crossover, j.mutation, cfg.seed)
        mode = "nsga2"
    rules = budget_rules(cfg, costs)
    lane: Strategy = wrap(search, rules=rules) if rules else search
    lane = halved({mode: lane}, cfg)[mode]
    recorded = costs if cfg.proxy.rungs == 1 else Untagged(costs)
    searcher = search_with(
        {mode: lane}, recorder, JointFitness(prepared), stage.path, stage / "search_state.json", cfg.ray,
        name="student", costs=recorded,
    )  # fmt: skip

    front = front_of(comparable(search, lane), costs)
    timed_front, drift = measured_front(cfg, space, costs, table, front) if front else ([], 1.0)
    results: dict[str, Any] = {
        "mode": mode,
        "space": {"size": size, "layers": j.layers, "hidden": j.hidden, "heads": j.heads,
                  "intermediate": j.intermediate, "embedding": j.embedding, "init": j.init},
        "budget": j.budget,
        "objectives": list(OBJECTIVES),
        "evaluations": sum(1 for v in search.memo.values() if v != FAILED),  # students (of any rung)
        "rejected": rejected(lane),
        "front": timed_front,
        "hypervolume": {
            "reference": REFERENCE, "per_generation": generation_volumes(search, lane, space, costs),
        },
        "trials": len(searcher.known),
        "trial_seconds": searcher.seconds,
        "ray": searcher.overhead(),
    }  # fmt: skip
    results["front_params_span"] = span([s["params"] for s in results["front"]])
    predicted = [s["predicted_ms"] for s in results["front"]]
    measured = [s["measured_ms"] for s in results["front"]]
    results["latency"] = {
        "mape_percent": mape(predicted, measured) if measured else None,
        "drift": drift,
        "mape_drift_corrected_percent": mape([p * drift for p in predicted], measured) if measured else None,
        "setting": {k: v for k, v in table.to_json().items() if k not in ("entries", "tables")},
    }
    results["signal"] = signal(cfg, recorder, "student")
    stage.write_results(results)
    return results


def front_of(scored: list[tuple[Genome, float]], costs: Costs) -> list[tuple[Genome, float]]:
    """The non-dominated students of ``scored`` (fitness up, costs down), smallest first."""
    if not scored:
        return []
    points = [(-f, *costs(g)) for g, f in scored]
    front = [scored[i] for i in non_dominated_sort(points)[0]]
    return sorted(front, key=lambda x: (costs(x[0]), x[0]))


def comparable(
    search: NSGA2Search | FixedSearch, lane: Strategy, upto: int | None = None
) -> list[tuple[Genome, float]]:
    """The first ``upto`` evaluations (all: None) that did not fail and, under successive halving,
    reached the top rung (only full-proxy scores compare)."""
    top = lane.finalists() if isinstance(lane, Halving) else None
    keys = list(search.memo)[:upto]
    return [
        (genome_of(k), search.memo[k]) for k in keys if search.memo[k] != FAILED and (top is None or k in top)
    ]


REFERENCE = [0.0, 1.0, 1.0]
"""Hypervolume's reference point over normalised objectives: (-score/100, parameters and predicted latency
as fractions of the space's largest student's)."""


class Normalised:
    """A candidate's objectives on the hypervolume's scale (:data:`REFERENCE`)."""

    def __init__(self, space: JointSpace, costs: Costs) -> None:
        self.costs = costs
        largest = costs(max(space.all_shapes(), key=costs))
        self.scale = [1.0001 * c for c in largest]  # the largest student still adds a sliver

    def __call__(self, genome: Genome, fitness: float) -> list[float]:
        return [-fitness / 100, *(c / s for c, s in zip(self.costs(genome), self.scale, strict=True))]


def generation_volumes(
    search: NSGA2Search | FixedSearch, lane: Strategy, space: JointSpace, costs: Costs
) -> list[dict[str, Any]]:
    """The front's hypervolume after each generation (NSGA-II), or once (exhaustive): the memo keeps the
    order of evaluation, so the candidates known after a generation are its first ``evaluated``."""
    scale = Normalised(space, costs)
    book = (
        search.logbook
        if isinstance(search, NSGA2Search)
        else [{"generation": 0, "evaluated": len(search.memo)}]
    )
    out = []
    for entry in book:
        front = front_of(comparable(search, lane, entry["evaluated"]), costs)
        points = [scale(g, f) for g, f in front]
        out.append(
            {
                "generation": entry["generation"],
                "front": len(front),
                "evaluated": entry["evaluated"],
                "hypervolume": hypervolume(points, REFERENCE),
            }
        )
    return out


def measured_front(
    cfg: RunConfig,
    space: JointSpace,
    costs: Costs,
    table: BertLatencyTable,
    front: list[tuple[Genome, float]],
) -> tuple[list[dict[str, Any]], float]:
    """Each front student with its proxy score, parameters, predicted latency and measured latency (its
    encoder built and timed as the final stage times students, in rounds beside the table's references),
    and the machine's drift since the table was timed (:meth:`BertLatencyTable.drift`)."""
    torch.manual_seed(0)
    candidates = [space.decode(genome) for genome, _ in front]
    models = [plain_encoder(c.shape, space.teacher) for c in candidates]
    times = round_robin([*models, *reference_encoders(table, space.teacher)], cfg.final.latency, 3)
    measured, drift = times[: len(models)], table.drift(times[len(models) :])
    out = []
    for (genome, fitness), candidate, ms in zip(front, candidates, measured, strict=True):
        params, predicted = costs(genome)
        out.append(
            {
                "student": str(candidate),
                "proxy": fitness,
                "params": int(params),
                "predicted_ms": predicted,
                "measured_ms": ms,
            }
        )
    return out, drift


def span(values: list[float]) -> float | None:
    return max(values) / min(values) if values else None
