"""The space of layer mappings, as genomes for a genetic algorithm.

A genome is a list of M genes, gene m in 0..N: the teacher layer of student layer m+1, 0 for none.
Variation uses DEAP's own operators (one-point and uniform crossover) and two mutations (reset a gene,
shift it by one). Constraints are separate, switchable objects (monotone, no repeated teacher layer,
no unsupervised layer) with a check and a repair; :class:`Variation` applies them around any
variation, so strategies stay free of constraint ``if``s.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from math import comb, perm

from deap import tools

from distilnas.distill.errors import UserError
from distilnas.spaces.base import Genome, ParamChoices
from distilnas.spaces.mapping import LayerMapping, monotone


class Constraint:
    """A rule a genome must keep, with a repair that makes a violating genome keep it when possible."""

    name = "constraint"

    def ok(self, genome: Sequence[int]) -> bool:
        raise NotImplementedError

    def repair(self, genome: Genome, rng: random.Random, n: int) -> Genome:
        return genome


class Monotone(Constraint):
    """Teacher layers never go down from one student layer to the next (unsupervised layers skipped)."""

    name = "monotone"

    def ok(self, genome: Sequence[int]) -> bool:
        return monotone(genome)

    def repair(self, genome: Genome, rng: random.Random, n: int) -> Genome:
        used = iter(sorted(g for g in genome if g))
        return [next(used) if g else 0 for g in genome]


class NoRepeats(Constraint):
    """No teacher layer supervises two student layers."""

    name = "no_repeats"

    def ok(self, genome: Sequence[int]) -> bool:
        used = [g for g in genome if g]
        return len(used) == len(set(used))

    def repair(self, genome: Genome, rng: random.Random, n: int) -> Genome:
        seen: set[int] = set()
        out = []
        for g in genome:
            if g and g in seen:
                free = [t for t in range(1, n + 1) if t not in seen and t not in genome]
                g = rng.choice(free) if free else 0
            if g:
                seen.add(g)
            out.append(g)
        return out


class Supervised(Constraint):
    """Every student layer has a teacher layer."""

    name = "supervised"

    def ok(self, genome: Sequence[int]) -> bool:
        return all(genome)

    def repair(self, genome: Genome, rng: random.Random, n: int) -> Genome:
        return [g or rng.randint(1, n) for g in genome]


CONSTRAINTS: dict[str, type[Constraint]] = {c.name: c for c in (Monotone, NoRepeats, Supervised)}


@dataclass
class MappingSpace:
    """Mappings of ``student_layers`` onto ``teacher_layers``, under the given constraints."""

    student_layers: int
    teacher_layers: int
    constraints: list[Constraint] = field(default_factory=list)

    def __post_init__(self) -> None:
        m, n = self.student_layers, self.teacher_layers
        if m > n:
            raise UserError(f"a {m}-layer student is deeper than its {n}-layer teacher")
        if m < 1:
            raise UserError("the student needs at least one layer")

    @classmethod
    def build(cls, student_layers: int, teacher_layers: int, names: Sequence[str]) -> MappingSpace:
        unknown = [n for n in names if n not in CONSTRAINTS]
        if unknown:
            raise UserError(f"unknown mapping constraints {unknown}; known: {', '.join(CONSTRAINTS)}")
        return cls(student_layers, teacher_layers, [CONSTRAINTS[n]() for n in names])

    # ------------------------------------------------------------------ encode / decode

    def encode(self, mapping: LayerMapping) -> Genome:
        return [t or 0 for t in mapping.targets]

    def decode(self, genome: Sequence[int]) -> LayerMapping:
        return LayerMapping(tuple(g or None for g in genome), self.teacher_layers)

    def describe(self, genome: Sequence[int]) -> str:
        return str(self.decode(genome))

    def read(self, text: str) -> Genome:
        mapping = LayerMapping.from_string(text, self.teacher_layers)
        if mapping.student_layers != self.student_layers:
            raise UserError(
                f"mapping {text!r}: {mapping.student_layers} student layers, "
                f"the space has {self.student_layers}"
            )
        return self.encode(mapping)

    def trial_params(self, genome: Sequence[int]) -> dict[str, tuple[int | str, ParamChoices]]:
        """``student_layer_<m>``: the teacher layer of student layer m (0: none)."""
        choices = range(self.teacher_layers + 1)
        return {f"student_layer_{m}": (int(g), choices) for m, g in enumerate(genome, start=1)}

    # ------------------------------------------------------------------ constraints

    def valid(self, genome: Sequence[int]) -> bool:
        in_range = len(genome) == self.student_layers and all(0 <= g <= self.teacher_layers for g in genome)
        return in_range and all(c.ok(genome) for c in self.constraints)

    def repair(self, genome: Genome, rng: random.Random) -> Genome:
        """Apply every constraint's repair, twice (one repair can undo another), then check."""
        for _ in range(2):
            for c in self.constraints:
                genome = c.repair(genome, rng, self.teacher_layers)
        return genome

    # ------------------------------------------------------------------ sampling and variation

    def sample(self, rng: random.Random) -> Genome:
        """A uniformly random valid genome (rejection sampling over the constrained space)."""
        low = 1 if any(isinstance(c, Supervised) for c in self.constraints) else 0
        for _ in range(10_000):
            g = [rng.randint(low, self.teacher_layers) for _ in range(self.student_layers)]
            if self.valid(g):
                return g
        raise UserError("mapping constraints leave no valid mapping")  # pragma: no cover

    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        """A valid genome near ``genome``: perturbed, then repaired to keep the constraints."""
        return Variation(self).variant(genome, rng, mutate=True)

    def perturb(self, genome: Genome, rng: random.Random, indpb: float = 0.3) -> Genome:
        """Reset or shift genes, each with probability ``indpb`` (one of the two chosen at random); the
        result may break a constraint (:class:`Variation` repairs it)."""
        op = mut_reset if rng.random() < 0.5 else mut_shift
        return op(list(genome), self.teacher_layers, indpb, rng)

    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> tuple[Genome, Genome]:
        """One-point crossover (DEAP's ``cxOnePoint``, drawn from ``rng``), each child repaired."""
        if len(a) < 2:
            return list(a), list(b)
        cut = rng.randint(1, len(a) - 1)
        x, y = [*a[:cut], *b[cut:]], [*b[:cut], *a[cut:]]
        variation = Variation(self)
        return variation.variant(x, rng, mutate=False), variation.variant(y, rng, mutate=False)

    def all(self) -> list[Genome]:
        """Every valid genome, in lexicographic order (by enumeration; the space is small)."""
        genes = range(self.teacher_layers + 1)
        return [list(g) for g in product(genes, repeat=self.student_layers) if self.valid(g)]

    def size(self) -> int:
        """How many valid genomes there are: counted in closed form (choose which student layers are
        supervised, then their teacher layers), so a deep teacher's space is never enumerated."""
        m, n = self.student_layers, self.teacher_layers
        names = {c.name for c in self.constraints}
        if not names <= set(CONSTRAINTS):  # a constraint this count does not know: enumerate
            return len(self.all())
        ways = {  # teacher layers for k supervised student layers, in order
            frozenset(): lambda k: n**k,
            frozenset({"monotone"}): lambda k: comb(n + k - 1, k),  # non-decreasing
            frozenset({"no_repeats"}): lambda k: perm(n, k),
            frozenset({"monotone", "no_repeats"}): lambda k: comb(n, k),  # increasing
        }[frozenset(names - {"supervised"})]
        supervised = range(m, m + 1) if "supervised" in names else range(m + 1)
        return sum(comb(m, k) * ways(k) for k in supervised)

    def smallest(self) -> Genome:
        """Every mapping of the space trains the same student: the first valid genome."""
        found = self.all()
        if not found:
            raise UserError("mapping constraints leave no valid mapping")
        return found[0]


