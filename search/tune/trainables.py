"""The Ray Tune trainables and the one way a stage runs its searcher under Ray Tune.

A trial runs a stage's work (a picklable callable of paths and settings) with as many torch threads as
its CPUs, and reports what it returns and how long it took: a candidate's fitness and per-task scores,
or a job's outcome as one JSON string (Tune adds, and flattens, keys of its own).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from distilnas.distill import artifacts
from distilnas.search.config import RayConfig
from distilnas.search.tune.cluster import remote_of, trial_slots
from distilnas.search.tune.searchers import JobSearcher, StrategySearcher, TimedSearcher


def node() -> str:
    """The Ray node a trial runs on: its address and the start of its ID (nodes of one machine share the
    address)."""
    return f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"


def where() -> dict[str, str]:
    """What every trial reports of its place: the node, and the cache folders its process added there
    since its last report (built, or copied from the run storage) as JSON."""
    return {"node": node(), "cache_added": json.dumps(artifacts.drain())}


def failed(exc: BaseException, start: float, metric: str) -> None:
    """Report a trial's failure with its reason (the traceback goes to the trial's log). The searcher's
    metric is reported too, as NaN: Ray Tune ends the whole run on a result without it."""
    traceback.print_exc(file=sys.stderr)
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
    tune.report({metric: float("nan"), "error": reason, "seconds": time.perf_counter() - start, **where()})


def job_trial(
    config: dict[str, Any], work: Callable[[dict[str, Any]], dict[str, Any]], threads: int = 1
) -> None:
    """A job: run it, report what it returns and how long it took."""
    torch.set_num_threads(threads)  # as many as the trial's CPUs: parallel trials must not oversubscribe
    start = time.perf_counter()
    try:
        out = work(config)
    except Exception as exc:  # the reason goes to the storage; the searcher decides on a retry
        failed(exc, start, "score")
        return
    tune.report(
        {
            "score": float(out.get("score", 0.0)),
            "outcome": json.dumps(out),
            "seconds": time.perf_counter() - start,
            **where(),
        }
    )


def candidate_trial(
    config: dict[str, Any], work: Callable[[str], dict[str, float]], threads: int = 1
) -> None:
    """A candidate: evaluate its canonical text, report its fitness, per-task scores and time."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        scores = work(config["candidate"])
    except Exception as exc:
        failed(exc, start, "fitness")
        return
    tune.report(
        {
            "fitness": scores["fitness"],
            **{f"score_{k}": v for k, v in scores.items() if k != "fitness"},
            "seconds": time.perf_counter() - start,
            **where(),
        }
    )


TRAINABLES: dict[type[TimedSearcher], Callable[..., None]] = {
    StrategySearcher: candidate_trial,
    JobSearcher: job_trial,
}


def run_trials(
    searcher: TimedSearcher,
    work: Callable[[Any], dict[str, Any]],
    folder: Path,
    name: str,
    ray: RayConfig | None = None,
    max_failures: int = 1,
) -> float:
    """Run the searcher's trials to the end under Ray Tune (Tune's files in ``folder/ray/<name>``);
    returns the wall time in seconds.

    At most as many trials as the cluster has slots are live (so none waits in Ray's queue), and trial
    actors are reused: a trial's process keeps its imports and caches for the next.
    """
    ray = ray or RayConfig()
    searcher.slots = trial_slots(ray.cpus_per_trial, ray.gpus_per_trial, ray.max_concurrent)
    trainable = tune.with_resources(
        tune.with_parameters(TRAINABLES[type(searcher)], work=work, threads=max(1, int(ray.cpus_per_trial))),
        {"cpu": ray.cpus_per_trial, "gpu": ray.gpus_per_trial},
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
            storage_path=remote_of(folder / "ray") or str((folder / "ray").resolve()),
            name=name,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=0,
        ),
    )
    searcher.added(node(), artifacts.drain())  # what the driver prepared in its cache for these trials
    start = time.perf_counter()
    tuner.fit()
    searcher.wall = time.perf_counter() - start
    return searcher.wall
