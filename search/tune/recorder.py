"""The one way a finished trial of any stage lands in the run's Optuna storage (a JournalStorage file by
default, an RDB URL when configured): the single source of truth for what was evaluated.

A stage records into one study: a candidate of a search space (its genome as parameters, its canonical
text as an attribute), or a job of a fixed plan (its id, parameters, and its outcome as JSON), with one
value or several (a multi-objective study). Reading back what finished is how every stage resumes.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from distilnas.spaces.base import Genome, ParamChoices, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


def distribution(choices: ParamChoices) -> BaseDistribution:
    if isinstance(choices, range):
        return IntDistribution(choices.start, choices.stop - 1)
    return CategoricalDistribution(list(choices))


class Recorder:
    """Trials of one study: ``directions`` one per objective; ``metrics`` names them for the dashboard."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        directions: Sequence[str] = ("maximize",),
        metrics: Sequence[str] | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
    ) -> None:
        self.study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            directions=list(directions),  # type: ignore[arg-type]
            sampler=sampler,
            load_if_exists=True,
        )
        if metrics is not None:
            with warnings.catch_warnings():  # an experimental Optuna API: its warning is noise here
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(list(metrics))

    def add(
        self,
        values: float | Sequence[float] | None,
        params: dict[str, tuple[int | str, ParamChoices]] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        """A finished trial: complete with its value(s), or failed (``values`` None)."""
        params = params or {}
        self.study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.FAIL if values is None else TrialState.COMPLETE,
                values=None
                if values is None
                else ([values] if isinstance(values, float | int) else list(values)),
                params={k: v for k, (v, _) in params.items()},
                distributions={k: distribution(c) for k, (_, c) in params.items()},
                user_attrs=attrs or {},
            )
        )

    # ------------------------------------------------------------------ candidates of a search space

    def candidate(
        self,
        space: SearchSpace,
        genome: Genome,
        fitness: float | None,
        attrs: dict[str, Any],
        name: str,
        costs: Sequence[float] = (),
    ) -> None:
        """A candidate: its genome as parameters, its canonical text as the attribute ``name``; its fitness,
        then its ``costs`` in a multi-objective study."""
        values = None if fitness is None else [fitness, *map(float, costs)]
        self.add(values, space.trial_params(genome), {name: space.describe(genome), **attrs})

    def candidates(self, name: str, source: str | None = None) -> dict[str, float | None]:
        """Canonical text -> fitness (None: failed) of every recorded candidate (of one ``source``)."""
        out: dict[str, float | None] = {}
        for t in self.study.get_trials(deepcopy=False):
            if source is not None and t.user_attrs.get("source") != source:
                continue
            if t.state == TrialState.COMPLETE:
                out[t.user_attrs[name]] = t.values[0]  # the fitness; a multi-objective study's costs follow
            elif t.state == TrialState.FAIL:
                out.setdefault(t.user_attrs[name], None)
        return out

    # ------------------------------------------------------------------ jobs of a fixed plan

    def job(
        self,
        job: str,
        outcome: dict[str, Any] | None,
        value: float | Sequence[float] | None,
        params: dict[str, tuple[int | str, ParamChoices]] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        """A finished job: complete with its value and its outcome (JSON), or failed (``outcome`` None)."""
        user_attrs = {"job": job, **(attrs or {})}
        if outcome is not None:
            user_attrs["outcome"] = json.dumps(outcome)
        self.add(None if outcome is None else value, params, user_attrs)

    def failures(self, name: str) -> dict[str, int]:
        """How often each candidate (canonical text, the attribute ``name``), or each job (``name`` "job"),
        failed; one that also completed is left out."""
        done = {t.user_attrs.get(name) for t in self.complete()}
        out: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            found = t.user_attrs.get(name)
            if found is not None and found not in done:
                out[found] = out.get(found, 0) + 1
        return out

    def jobs(self) -> dict[str, dict[str, Any]]:
        """Job id -> outcome of every job the study holds as complete."""
        return {t.user_attrs["job"]: json.loads(t.user_attrs["outcome"]) for t in self.complete()}

    def complete(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
