"""A generational genetic algorithm over layer mappings, built from DEAP's parts.

Tournament selection, crossover and mutation are DEAP's tools; elitism keeps a hall of fame. The
algorithm is driven from outside (ask which genomes to evaluate, tell their fitness), so Ray Tune can
evaluate a whole generation in parallel. It breeds novel children (a child it already knows is mutated
until it is new) so no slot of a generation is spent on a known mapping. Every piece of state, RNG
included, goes through ``state_dict()`` / ``load_state_dict()`` as plain JSON, so a search resumes exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from deap import base, creator, tools

from distilnas.search.strategies.base import FAILED, Memo, key, rng_state, set_rng_state
from distilnas.spaces.base import Genome
from distilnas.spaces.mapping_space import CROSSOVERS, MappingSpace, Variation

if not hasattr(creator, "DistilnasFitness"):
    creator.create("DistilnasFitness", base.Fitness, weights=(1.0,))
    creator.create("DistilnasIndividual", list, fitness=creator.DistilnasFitness)


@contextmanager
def global_random(rng: random.Random) -> Iterator[None]:
    """DEAP's tools draw from the ``random`` module: lend them our generator's state, then take it back."""
    saved = random.getstate()
    random.setstate(rng.getstate())
    try:
        yield
    finally:
        rng.setstate(random.getstate())
        random.setstate(saved)


class GeneticSearch:
    """Generational GA: ask() the genomes of the current generation, tell() their fitness."""

    def __init__(
        self,
        space: MappingSpace,
        population: int,
        generations: int,
        crossover: float = 0.7,
        mutation: float = 0.3,
        tournament: int = 3,
        hall_of_fame: int = 2,
        crossover_kind: str = "one_point",
        seed: int = 0,
        initial: list[Genome] | None = None,
    ) -> None:
        self.space = space
        self.size = population
        self.generations = generations
        self.cxpb, self.mutpb = crossover, mutation
        self.tournament = tournament
        self.elite = hall_of_fame
        self.crossover = CROSSOVERS[crossover_kind]
        self.rng = random.Random(seed)
        self.variation = Variation(space)
        self.generation = 0
        self.memo = Memo()
        self.population: list[Genome] = self._initial(initial or [])
        self.logbook: list[dict[str, Any]] = []

    @classmethod
    def build(cls, space: MappingSpace, budget: int, seed: int) -> GeneticSearch:
        """A GA spending about ``budget`` evaluations: generations of (at most) 8."""
        population = max(2, min(8, budget))
        return cls(space, population, max(1, budget // population), tournament=2, hall_of_fame=1, seed=seed)

    # ------------------------------------------------------------------ ask / tell

    def _initial(self, given: list[Genome]) -> list[Genome]:
        """``given`` genomes first (e.g. the hand-made mappings), then distinct random ones."""
        out: list[Genome] = [list(g) for g in {key(g): g for g in given}.values()][: self.size]
        seen: set[str] = {key(g) for g in out}
        for _ in range(self.size * 50):
            if len(out) >= self.size:
                break
            g = self.space.sample(self.rng)
            if key(g) not in seen:
                seen.add(key(g))
                out.append(g)
        while len(out) < self.size:  # a space smaller than the population: repeats are memoised
            out.append(self.space.sample(self.rng))
        return out

    def ask(self) -> list[Genome]:
        """Genomes of the current generation that still need an evaluation (each once)."""
        todo: dict[str, Genome] = {}
        for g in self.population:
            if key(g) not in self.memo:
                todo.setdefault(key(g), g)
        return list(todo.values())

    def tell(self, genome: Genome, fitness: float | None) -> None:
        """Record an evaluation; ``None`` is a failed one (never selected while others succeed)."""
        self.memo.record(genome, fitness)

    @property
    def finished(self) -> bool:
        return self.generation >= self.generations

    def generation_done(self) -> bool:
        return not self.ask()

    def advance(self) -> None:
        """Log the finished generation and breed the next (tournament, crossover, mutation, elitism)."""
        fits = [self.memo[key(g)] for g in self.population]
        ok = [f for f in fits if f != FAILED]
        self.logbook.append(
            {
                "generation": self.generation,
                "best": max(ok) if ok else None,
                "mean": sum(ok) / len(ok) if ok else None,
                "failed": len(fits) - len(ok),
                "evaluated": len(self.memo),
            }
        )
        self.generation += 1
        if self.finished:
            return
        parents = [self._individual(g) for g in self.population]
        with global_random(self.rng):  # every draw, DEAP's and ours, comes from self.rng in turn
            chosen = [list(p) for p in tools.selTournament(parents, self.size, self.tournament)]
        children: list[Genome] = []
        for i in range(0, len(chosen), 2):
            a, b = chosen[i], chosen[(i + 1) % len(chosen)]
            if self.rng.random() < self.cxpb:
                with global_random(self.rng):
                    a, b = (list(x) for x in self.crossover(list(a), list(b)))
            children.extend([a, b])
        children = [
            self.variation.variant(c, self.rng, mutate=self.rng.random() < self.mutpb)
            for c in children[: self.size]
        ]
        children = self._novel(children[: self.size - self.elite])
        # elitism: the best mappings so far take the last places (memoised: they cost no trial)
        elites = [list(g) for g, _ in self.hall_of_fame()[: self.elite]]
        self.population = children + elites + children[: self.size - len(children) - len(elites)]

    def _novel(self, children: list[Genome]) -> list[Genome]:
        """De-duplication: a child already evaluated (or twice in this brood) is mutated until it is new,
        within a few tries, so no slot is spent on a mapping whose fitness is known."""
        seen = set(self.memo)
        out = []
        for c in children:
            for _ in range(10):
                if key(c) not in seen:
                    break
                c = self.variation.variant(c, self.rng, mutate=True, indpb=0.5)
            seen.add(key(c))
            out.append(c)
        return out

    def _individual(self, genome: Genome) -> Any:
        ind = creator.DistilnasIndividual(genome)
        ind.fitness.values = (self.memo[key(genome)],)
        return ind

    # ------------------------------------------------------------------ results

    def hall_of_fame(self) -> list[tuple[Genome, float]]:
        """Every evaluated mapping, best first (ties by genome, so the order is deterministic)."""
        return self.memo.ranked()

    def best(self) -> tuple[Genome, float] | None:
        hof = self.hall_of_fame()
        return hof[0] if hof else None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "population": self.population,
            "memo": self.memo.to_json(),
            "logbook": self.logbook,
            "rng": rng_state(self.rng),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = int(state["generation"])
        self.population = [list(map(int, g)) for g in state["population"]]
        self.memo = Memo.from_json(state["memo"])
        self.logbook = list(state["logbook"])
        set_rng_state(self.rng, state["rng"])
