"""NSGA-II (Deb et al. 2002) over any space with ``mutate`` and ``crossover``, built from DEAP's parts.

Objectives: the told fitness (the proxy score, maximised) and the candidate's *costs* (parameters,
predicted latency: known without a trial, so computed, not told; minimised). Each generation breeds N
children from the parents by binary tournament on (front rank, crowding distance), then DEAP's
``selNSGA2`` keeps the best N of parents and children. Like the GA it is driven by ask / tell, breeds
only children it has not evaluated, and keeps its whole state, RNG included, as JSON.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from deap import base, creator, tools

from distilnas.results.pareto import non_dominated_sort
from distilnas.search.strategies.base import FAILED, Memo, genome_of, key, rng_state, set_rng_state
from distilnas.spaces.base import Genome, SearchSpace

Costs = Callable[[Genome], Sequence[float]]


class Breedable(SearchSpace, Protocol):
    def crossover(self, a: Genome, b: Genome, rng: random.Random, /) -> tuple[Genome, Genome]: ...


def _individual_class(objectives: int) -> Any:
    """DEAP's individual type with one maximised and ``objectives - 1`` minimised values."""
    name = f"DistilnasMOFitness{objectives}"
    if not hasattr(creator, name):
        creator.create(name, base.Fitness, weights=(1.0, *[-1.0] * (objectives - 1)))
        creator.create(f"DistilnasMOIndividual{objectives}", list, fitness=getattr(creator, name))
    return getattr(creator, f"DistilnasMOIndividual{objectives}")


class NSGA2Search:
    """NSGA-II: ask() the current children, tell() their fitness; ``costs`` gives their other objectives."""

    def __init__(
        self,
        space: Breedable,
        population: int,
        generations: int,
        costs: Costs,
        crossover: float = 0.9,
        mutation: float = 0.3,
        seed: int = 0,
        initial: list[Genome] | None = None,
    ) -> None:
        self.space, self.size, self.generations, self.costs = space, population, generations, costs
        self.cxpb, self.mutpb = crossover, mutation
        self.rng = random.Random(seed)
        self.generation = 0
        self.memo = Memo()
        self.parents: list[Genome] = []
        self.children: list[Genome] = self._initial(initial or [])
        self.logbook: list[dict[str, Any]] = []

    @classmethod
    def build(cls, space: SearchSpace, budget: int, seed: int) -> NSGA2Search:
        """NSGA-II on the fitness alone (no costs) spending about ``budget`` evaluations: generations of
        (at most) 8."""
        population = max(2, min(8, budget))
        return cls(space, population, max(1, budget // population), lambda g: (), seed=seed)  # type: ignore[arg-type]

    def _initial(self, given: list[Genome]) -> list[Genome]:
        out = {key(g): list(g) for g in given}
        for _ in range(self.size * 50):
            if len(out) >= self.size:
                break
            g = self.space.sample(self.rng)
            out.setdefault(key(g), g)
        return list(out.values())[: self.size]

    # ------------------------------------------------------------------ ask / tell

    def ask(self) -> list[Genome]:
        return [g for g in {key(g): g for g in self.children}.values() if key(g) not in self.memo]

    def tell(self, genome: Genome, fitness: float | None) -> None:
        self.memo.record(genome, fitness)

    @property
    def finished(self) -> bool:
        return self.generation >= self.generations

    def generation_done(self) -> bool:
        return not self.ask()

    def objectives(self, genome: Genome) -> tuple[float, ...]:
        """(fitness, *costs) of an evaluated genome."""
        return (self.memo[key(genome)], *map(float, self.costs(genome)))

    def advance(self) -> None:
        """Keep the best N of parents and children (``selNSGA2``), log the front, breed the next children."""
        pool = {key(g): g for g in [*self.parents, *self.children] if self.memo.get(key(g), FAILED) != FAILED}
        individual = _individual_class(1 + len(self.costs(self.space.smallest())))
        inds = []
        for g in pool.values():
            ind = individual(g)
            ind.fitness.values = self.objectives(g)
            inds.append(ind)
        survivors = tools.selNSGA2(inds, min(self.size, len(inds))) if inds else []
        self.parents = [list(ind) for ind in survivors]
        front = self.front()
        self.logbook.append(
            {
                "generation": self.generation,
                "front": [self.space.describe(g) for g in front],
                "best": max((self.memo[key(g)] for g in front), default=None),
                "evaluated": len(self.memo),
                "failed": sum(1 for v in self.memo.values() if v == FAILED),
            }
        )
        self.generation += 1
        if self.finished:
            return
        self.children = self._breed(survivors) if survivors else self._initial([])

    def _breed(self, parents: list[Any]) -> list[Genome]:
        rank = {}
        for r, front in enumerate(tools.sortNondominated(parents, len(parents))):
            for ind in front:
                rank[key(ind)] = r

        def better(a: Any, b: Any) -> Any:  # lower front, then the less crowded
            ka, kb = (rank[key(a)], -a.fitness.crowding_dist), (rank[key(b)], -b.fitness.crowding_dist)
            return a if ka <= kb else b

        children: list[Genome] = []
        seen = set(self.memo)
        while len(children) < self.size:
            a = better(*self.rng.sample(parents, 2)) if len(parents) > 1 else parents[0]
            b = better(*self.rng.sample(parents, 2)) if len(parents) > 1 else parents[0]
            pair = [list(a), list(b)]
            if self.rng.random() < self.cxpb:
                pair = list(self.space.crossover(pair[0], pair[1], self.rng))
            for c in pair:
                if self.rng.random() < self.mutpb:
                    c = self.space.mutate(c, self.rng)
                for _ in range(10):  # de-duplication: a known child is mutated until it is new
                    if key(c) not in seen:
                        break
                    c = self.space.mutate(c, self.rng)
                seen.add(key(c))
                children.append(c)
        return children[: self.size]

    # ------------------------------------------------------------------ results

    def front(self) -> list[Genome]:
        """The non-dominated evaluated candidates (fitness up, costs down), in genome order."""
        done = sorted((genome_of(k) for k, v in self.memo.items() if v != FAILED))
        if not done:
            return []
        points = [(-self.memo[key(g)], *self.costs(g)) for g in done]
        return [done[i] for i in non_dominated_sort(points)[0]]

    def ranked(self) -> list[tuple[Genome, float]]:
        return self.memo.ranked()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "parents": self.parents,
            "children": self.children,
            "memo": self.memo.to_json(),
            "logbook": self.logbook,
            "rng": rng_state(self.rng),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = int(state["generation"])
        self.parents = [list(map(int, g)) for g in state["parents"]]
        self.children = [list(map(int, g)) for g in state["children"]]
        self.memo = Memo.from_json(state["memo"])
        self.logbook = list(state["logbook"])
        set_rng_state(self.rng, state["rng"])
