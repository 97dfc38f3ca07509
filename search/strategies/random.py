"""Random search: uniformly drawn candidates, at a fixed budget or at another strategy's, growing as it
grows, so that random search and (say) the GA end with the same number of distinct candidates evaluated."""

from __future__ import annotations

import random
from typing import Any

from distilnas.search.strategies.base import Memo, Strategy, key
from distilnas.spaces.base import Genome, SearchSpace


def random_genomes(space: SearchSpace, n: int, seed: int) -> list[Genome]:
    """The first ``n`` distinct valid candidates of a seeded uniform stream (fewer when the space is
    smaller); the first ``k`` of ``n`` are the same for any ``n >= k``."""
    rng = random.Random(seed)
    seen: dict[str, Genome] = {}
    for _ in range(max(n, 1) * 100):
        if len(seen) >= n:
            break
        g = space.sample(rng)
        seen.setdefault(key(g), g)
    return list(seen.values())


class RandomSearch:
    """Random search with the budget of ``match`` (a strategy: as many distinct candidates as it has
    evaluated or is evaluating, finished when it is) or a fixed number of candidates."""

    generation = 0

    def __init__(self, space: SearchSpace, match: Strategy | int, seed: int) -> None:
        self.space, self.match, self.seed = space, match, seed
        self.memo = Memo()

    @classmethod
    def build(cls, space: SearchSpace, budget: int, seed: int) -> RandomSearch:
        return cls(space, budget, seed)

    def budget(self) -> int:
        if isinstance(self.match, int):
            return self.match
        pending = 0 if self.match.finished else len(self.match.ask())
        return len(self.match.memo) + pending

    def ask(self) -> list[Genome]:
        return [g for g in random_genomes(self.space, self.budget(), self.seed) if key(g) not in self.memo]

    @property
    def matched_finished(self) -> bool:
        return isinstance(self.match, int) or self.match.finished

    def tell(self, genome: Genome, fitness: float | None) -> None:
        self.memo.record(genome, fitness)

    @property
    def finished(self) -> bool:
        return self.matched_finished and not self.ask()

    def generation_done(self) -> bool:
        return False  # one open-ended generation: it ends when the budget is spent

    def advance(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"memo": self.memo.to_json(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memo = Memo.from_json(state["memo"])
        self.seed = int(state.get("seed", self.seed))

    def ranked(self) -> list[tuple[Genome, float]]:
        return self.memo.ranked()
