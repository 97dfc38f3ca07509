"""Ray Tune and Optuna plumbing shared by the searches.

- :class:`MappingSearcher` is a Ray Tune ``Searcher`` around :class:`~distilnas.search.ga.GeneticSearch`:
  each fitness evaluation is a Tune trial with its own resources, a generation runs in parallel, and
  generations are synchronous (``suggest`` waits until the generation is complete before breeding).
- :class:`TrialRecorder` writes every finished trial into the run's Optuna study (a JournalStorage file
  by default, an RDB URL when configured): the single source of truth for what was evaluated.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from distilnas.distill.errors import UserError
from distilnas.distill.utils import atomic_write_json
from distilnas.search.ga import GeneticSearch, key
from distilnas.spaces.mapping import LayerMapping

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


class MappingSearcher(Searcher):
    """The GA as a Ray Tune searcher (suggest / on_trial_complete / save / restore)."""

    def __init__(
        self,
        ga: GeneticSearch,
        recorder: TrialRecorder | None = None,
        checkpoint: Path | None = None,
        metric: str = "fitness",
        source: str = "ga",
    ) -> None:
        super().__init__(metric=metric, mode="max")
        self.ga = ga
        self.recorder = recorder
        self.checkpoint = checkpoint
        self.source = source
        self.in_flight: dict[str, list[int]] = {}
        self.seconds: list[float] = []
        self.wall = 0.0  # seconds the Tune run took, set by whoever runs it

    def _settle(self) -> None:
        """Breed while the current generation is fully known (memoised mappings need no trial)."""
        while not self.ga.finished and self.ga.generation_done() and not self.in_flight:
            self.ga.advance()
            if self.checkpoint is not None:
                self.save(str(self.checkpoint))

    def suggest(self, trial_id: str) -> dict | None:  # or Searcher.FINISHED (a str), as Tune expects
        self._settle()
        if self.ga.finished:
            return Searcher.FINISHED  # type: ignore[return-value]
        busy = {key(g) for g in self.in_flight.values()}
        for g in self.ga.ask():
            if key(g) not in busy:
                self.in_flight[trial_id] = g
                return {"mapping": str(self.ga.space.decode(g)), "generation": self.ga.generation}
        return None  # wait for the rest of this generation

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        genome = self.in_flight.pop(trial_id, None)
        if genome is None:
            return
        fitness = None if error or not result or self.metric not in result else float(result[self.metric])
        self.ga.tell(genome, fitness)
        attrs = {"generation": self.ga.generation, "source": self.source}
        if result:
            attrs |= {k: v for k, v in result.items() if k.startswith("score_") or k == "seconds"}
            if "seconds" in result:
                self.seconds.append(float(result["seconds"]))
        if self.recorder is not None:
            self.recorder.record(self.ga.space.decode(genome), fitness, attrs)
        if fitness is None:
            log.warning("trial %s (%s) failed", trial_id, self.ga.space.decode(genome))
        self._settle()

    def save(self, checkpoint_path: str) -> None:
        atomic_write_json(checkpoint_path, {"ga": self.ga.state_dict()})

    def restore(self, checkpoint_path: str) -> None:
        self.ga.load_state_dict(json.loads(Path(checkpoint_path).read_text())["ga"])


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


def run_searcher(
    searcher: MappingSearcher,
    fitness: Callable[[str], dict[str, float]],
    run_dir: Path,
    name: str,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_concurrent: int | None = None,
    max_failures: int = 1,
) -> float:
    """Run the search to the end under Ray Tune; returns the wall time in seconds."""
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(mapping_trial, fitness=fitness, threads=max(1, int(cpus_per_trial))),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1, max_concurrent_trials=max_concurrent or 0
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
    return time.perf_counter() - start
