"""The layer-mapping search, end to end: proxies, baselines, the GA and random search under Ray Tune,
every trial in Optuna, a resumable state, and a report.

Run folder (``output_dir/search-mapping``): ``config.json`` (the run's config and hash), ``proxy.json``
(the prepared proxy setting), ``ga_state.json`` (the GA after each generation), ``optuna.journal`` (every
trial, unless an RDB URL is configured), ``results.json`` and ``report.html``, ``search.log``.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilnas.distill.corpus import load_corpus
from distilnas.distill.errors import UserError
from distilnas.distill.teacher import load_config as load_model_config
from distilnas.distill.teacher import resolve
from distilnas.distill.utils import atomic_write_json, atomic_write_text
from distilnas.proxies.mapping_fitness import MappingFitness, prepare
from distilnas.results.storage import open_storage
from distilnas.search.config import RayConfig, RunConfig
from distilnas.search.ga import GeneticSearch, key
from distilnas.search.tune_runner import MappingSearcher, TrialRecorder, init_ray, run_searcher
from distilnas.spaces.mapping import LayerMapping
from distilnas.spaces.mapping_space import Genome, MappingSpace

log = logging.getLogger(__name__)


@dataclass
class ListSearch:
    """A fixed list of mappings as one generation: the baselines, and random search."""

    space: MappingSpace
    genomes: list[Genome]
    memo: dict[str, float] = field(default_factory=dict)
    generation: int = 0

    def ask(self) -> list[Genome]:
        return [g for g in {key(g): g for g in self.genomes}.values() if key(g) not in self.memo]

    def tell(self, genome: Genome, fitness: float | None) -> None:
        self.memo[key(genome)] = float("-inf") if fitness is None else float(fitness)

    @property
    def finished(self) -> bool:
        return self.generation > 0

    def generation_done(self) -> bool:
        return not self.ask()

    def advance(self) -> None:
        self.generation += 1

    def state_dict(self) -> dict[str, Any]:
        return {"genomes": self.genomes, "memo": self.memo, "generation": self.generation}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.genomes, self.memo, self.generation = state["genomes"], state["memo"], state["generation"]


def random_genomes(space: MappingSpace, n: int, seed: int) -> list[Genome]:
    """``n`` distinct valid mappings drawn uniformly (fewer when the space is smaller)."""
    rng = random.Random(seed)
    seen: dict[str, Genome] = {}
    for _ in range(n * 100):
        g = space.sample(rng)
        seen.setdefault(key(g), g)
        if len(seen) == n:
            break
    return list(seen.values())


def fold_in(strategy: Any, recorder: TrialRecorder, space: MappingSpace, source: str) -> int:
    """Put trials the storage already holds into the strategy's memo: finished trials never run again."""
    done = recorder.finished(source)
    for text, fitness in done.items():
        strategy.tell(space.encode(LayerMapping.from_string(text)), fitness)
    return len(done)


def search_with(
    strategy: Any,
    source: str,
    recorder: TrialRecorder,
    space: MappingSpace,
    fitness: Callable[[str], dict[str, float]],
    run_dir: Path,
    checkpoint: Path | None = None,
    ray: RayConfig | None = None,
) -> MappingSearcher:
    """Run one strategy to its end under Ray Tune. Trials the storage already holds for this source are
    folded in first, so after a crash nothing finished is evaluated again."""
    ray = ray or RayConfig()
    folded = fold_in(strategy, recorder, space, source)
    if folded:
        log.info("%s: %d finished trials taken from the storage", source, folded)
    searcher = MappingSearcher(strategy, recorder, checkpoint, source=source)
    searcher.wall = run_searcher(
        searcher, fitness, run_dir, source, ray.cpus_per_trial, ray.gpus_per_trial, ray.max_concurrent
    )
    return searcher


def tune_overhead(searchers: list[MappingSearcher], slots: int) -> dict[str, float]:
    """Ray Tune's own cost per trial (scheduling, worker start-up, reporting): the wall time the slots
    were held, less the time trials spent evaluating, per trial and relative to a trial's time."""
    wall = sum(s.wall for s in searchers)
    inner = [x for s in searchers for x in s.seconds]
    if not inner:
        return {}
    per_trial = max(0.0, wall * slots - sum(inner)) / len(inner)
    mean = sum(inner) / len(inner)
    return {
        "wall_seconds": wall,
        "trials": len(inner),
        "mean_trial_seconds": mean,
        "overhead_seconds_per_trial": per_trial,
        "overhead_fraction": per_trial / mean,
        "slots": slots,
    }


def check_run_folder(run_dir: Path, cfg: RunConfig, resume: bool) -> None:
    """A run folder belongs to one config: resuming another's, or overwriting one, is refused."""
    record = run_dir / "config.json"
    if record.is_file():
        old = json.loads(record.read_text())["hash"]
        if not resume:
            raise UserError(
                f"{run_dir}: a search already ran here; pass --resume or choose another output_dir"
            )
        if old != cfg.config_hash():
            raise UserError(
                f"{run_dir}: --resume with another config (hash {old}, this one {cfg.config_hash()})"
            )
    elif resume:
        raise UserError(f"{run_dir}: nothing to resume")