def mut_reset(genome: Genome, n: int, indpb: float, rng: random.Random) -> Genome:
    """Reset each gene, with probability ``indpb``, to a random teacher layer (or none)."""
    return [rng.randint(0, n) if rng.random() < indpb else g for g in genome]


def mut_shift(genome: Genome, n: int, indpb: float, rng: random.Random) -> Genome:
    """Move each gene, with probability ``indpb``, one teacher layer up or down (kept in 1..N)."""
    out = []
    for g in genome:
        if g and rng.random() < indpb:
            g = min(n, max(1, g + rng.choice((-1, 1))))
        out.append(g)
    return out


CROSSOVERS: dict[str, Callable[[Genome, Genome], tuple[Genome, Genome]]] = {
    "one_point": tools.cxOnePoint,
    "uniform": lambda a, b: tools.cxUniform(a, b, 0.5),
}


@dataclass
class Variation:
    """Variation under constraints: offspring are repaired, and resampled when repair cannot help."""

    space: MappingSpace

    def variant(
        self, genome: Genome, rng: random.Random, mutate: bool, indpb: float = 0.3, tries: int = 20
    ) -> Genome:
        """``genome`` (mutated when asked) repaired to keep the constraints; when repair cannot help,
        mutated again, and after ``tries`` a fresh valid sample."""
        for _ in range(tries):
            g = self.space.perturb(genome, rng, indpb) if mutate else list(genome)
            g = self.space.repair(g, rng)
            if self.space.valid(g):
                return g
            mutate = True
        return self.space.sample(rng)
