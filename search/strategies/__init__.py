"""Search strategies over any :class:`~distilnas.spaces.base.SearchSpace`, driven by ask / tell, and the
middleware that wraps them (de-duplication, constraints, retries, successive halving).

``STRATEGIES`` names each strategy's builder: ``STRATEGIES[name](space, budget, seed)`` makes one that
spends about ``budget`` evaluations.
"""

from __future__ import annotations

from collections.abc import Callable

from distilnas.search.strategies.base import FAILED, Memo, Strategy, genome_of, key
from distilnas.search.strategies.fixed import FixedSearch, exhaustive
from distilnas.search.strategies.ga import GeneticSearch
from distilnas.search.strategies.halving import Halving
from distilnas.search.strategies.middleware import Constrained, Deduplicated, Evaluations, Retried, wrap
from distilnas.search.strategies.nsga2 import NSGA2Search
from distilnas.search.strategies.random import RandomSearch, random_genomes
from distilnas.spaces.base import SearchSpace

STRATEGIES: dict[str, Callable[[SearchSpace, int, int], Strategy]] = {
    "ga": GeneticSearch.build,  # type: ignore[dict-item]
    "random": RandomSearch.build,
    "fixed": FixedSearch.build,
    "exhaustive": exhaustive,
    "nsga2": NSGA2Search.build,
}

__all__ = [
    "FAILED",
    "STRATEGIES",
    "Constrained",
    "Deduplicated",
    "Evaluations",
    "FixedSearch",
    "GeneticSearch",
    "Halving",
    "Memo",
    "NSGA2Search",
    "RandomSearch",
    "Retried",
    "Strategy",
    "exhaustive",
    "genome_of",
    "key",
    "random_genomes",
    "wrap",
]
