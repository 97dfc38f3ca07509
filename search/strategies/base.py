"""What every search strategy is: ask for candidates, be told their fitness, generation by generation,
with its whole state as JSON so that a search resumes exactly.

Candidates are genomes of a :class:`~distilnas.spaces.base.SearchSpace`. A strategy keeps what it has been
told in a :class:`Memo`; sharing evaluations between strategies, constraints and failures are middleware
(:mod:`distilnas.search.strategies.middleware`), not ``if``s inside a strategy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from distilnas.spaces.base import Genome, SearchSpace

FAILED = float("-inf")
"""The fitness of a failed (or infeasible) evaluation: never selected while others succeed."""


def key(genome: Sequence[int]) -> str:
    return ",".join(map(str, genome))


def genome_of(text: str) -> Genome:
    return list(map(int, text.split(",")))


def rng_state(rng: random.Random) -> list[Any]:
    """A generator's whole state as JSON (so a strategy resumes drawing exactly where it stopped)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list[Any]) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


class Memo(dict[str, float]):
    """Genome key -> fitness of every candidate a strategy was told about (``FAILED`` for a failure)."""

    def record(self, genome: Sequence[int], fitness: float | None) -> None:
        self[key(genome)] = FAILED if fitness is None else float(fitness)

    def ranked(self) -> list[tuple[Genome, float]]:
        """Evaluated genomes that did not fail, best first, ties broken by genome."""
        scored = [(genome_of(k), f) for k, f in self.items() if f != FAILED]
        return sorted(scored, key=lambda x: (-x[1], x[0]))

    def to_json(self) -> dict[str, float | None]:
        return {k: (None if v == FAILED else v) for k, v in self.items()}

    @classmethod
    def from_json(cls, data: dict[str, float | None]) -> Memo:
        return cls({k: (FAILED if v is None else float(v)) for k, v in data.items()})


class Strategy(Protocol):
    """What the Ray Tune searcher drives (:class:`~distilnas.search.tune.searchers.StrategySearcher`)."""

    @property
    def space(self) -> SearchSpace: ...

    @property
    def memo(self) -> Memo: ...

    @property
    def generation(self) -> int: ...

    def ask(self) -> list[Genome]:
        """Candidates of the current generation that still need a fitness (each once)."""

    def tell(self, genome: Genome, fitness: float | None) -> None:
        """Record an evaluation; ``None`` is a failed one."""

    @property
    def finished(self) -> bool: ...

    def generation_done(self) -> bool: ...

    def advance(self) -> None:
        """Close the current generation and open the next."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
