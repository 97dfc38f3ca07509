"""Ray Tune searchers: what decides the next trial of every stage.

- :class:`StrategySearcher` drives search strategies (:mod:`distilnas.search.strategies`) over a search
  space: each fitness evaluation is a Tune trial with its own resources, a generation runs in parallel,
  and generations are synchronous (``suggest`` waits until a generation is complete before breeding).
- :class:`JobSearcher` runs a fixed plan of jobs with dependencies (the final stage, the supernet's
  blocks, fidelity re-scoring).

Both keep each trial's evaluation time and Ray Tune's time around it, and hand every finished trial to
the stage's :class:`~distilnas.search.tune.recorder.Recorder`.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from distilnas.distill.utils import atomic_write_json
from distilnas.search.strategies import Deduplicated, Evaluations, Strategy, key
from distilnas.search.tune.recorder import Recorder
from distilnas.spaces.base import Genome

log = logging.getLogger(__name__)

LOST = "the trial's process ended before it reported (killed, or out of memory?): see the Ray logs"


class TimedSearcher(Searcher):
    """A searcher that keeps each trial's evaluation time and Ray Tune's time around it."""

    def __init__(self, metric: str, mode: str, retries: int = 0) -> None:
        super().__init__(metric=metric, mode=mode)
        self.started: dict[str, float] = {}  # trial -> when it was suggested
        self.seconds: list[float] = []  # each trial's own evaluation time
        self.overheads: list[float] = []  # each trial's time in Ray Tune beyond its evaluation
        self.wall, self.slots = 0.0, 1  # set by run_trials
        self.retries = retries
        self.failures: dict[str, int] = {}  # candidate or job -> failed attempts, this run and earlier
        self.nodes: dict[str, int] = {}  # Ray node -> trials it ran (this run)
        self.cache_added: dict[str, dict[str, int]] = {}  # Ray node -> cache folder -> times made there

    def added(self, node: str, folders: Mapping[str, int]) -> None:
        """Count cache folders made on ``node`` (built there, or copied from the run storage)."""
        here = self.cache_added.setdefault(node, {})
        for folder, n in folders.items():
            here[folder] = here.get(folder, 0) + n

    def failed(self, what: str, reason: str) -> bool:
        """Count a failure of ``what``; whether it is tried again (``retries`` times at most)."""
        self.failures[what] = self.failures.get(what, 0) + 1
        again = self.failures[what] <= self.retries
        log.warning("%s failed (%s)%s", what, reason, "; trying it again" if again else "")
        return again

    def _timed(self, trial_id: str, result: dict | None) -> None:
        started = self.started.pop(trial_id, None)
        if result and "node" in result:
            self.nodes[result["node"]] = self.nodes.get(result["node"], 0) + 1
            self.added(result["node"], json.loads(result.get("cache_added") or "{}"))
        if started is not None and result and "seconds" in result:
            inner = float(result["seconds"])
            self.seconds.append(inner)
            self.overheads.append(max(0.0, time.perf_counter() - started - inner))

    def overhead(self) -> dict[str, Any]:
        """Ray Tune's own cost per trial: the time from suggest to result (scheduling, actor start-up,
        reporting) less the trial's evaluation; how busy the slots were (generation barriers and the
        last trials of a search leave slots idle, which is the search's cost, not Ray's); and how many
        trials each Ray node ran, and which cache folders each node made how often (the driver's node
        counts what the driver prepared)."""
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
            "trials_per_node": dict(sorted(self.nodes.items())),
            "cache_added_per_node": {n: dict(sorted(c.items())) for n, c in sorted(self.cache_added.items())},
        }


class StrategySearcher(TimedSearcher):
    """Search strategies as one Ray Tune searcher (suggest / on_trial_complete / save / restore).

    ``lanes`` maps a source name to a strategy, in priority order: a free slot goes to the first lane with
    a candidate to evaluate, so while the GA waits for the end of a generation (generations are
    synchronous) random search fills the idle slots. Evaluations are shared (every lane is
    :class:`~distilnas.search.strategies.Deduplicated` over one memory): a candidate any lane has
    evaluated (this run, or recorded in the storage before a crash) is answered from memory and never
    trained again (the fitness is a deterministic function of the candidate and the seed).

    A trial's config carries the candidate's canonical text (``candidate``); its Optuna trial holds it
    as the attribute ``name`` (``mapping`` for layer mappings), and with ``costs`` its values are the
    fitness and the candidate's costs (a multi-objective study).
    """

    def __init__(
        self,
        lanes: dict[str, Strategy],
        recorder: Recorder | None = None,
        checkpoint: Path | None = None,
        metric: str = "fitness",
        name: str = "mapping",
        retries: int = 0,
        costs: Callable[[Genome], Sequence[float]] | None = None,
    ) -> None:
        super().__init__(metric=metric, mode="max", retries=retries)
        self.space = next(iter(lanes.values())).space
        self.recorder, self.checkpoint, self.name = recorder, checkpoint, name
        self.costs = costs  # the objectives besides the fitness a multi-objective study records
        self.known: Evaluations = {}
        if recorder is not None:
            failures = recorder.failures(name)
            for text, fitness in recorder.candidates(name).items():
                k = key(self.space.read(text))
                if fitness is None:
                    self.failures[k] = failures.get(text, 0)
                    if self.failures[k] <= retries:
                        continue  # failed before, not yet as often as it may: tried again
                self.known[k] = fitness
        self.lanes: dict[str, Strategy] = {s: Deduplicated(lane, self.known) for s, lane in lanes.items()}
        self.in_flight: dict[str, tuple[str, Genome]] = {}  # trial -> lane, genome

    def _settle(self, source: str) -> None:
        """Answer what is already known, and breed while the current generation is complete."""
        lane = self.lanes[source]
        while not lane.finished:
            lane.ask()  # answers the known candidates
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
                    return {
                        "candidate": self.space.describe(g),
                        "source": source,
                        "generation": lane.generation,
                    }
        return None  # every lane waits for trials in flight

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        entry = self.in_flight.pop(trial_id, None)
        if entry is None:
            return
        source, genome = entry
        lane = self.lanes[source]
        self._timed(trial_id, result)
        ok = not error and result and "error" not in result and self.metric in result
        fitness = float(result[self.metric]) if ok and result else None
        attrs: dict[str, Any] = {"generation": lane.generation, "source": source}
        if result:
            attrs |= {
                k: v for k, v in result.items() if k.startswith("score_") or k in ("seconds", "error", "node")
            }
        if fitness is None:
            attrs.setdefault("error", LOST)
        if self.recorder is not None:
            costs = self.costs(genome) if self.costs is not None else ()
            self.recorder.candidate(self.space, genome, fitness, attrs, self.name, costs)
        text = self.space.describe(genome)
        if fitness is None and self.failed(key(genome), f"{text}: {attrs['error']}"):
            self._settle(source)  # not told: the lane hands it out again
            return
        lane.tell(genome, fitness)
        if fitness is not None:
            log.info(
                "%s, generation %d: %s scored %.2f (%d trials so far)",
                source,
                lane.generation,
                text,
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
        on_result: Callable[[Job, dict[str, Any] | None, str | None], None],
        failures: Mapping[str, int] | None = None,
        retries: int = 0,
    ) -> None:
        super().__init__(metric="score", mode="max", retries=retries)
        self.jobs = {j.id: j for j in jobs}
        self.results: dict[str, dict[str, Any] | None] = {k: v for k, v in done.items() if k in self.jobs}
        self.on_result = on_result
        for job, n in (failures or {}).items():  # failed before: tried again while it may be
            if job in self.jobs and job not in self.results:
                self.failures[job] = n
                if n > retries:
                    self.results[job] = None
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
        outcome, reason = None, LOST
        if not error and result and "outcome" in result and "error" not in result:
            outcome = {**json.loads(result["outcome"]), "seconds": float(result["seconds"])}
            if "node" in result:
                outcome["node"] = result["node"]
        elif result and "error" in result:
            reason = str(result["error"])
        self.on_result(self.jobs[job_id], outcome, None if outcome is not None else reason)
        if outcome is None and self.failed(job_id, reason):
            return  # not a result: suggested again
        self.results[job_id] = outcome
        if outcome is not None:
            log.info(
                "%s done in %.0f s (%d of %d jobs)",
                job_id,
                outcome["seconds"],
                len(self.results),
                len(self.jobs),
            )
