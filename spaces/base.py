"""The one protocol every search space implements, so strategies and searchers work on any of them.

A candidate travels as a *genome* (a list of ints): strategies breed genomes, the Ray Tune searcher turns
them into trials, the Optuna storage records them as parameters, and the space decodes them into what
they stand for (a :class:`~distilnas.spaces.mapping.LayerMapping`, a NAS-BERT path).
"""

from __future__ import annotations

import random
from typing import Any, Protocol

Genome = list[int]

ParamChoices = range | list[str]
"""The values a trial parameter can take: a range of ints, or named choices."""


class SearchSpace(Protocol):
    def encode(self, candidate: Any, /) -> Genome:
        """A candidate as its genome."""

    def decode(self, genome: Genome, /) -> Any:
        """The candidate a genome stands for."""

    def describe(self, genome: Genome, /) -> str:
        """The candidate's canonical text (what trials, the storage and reports show)."""

    def read(self, text: str, /) -> Genome:
        """The genome of a candidate's canonical text; anything not in the space is a clear error."""

    def sample(self, rng: random.Random, /) -> Genome:
        """A uniformly random valid genome."""

    def mutate(self, genome: Genome, rng: random.Random, /) -> Genome:
        """A valid genome near ``genome``."""

    def smallest(self) -> Genome:
        """The candidate with the fewest parameters (the first in the space's order among equals)."""

    def size(self) -> int:
        """How many valid candidates the space has."""

    def valid(self, genome: Genome, /) -> bool: ...

    def trial_params(self, genome: Genome, /) -> dict[str, tuple[int | str, ParamChoices]]:
        """The genome as trial parameters: name -> (value, the values it can take), as the Optuna storage
        records them (what the dashboard shows)."""
