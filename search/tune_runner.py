"""Ray Tune and Optuna plumbing shared by the searches.

- :class:`MappingSearcher` is a Ray Tune ``Searcher`` around search strategies (the GA of
  :mod:`~distilnas.search.ga`, the baselines of :mod:`~distilnas.search.strategies`): each fitness
  evaluation is a Tune trial with its own resources, a generation runs in parallel, and generations are
  synchronous (``suggest`` waits until the generation is complete before breeding).
- :class:`TrialRecorder` writes every finished trial into the run's Optuna study (a JournalStorage file
  by default, an RDB URL when configured): the single source of truth for what was evaluated.
"""

from __future__ import annotations

import json
import logging
import socket
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from distilnas.distill.errors import UserError
from distilnas.distill.utils import atomic_write_json
from distilnas.search.ga import key
from distilnas.search.strategies import Strategy
from distilnas.spaces.mapping import LayerMapping
from distilnas.spaces.mapping_space import Genome

log = logging.getLogger(__name__)

optuna.logging.set_verbosity(optuna.logging.WARNING)


class TrialRecorder:
    """Records mapping evaluations as Optuna trials: params per student layer, fitness, per-task scores."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str, space_dims: tuple[int, int]):
        self.study = optuna.create_study(
            study_name=study_name, storage=storage, direction="maximize", load_if_exists=True
        )
        self.student_layers, self.teacher_layers = space_dims

    def record(self, mapping: LayerMapping, fitness: float | None, attrs: dict[str, Any]) -> None:
        params = {f"student_layer_{m}": t or 0 for m, t in enumerate(mapping.targets, start=1)}
        dists: dict[str, BaseDistribution] = {
            name: IntDistribution(0, self.teacher_layers) for name in params
        }
        trial = optuna.trial.create_trial(
            state=TrialState.COMPLETE if fitness is not None else TrialState.FAIL,
            value=fitness,
            params=params,
            distributions=dists,
            user_attrs={"mapping": str(mapping), **attrs},
        )
        self.study.add_trial(trial)

    def finished(self, source: str | None = None) -> dict[str, float | None]:
        """Mapping string -> fitness (None: failed) of every recorded trial, optionally of one source."""
        out: dict[str, float | None] = {}
        for t in self.study.get_trials(deepcopy=False):
            if source is not None and t.user_attrs.get("source") != source:
                continue
            if t.state == TrialState.COMPLETE:
                out[t.user_attrs["mapping"]] = t.value
            elif t.state == TrialState.FAIL:
                out.setdefault(t.user_attrs["mapping"], None)
        return out


class TimedSearcher(Searcher):
    """A searcher that keeps each trial's evaluation time and Ray Tune's time around it."""

    def __init__(self, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.started: dict[str, float] = {}  # trial -> when it was suggested
        self.seconds: list[float] = []  # each trial's own evaluation time
        self.overheads: list[float] = []  # each trial's time in Ray Tune beyond its evaluation
        self.wall, self.slots = 0.0, 1  # set by run_searcher

    def _timed(self, trial_id: str, result: dict | None) -> None:
        started = self.started.pop(trial_id, None)
        if started is not None and result and "seconds" in result:
            inner = float(result["seconds"])
            self.seconds.append(inner)
            self.overheads.append(max(0.0, time.perf_counter() - started - inner))

    def overhead(self) -> dict[str, float]:
        """Ray Tune's own cost per trial: the time from suggest to result (scheduling, actor start-up,
        reporting) less the trial's evaluation; and how busy the slots were (generation barriers and
        the last trials of a search leave slots idle, which is the search's cost, not Ray's)."""
        if not self.seconds:
            return {}
        mean = statistics.fmean(self.seconds)
        per_trial = statistics.fmean(self.overheads)
        return {
            "wall_seconds": self.wall,
            "trials": len(self.seconds),
            "slots": self.slots,
            "mean_trial_seconds": mean,
            "median_trial_seconds": statistics.median(self.seconds),
            "overhead_seconds_per_trial": per_trial,
            "median_overhead_seconds": statistics.median(self.overheads),
            "overhead_fraction": per_trial / mean,
            "slot_utilisation": sum(self.seconds) / (self.wall * self.slots) if self.wall else 0.0,
        }


class MappingSearcher(TimedSearcher):
    """Search strategies as one Ray Tune searcher (suggest / on_trial_complete / save / restore).

    ``lanes`` maps a source name to a strategy, in priority order: a free slot goes to the first lane with
    a mapping to evaluate, so while the GA waits for the end of a generation (generations are
    synchronous) random search fills the idle slots. Evaluations are shared: a mapping any lane has
    evaluated (this run, or recorded in the storage before a crash) is answered from memory and never
    trained again (the fitness is a deterministic function of the mapping and the seed).
    """

    def __init__(
        self,
        lanes: dict[str, Strategy],
        recorder: TrialRecorder | None = None,
        checkpoint: Path | None = None,
        metric: str = "fitness",
    ) -> None:
        super().__init__(metric=metric, mode="max")
        self.lanes = lanes
        self.recorder = recorder
        self.checkpoint = checkpoint
        self.known: dict[str, float | None] = {}
        if recorder is not None:
            space = next(iter(lanes.values())).space
            for text, fitness in recorder.finished().items():
                self.known[key(space.encode(LayerMapping.from_string(text)))] = fitness
        self.in_flight: dict[str, tuple[str, Genome]] = {}  # trial -> lane, genome

    def _settle(self, source: str) -> None:
        """Answer what is already known, and breed while the current generation is complete."""
        lane = self.lanes[source]
        while not lane.finished:
            for g in lane.ask():
                if key(g) in self.known:
                    lane.tell(g, self.known[key(g)])
            busy = any(s == source for s, _ in self.in_flight.values())
            if busy or not lane.generation_done():
                return
            lane.advance()
            if self.checkpoint is not None:
                self.save(str(self.checkpoint))

    def all_finished(self) -> bool:
        for source in self.lanes:
            self._settle(source)
        return all(lane.finished for lane in self.lanes.values())

    def suggest(self, trial_id: str) -> dict | None:  # or Searcher.FINISHED (a str), as Tune expects
        if self.all_finished():
            return Searcher.FINISHED  # type: ignore[return-value]
        busy = {key(g) for _, g in self.in_flight.values()}
        for source, lane in self.lanes.items():
            if lane.finished:
                continue
            for g in lane.ask():
                if key(g) not in busy:
                    self.in_flight[trial_id] = (source, g)
                    self.started[trial_id] = time.perf_counter()
                    mapping = str(lane.space.decode(g))
                    return {"mapping": mapping, "source": source, "generation": lane.generation}
        return None  # every lane waits for trials in flight

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        entry = self.in_flight.pop(trial_id, None)
        if entry is None:
            return
        source, genome = entry
        lane = self.lanes[source]
        self._timed(trial_id, result)
        fitness = None if error or not result or self.metric not in result else float(result[self.metric])
        self.known[key(genome)] = fitness
        lane.tell(genome, fitness)
        attrs: dict[str, Any] = {"generation": lane.generation, "source": source}
        if result:
            attrs |= {k: v for k, v in result.items() if k.startswith("score_") or k == "seconds"}
        if self.recorder is not None:
            self.recorder.record(lane.space.decode(genome), fitness, attrs)
        if fitness is None:
            log.warning("trial %s (%s) failed", trial_id, lane.space.decode(genome))
        else:
            log.info(
                "%s, generation %d: %s scored %.2f (%d trials so far)",
                source,
                lane.generation,
                lane.space.decode(genome),
                fitness,
                len(self.seconds),
            )
        self._settle(source)

    def save(self, checkpoint_path: str) -> None:
        atomic_write_json(checkpoint_path, {s: lane.state_dict() for s, lane in self.lanes.items()})

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        for source, lane in self.lanes.items():
            if source in state:
                lane.load_state_dict(state[source])


@dataclass
class Job:
    """One trial of a fixed plan: its config, and the jobs that must succeed before it may start."""

    id: str
    config: dict[str, Any]
    after: tuple[str, ...] = ()


def record_job(
    study: optuna.Study,
    job: Job,
    outcome: dict[str, Any] | None,
    value: float | None,
    params: dict[str, Any] | None = None,
    distributions: dict[str, BaseDistribution] | None = None,
    attrs: dict[str, Any] | None = None,
) -> None:
    """A finished job as an Optuna trial: complete with its value and its outcome (JSON), or failed."""
    user_attrs = {"job": job.id, **(attrs or {})}
    if outcome is not None:
        user_attrs["outcome"] = json.dumps(outcome)
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.COMPLETE if outcome is not None else TrialState.FAIL,
            value=value if outcome is not None else None,
            params=params or {},
            distributions=distributions or {},
            user_attrs=user_attrs,
        )
    )


def finished_jobs(*studies: optuna.Study) -> dict[str, dict[str, Any]]:
    """Job id -> outcome of every job the studies hold as complete (the storage is the record)."""
    return {
        t.user_attrs["job"]: json.loads(t.user_attrs["outcome"])
        for study in studies
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }


class JobSearcher(TimedSearcher):
    """A fixed plan of jobs with dependencies as a Ray Tune searcher (the final stage's trials).

    ``done`` holds the results of jobs finished earlier (from the storage): they never run again. A job
    whose dependency failed is skipped. ``on_result(job, result)`` records each finished job (None:
    failed).
    """

    def __init__(
        self,
        jobs: list[Job],
        done: Mapping[str, dict[str, Any] | None],
        on_result: Callable[[Job, dict[str, Any] | None], None],
    ) -> None:
        super().__init__(metric="score", mode="max")
        self.jobs = {j.id: j for j in jobs}
        self.results: dict[str, dict[str, Any] | None] = {k: v for k, v in done.items() if k in self.jobs}
        self.on_result = on_result
        self.in_flight: dict[str, str] = {}  # trial -> job id

    def _ready(self, job: Job) -> bool | None:
        """True: may start; False: waits; None: a dependency failed, so it never will."""
        if any(a in self.results and self.results[a] is None for a in job.after):
            return None
        return all(a in self.results for a in job.after)

    def suggest(self, trial_id: str) -> dict | None:
        waiting = False
        running = set(self.in_flight.values())
        for job in self.jobs.values():
            if job.id in self.results or job.id in running:
                continue
            ready = self._ready(job)
            if ready is None:
                self.results[job.id] = None
                log.warning("%s skipped: a job it needs failed", job.id)
                continue
            if ready:
                self.in_flight[trial_id] = job.id
                self.started[trial_id] = time.perf_counter()
                return {"job": job.id, **job.config}
            waiting = True
        if waiting or self.in_flight:
            return None
        return Searcher.FINISHED  # type: ignore[return-value]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        job_id = self.in_flight.pop(trial_id, None)
        if job_id is None:
            return
        self._timed(trial_id, result)
        outcome = None
        if not error and result and "outcome" in result:
            outcome = {**json.loads(result["outcome"]), "seconds": float(result["seconds"])}
        self.results[job_id] = outcome
        self.on_result(self.jobs[job_id], outcome)
        if outcome is None:
            log.warning("%s failed", job_id)
        else:
            log.info(
                "%s done in %.0f s (%d of %d jobs)",
                job_id,
                outcome["seconds"],
                len(self.results),
                len(self.jobs),
            )


def job_trial(
    config: dict[str, Any], fitness: Callable[[dict[str, Any]], dict[str, Any]], threads: int = 1
) -> None:
    """The Tune trainable of a job: run it, report what it returns and how long it took."""
    import torch
    from ray import tune

    torch.set_num_threads(threads)
    start = time.perf_counter()
    out = fitness(config)
    # the job's own figures travel as one JSON string: Tune adds (and flattens) keys of its own
    tune.report(
        {
            "score": float(out.get("score", 0.0)),
            "outcome": json.dumps(out),
            "seconds": time.perf_counter() - start,
        }
    )


def mapping_trial(
    config: dict[str, Any], fitness: Callable[[str], dict[str, float]], threads: int = 1
) -> None:
    """The Tune trainable: evaluate one mapping, report its fitness and how long it took."""
    import torch
    from ray import tune

    torch.set_num_threads(threads)  # as many as the trial's CPUs: parallel trials must not oversubscribe
    start = time.perf_counter()
    scores = fitness(config["mapping"])
    tune.report(
        {
            "fitness": scores["fitness"],
            **{f"score_{k}": v for k, v in scores.items() if k != "fitness"},
            "seconds": time.perf_counter() - start,
        }
    )


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Start Ray here (no address) or join a cluster; an unreachable address is a clear error."""
    import ray

    if ray.is_initialized():
        return
    if address and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise UserError(f"ray.address {address!r}: cannot connect ({exc})") from None
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"ray.address {address!r}: cannot connect ({exc})") from None


