"""A fixed list of candidates as one generation: the hand-made baselines (uniform and last-layers), or
every candidate of a small space (exhaustive search: where the space after its constraints is no larger
than the evaluation budget, a GA only re-discovers what enumeration gives for the same cost, with
certainty)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from distilnas.distill.errors import UserError
from distilnas.search.strategies.base import Memo, key
from distilnas.spaces.base import Genome, SearchSpace


@dataclass
class FixedSearch:
    """Evaluates ``genomes`` (each once), as one generation."""

    space: SearchSpace
    genomes: list[Genome]
    memo: Memo = field(default_factory=Memo)
    generation: int = 0

    @classmethod
    def build(cls, space: SearchSpace, budget: int, seed: int) -> FixedSearch:
        """``budget`` distinct candidates drawn from the space (seeded)."""
        rng, seen = random.Random(seed), dict[str, Genome]()
        for _ in range(budget * 100):
            if len(seen) >= budget:
                break
            g = space.sample(rng)
            seen.setdefault(key(g), g)
        return cls(space, list(seen.values()))

    def ask(self) -> list[Genome]:
        return [g for g in {key(g): g for g in self.genomes}.values() if key(g) not in self.memo]

    def tell(self, genome: Genome, fitness: float | None) -> None:
        self.memo.record(genome, fitness)

    @property
    def finished(self) -> bool:
        return self.generation > 0

    def generation_done(self) -> bool:
        return not self.ask()

    def advance(self) -> None:
        self.generation += 1

    def state_dict(self) -> dict[str, Any]:
        return {"genomes": self.genomes, "memo": self.memo.to_json(), "generation": self.generation}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.genomes = [list(map(int, g)) for g in state["genomes"]]
        self.memo = Memo.from_json(state["memo"])
        self.generation = int(state["generation"])


def exhaustive(space: SearchSpace, budget: int, seed: int = 0) -> FixedSearch:
    """Every valid candidate of ``space`` once, in the space's order, when they fit in ``budget``
    evaluations (the seed changes nothing)."""
    enumerate_all = getattr(space, "all", None)
    if enumerate_all is None:
        raise UserError(f"exhaustive search: a {type(space).__name__} cannot be enumerated")
    size = space.size()
    if size > budget:
        raise UserError(
            f"exhaustive search: the space has {size} candidates, more than its budget ({budget})"
        )
    return FixedSearch(space, enumerate_all())