def run_mapping_search(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Baselines (uniform, last), the GA, and random search at the GA's budget; returns the results."""
    run_dir = cfg.output_dir / "search-mapping"
    check_run_folder(run_dir, cfg, resume)
    scfg = cfg.search.mapping
    if cfg.data.corpus is None and scfg.mode == "task-agnostic":
        raise UserError("data.corpus: the task-agnostic mapping search needs a corpus")
    source = resolve(cfg.teacher.name)
    n = int(load_model_config(source).num_hidden_layers)
    m = cfg.distill.student.layers
    space = MappingSpace.build(m, n, scfg.constraints)
    storage = open_storage(cfg.storage.url, run_dir)
    init_ray(address or cfg.ray.address)  # an unreachable cluster fails here, before any work
    atomic_write_json(
        run_dir / "config.json", {"hash": cfg.config_hash(), "config": cfg.model_dump(mode="json")}
    )

    recorder = TrialRecorder(storage, f"{cfg.storage.study_prefix}-mapping", (m, n))
    texts = load_corpus(cfg.data.corpus) if cfg.data.corpus is not None else []
    prepared = prepare(
        cfg.teacher,
        cfg.proxy,
        cfg.distill,
        texts,
        cfg.data.glue_dir,
        cfg.cache_dir,
        run_dir,
        scfg.mode,
        cfg.seed,
    )
    fitness = MappingFitness(prepared)

    def run(strategy: Any, source_name: str, checkpoint: Path | None = None) -> MappingSearcher:
        return search_with(strategy, source_name, recorder, space, fitness, run_dir, checkpoint, cfg.ray)

    baselines = {"uniform": LayerMapping.uniform(m, n), "last": LayerMapping.last(m, n)}
    base = ListSearch(space, [space.encode(b) for b in baselines.values()])
    base_searcher = run(base, "baseline")

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
    )
    state_file = run_dir / "ga_state.json"
    if resume and state_file.is_file():
        ga.load_state_dict(json.loads(state_file.read_text())["ga"])
    searcher = run(ga, "ga", state_file)
    searchers = [base_searcher, searcher]

    results: dict[str, Any] = {
        "space": {
            "student_layers": m,
            "teacher_layers": n,
            "constraints": scfg.constraints,
            "size": space.size(),
        },
        "mode": scfg.mode,
        "baselines": {name: base.memo.get(key(space.encode(b))) for name, b in baselines.items()},
        "ga": {
            "best": _named(space, ga.best()),
            "hall_of_fame": [_named(space, x) for x in ga.hall_of_fame()[: max(scfg.hall_of_fame, 5)]],
            "logbook": ga.logbook,
            "evaluations": len(ga.memo),
        },
        "trial_seconds": searcher.seconds,
    }
    if scfg.random_baseline:
        rnd = ListSearch(space, random_genomes(space, len(ga.memo), cfg.seed + 1))
        searchers.append(run(rnd, "random"))
        ranked = sorted(((g, f) for g, f in rnd.memo.items() if f != float("-inf")), key=lambda x: -x[1])
        results["random"] = {
            "best": {
                "mapping": str(space.decode([int(v) for v in ranked[0][0].split(",")])),
                "fitness": ranked[0][1],
            }
            if ranked
            else None,
            "evaluations": len(rnd.memo),
        }
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))
    slots = max(1, int(cpus // cfg.ray.cpus_per_trial))
    if cfg.ray.max_concurrent:
        slots = min(slots, cfg.ray.max_concurrent)
    results["ray"] = tune_overhead(searchers, slots)
    atomic_write_json(run_dir / "results.json", results)
    write_report(run_dir, results, recorder)
    return results


def _named(space: MappingSpace, item: tuple[Genome, float] | None) -> dict[str, Any] | None:
    if item is None:
        return None
    return {"mapping": str(space.decode(item[0])), "fitness": item[1]}


def write_report(run_dir: Path, results: dict[str, Any], recorder: TrialRecorder) -> Path:
    """A self-contained HTML page: convergence per generation and a heatmap of the mappings tried."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    book = results["ga"]["logbook"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("GA convergence (proxy fitness)", "mappings tried"))
    gens = [b["generation"] for b in book]
    fig.add_trace(go.Scatter(x=gens, y=[b["best"] for b in book], name="best", mode="lines+markers"), 1, 1)
    fig.add_trace(go.Scatter(x=gens, y=[b["mean"] for b in book], name="mean", mode="lines+markers"), 1, 1)
    for name, value in results["baselines"].items():
        if value is not None:
            fig.add_hline(y=value, line_dash="dot", annotation_text=name, row=1, col=1)
    if results.get("random", {}).get("best"):
        fig.add_hline(
            y=results["random"]["best"]["fitness"], line_dash="dash", annotation_text="random", row=1, col=1
        )
    trials = [t for t in recorder.study.get_trials(deepcopy=False) if t.value is not None]
    trials.sort(key=lambda t: t.value or 0.0)
    z = [
        [t.params.get(f"student_layer_{i + 1}", 0) for i in range(results["space"]["student_layers"])]
        for t in trials
    ]
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=[f"student layer {i + 1}" for i in range(results["space"]["student_layers"])],
            y=[f"{t.user_attrs['mapping']} ({t.value:.2f}, {t.user_attrs.get('source')})" for t in trials],
            colorscale="Viridis",
            colorbar={"title": "teacher layer"},
        ),
        1,
        2,
    )
    fig.update_xaxes(title_text="generation", row=1, col=1)
    fig.update_layout(title="distilnas layer-mapping search", height=max(500, 18 * len(trials)))
    path = run_dir / "report.html"
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path