def trial_slots(cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None) -> int:
    """How many trials the Ray cluster runs at once."""
    import ray

    res = ray.cluster_resources()
    slots = int(res.get("CPU", 1) // cpus_per_trial) if cpus_per_trial else 1 << 30
    if gpus_per_trial:
        slots = min(slots, int(res.get("GPU", 0) // gpus_per_trial))
    if max_concurrent:
        slots = min(slots, max_concurrent)
    return max(1, slots)


def run_searcher(
    searcher: TimedSearcher,
    fitness: Callable[[Any], dict[str, Any]],
    run_dir: Path,
    name: str,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_concurrent: int | None = None,
    max_failures: int = 1,
    trainable: Callable[..., None] | None = None,
) -> float:
    """Run the search to the end under Ray Tune; returns the wall time in seconds.

    At most as many trials as the cluster has slots are live (so none waits in Ray's queue), and trial
    actors are reused: a trial's process keeps its imports and caches for the next.
    """
    from ray import tune

    searcher.slots = trial_slots(cpus_per_trial, gpus_per_trial, max_concurrent)
    trainable = tune.with_resources(
        tune.with_parameters(
            trainable or mapping_trial, fitness=fitness, threads=max(1, int(cpus_per_trial))
        ),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1,
            max_concurrent_trials=searcher.slots,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            storage_path=str((run_dir / "ray").resolve()),
            name=name,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=0,
        ),
    )
    start = time.perf_counter()
    tuner.fit()
    searcher.wall = time.perf_counter() - start
    return searcher.wall
