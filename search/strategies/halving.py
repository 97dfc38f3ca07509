"""Successive halving around any strategy: many candidates at a low proxy budget, the best promoted.

Each cohort (the candidates the strategy asks for at once: a generation, or an exhaustive search's whole
space) is evaluated at rung 0; once all are, the best ``ceil(n / eta)`` of them are evaluated again at
rung 1 (``eta`` times the steps), and so on up to rung ``R - 1``, the full proxy. A candidate's fitness,
told to the strategy when it is done, is its score at the highest rung it reached: lower rungs train
less and so score lower, and the strategy's own selection prefers the promoted. Rungs are synchronous,
like generations: Ray Tune's ASHA promotes asynchronously, trial by trial, which does not fit a
strategy that breeds a whole generation from complete fitness (see the README).
"""

from __future__ import annotations

import math
from typing import Any

from distilnas.search.strategies.base import FAILED, key
from distilnas.search.strategies.middleware import Middleware
from distilnas.spaces.base import Genome
from distilnas.spaces.rungs import RungSpace


class Halving(Middleware):
    """``inner`` under successive halving with ``rungs`` rungs and promotion rate ``1 / eta``; asks for
    and is told rung-tagged genomes (:class:`~distilnas.spaces.rungs.RungSpace`). With ``first`` a
    cohort starts at that rung (the hand-made baselines start at the top: they are yardsticks)."""

    def __init__(self, inner: Any, rungs: int, eta: int, first: int = 0) -> None:
        super().__init__(inner)
        self.rungs, self.eta, self.first = rungs, eta, first  # first: the rung a candidate starts at
        self.tagged = RungSpace(inner.space, rungs)
        self.scores: dict[str, dict[str, float | None]] = {}  # genome key -> rung -> score (None: failed)
        self.cohort: list[Genome] = []

    @property
    def space(self) -> RungSpace:
        return self.tagged

    def _done(self, genome: Genome) -> bool:
        return key(genome) in self.inner.memo

    def _cohort(self) -> list[Genome]:
        """The current cohort; a new one (what the strategy asks for now) once every member is done."""
        if not self.cohort or all(self._done(g) for g in self.cohort):
            self.cohort = self.inner.ask()
        return self.cohort

    def promoted(self, cohort: list[Genome], rung: int) -> list[Genome]:
        """The members of ``cohort`` evaluated at ``rung + 1``: the best ``ceil(n / eta)`` of those at
        ``rung`` that did not fail (ties by genome, so the choice is deterministic)."""
        at = [g for g in cohort if self._reached(g, rung)]
        ok = [g for g in at if self.score(g, rung) is not None]
        ranked = sorted(ok, key=lambda g: (-float(self.score(g, rung) or 0.0), g))
        return ranked[: math.ceil(len(at) / self.eta)]

    def score(self, genome: Genome, rung: int) -> float | None:
        return self.scores.get(key(genome), {}).get(str(rung))

    def _reached(self, genome: Genome, rung: int) -> bool:
        return str(rung) in self.scores.get(key(genome), {})

    def ask(self) -> list[Genome]:
        cohort = self._cohort()
        members = cohort
        for rung in range(self.first, self.rungs):
            missing = [g for g in members if not self._reached(g, rung)]
            if missing:
                return [self.tagged.tag(g, rung) for g in missing]
            if rung == self.rungs - 1:
                break
            nxt = self.promoted(members, rung)
            for g in members:  # the others are done: told their score at this rung
                if g not in nxt and not self._done(g):
                    self.inner.tell(g, self.score(g, rung))
            members = nxt
        for g in members:
            if not self._done(g):
                self.inner.tell(g, self.score(g, self.rungs - 1))
        return [] if not self.inner.ask() else self.ask()

    def tell(self, genome: Genome, fitness: float | None) -> None:
        g, rung = self.tagged.split(genome)
        scores = self.scores.setdefault(key(g), {})
        scores.setdefault(str(rung), None if fitness is None or fitness == FAILED else float(fitness))

    def finalists(self) -> set[str]:
        """Keys of the candidates scored at the top rung (the full proxy): only their scores compare."""
        top = str(self.rungs - 1)
        return {k for k, scores in self.scores.items() if scores.get(top) is not None}

    def generation_done(self) -> bool:
        self.ask()  # tells the strategy what a complete rung decided
        return self.inner.generation_done()

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "scores": self.scores, "cohort": self.cohort}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.scores = {k: dict(v) for k, v in state["scores"].items()}
        self.cohort = [list(map(int, g)) for g in state["cohort"]]
