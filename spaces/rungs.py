"""Candidates at a rung of successive halving: any space's genome with its rung appended.

A rung is a proxy budget: rung r of R trains ``eta ** (R - 1 - r)`` times fewer steps than the full proxy.
The same candidate at two rungs is two evaluations, so a rung-tagged genome is what the searcher
de-duplicates, records (the rung is a trial parameter) and resumes. Its text is the candidate's own with
``@r<rung>`` appended (``2,4,6/6@r0``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from distilnas.distill.errors import UserError
from distilnas.spaces.base import Genome, ParamChoices, SearchSpace

TAG = "@r"


def split_rung(text: str) -> tuple[str, int | None]:
    """A candidate's own text and its rung (None: untagged, the full proxy)."""
    head, sep, rung = text.rpartition(TAG)
    if not sep or not rung.isdigit():
        return text, None
    return head, int(rung)


def rung_steps(steps: int, rung: int | None, rungs: int, eta: int) -> int:
    """The steps of a proxy budget of ``steps`` at ``rung`` (at least one)."""
    if rung is None:
        return steps
    return max(1, steps // eta ** (rungs - 1 - rung))


def rung_fraction(rung: int | None, rungs: int, eta: int) -> float:
    """The share of a proxy's training rows at ``rung`` (``1 / eta`` per rung below the top)."""
    return 1.0 if rung is None else 1.0 / eta ** (rungs - 1 - rung)


@dataclass
class RungSpace:
    """``inner``'s candidates at rungs ``0 .. rungs - 1``: the genome, then the rung."""

    inner: SearchSpace
    rungs: int

    def split(self, genome: Genome) -> tuple[Genome, int]:
        return list(genome[:-1]), int(genome[-1])

    def tag(self, genome: Genome, rung: int) -> Genome:
        return [*genome, rung]

    def describe(self, genome: Genome) -> str:
        g, r = self.split(genome)
        return f"{self.inner.describe(g)}{TAG}{r}"

    def read(self, text: str) -> Genome:
        head, rung = split_rung(text)
        if rung is None or rung >= self.rungs:
            raise UserError(f"candidate {text!r}: no rung of 0..{self.rungs - 1}")
        return self.tag(self.inner.read(head), rung)

    def decode(self, genome: Genome) -> Any:
        return self.inner.decode(self.split(genome)[0])

    def encode(self, candidate: Any) -> Genome:
        return self.tag(self.inner.encode(candidate), self.rungs - 1)

    def valid(self, genome: Genome) -> bool:
        g, r = self.split(genome)
        return 0 <= r < self.rungs and self.inner.valid(g)

    def trial_params(self, genome: Genome) -> dict[str, tuple[int | str, ParamChoices]]:
        g, r = self.split(genome)
        return {**self.inner.trial_params(g), "rung": (r, range(self.rungs))}

    def sample(self, rng: random.Random) -> Genome:
        return self.tag(self.inner.sample(rng), 0)

    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        g, r = self.split(genome)
        return self.tag(self.inner.mutate(g, rng), r)

    def smallest(self) -> Genome:
        return self.tag(self.inner.smallest(), 0)

    def size(self) -> int:
        return self.inner.size() * self.rungs
