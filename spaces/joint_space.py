"""The joint space of a student's shape and its layer mapping, as one genome.

A genome is ``[depth, hidden, heads, ffn, embedding, init, t_1, ..., t_D]``: six indices into the shape
choices (``embedding``: a factorised word-embedding table's width, or none),
then the teacher layer of each student layer (as in :class:`~distilnas.spaces.mapping_space.MappingSpace`),
``D`` the deepest choice; genes past the genome's own depth are 0, so each candidate has one genome.

Variation keeps every genome valid by repair, never by rejection: a width, heads, FFN size, embedding
and start that do not fit together (heads divide the width; a factorised table is narrower than the
width; a ``copy`` is the teacher's layer whole; an ``extract``ed one keeps whole heads, so the teacher's
head size) become the nearest that do; when the
depth changes, the mapping is resized (each new student layer takes the teacher layer of the old layer at
the same relative depth) and repaired under the mapping constraints.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product

from transformers import PretrainedConfig

from distilnas.distill.bert import BertShape, check_build
from distilnas.distill.errors import UserError
from distilnas.spaces.base import Genome, ParamChoices
from distilnas.spaces.mapping import LayerMapping
from distilnas.spaces.mapping_space import MappingSpace

SHAPE_GENES = ("layers", "hidden", "heads", "intermediate", "embedding", "init")
HEAD = len(SHAPE_GENES)
"""Genes before the mapping's."""
Fit = tuple[int, int, int, int, int]
"""Indices of a (hidden, heads, intermediate, embedding, init) that fit together."""


@dataclass(frozen=True)
class JointCandidate:
    """A student's shape, its start and its layer mapping."""

    shape: BertShape
    init: str
    mapping: LayerMapping

    def __str__(self) -> str:
        s = self.shape
        table = f"-e{s.embedding}" if s.embedding else ""
        return f"{s.layers}L-{s.hidden}-{s.heads}h-{s.intermediate}f{table}-{self.init}:{self.mapping}"

    def student_options(self) -> dict[str, int | str | None]:
        """``distill.student``'s fields this candidate sets (its sizes, table and start)."""
        s = self.shape
        sizes = {"layers": s.layers, "hidden": s.hidden, "heads": s.heads, "intermediate": s.intermediate}
        return {**sizes, "embedding": s.embedding, "init": self.init}

    @classmethod
    def parse(cls, text: str, teacher_layers: int | None = None) -> JointCandidate:
        """The candidate of ``"3L-256-4h-1024f-extract:2,4,6/6"`` (``…-1024f-e128-extract…``: its word
        embeddings factorised to a 128-wide table)."""
        try:
            shape, mapping = text.split(":", 1)
            depth, hidden, heads, ffn, *table, init = shape.split("-")
            if len(table) > 1 or (table and not table[0].startswith("e")):
                raise ValueError(shape)
            layers = int(depth.removesuffix("L"))
            embedding = int(table[0].removeprefix("e")) if table else None
            size = BertShape(
                layers,
                int(hidden),
                int(heads.removesuffix("h")),
                int(ffn.removesuffix("f")),
                embedding=embedding,
            )
        except ValueError:
            raise UserError(f"student {text!r}: expected e.g. '3L-256-4h-1024f-extract:2,4,6/6'") from None
        found = LayerMapping.from_string(mapping, teacher_layers)
        if found.student_layers != layers:
            raise UserError(
                f"student {text!r}: a {layers}-layer student with a {found.student_layers}-layer mapping"
            )
        return cls(size, init, found)


@dataclass
class JointSpace:
    """Students of the given depths, widths, heads, FFN sizes, embedding tables (None: dense) and starts,
    each with a layer mapping onto ``teacher_layers`` under ``constraints`` (the mapping search's names)."""

    layers: list[int]
    hidden: list[int]
    heads: list[int]
    intermediate: list[int]
    init: list[str]
    teacher: PretrainedConfig
    constraints: list[str] = field(default_factory=list)
    embedding: list[int | None] = field(default_factory=lambda: [None])

    def __post_init__(self) -> None:
        self.teacher_layers = int(self.teacher.num_hidden_layers)
        self.teacher_hidden = int(self.teacher.hidden_size)
        self.teacher_intermediate = int(self.teacher.intermediate_size)
        for name in SHAPE_GENES:
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise UserError(f"search.joint.{name}: give one or more distinct values")
        if max(self.hidden) > self.teacher_hidden:
            raise UserError(
                f"search.joint.hidden: {max(self.hidden)} is wider than the teacher ({self.teacher_hidden})"
            )
        if not any(h % k == 0 for h in self.hidden for k in self.heads):
            raise UserError("search.joint.heads: none divides any of search.joint.hidden")
        unknown = set(self.init) - {"random", "copy", "extract"}
        if unknown:
            raise UserError(
                f"search.joint.init: unknown starts {sorted(unknown)}; known: random, copy, extract"
            )
        if any(e is not None and e < 1 for e in self.embedding):
            raise UserError("search.joint.embedding: a factorised table's width is positive (null: dense)")
        # (hidden, heads, intermediate, embedding, init) indices that fit together: heads divide the width,
        # a factorised table is narrower than it, and the start can be made from the teacher (a copy is
        # whole, an extraction keeps whole heads)
        self.allowed: set[Fit] = {
            (h, k, f, e, i)
            for (h, hidden), (k, heads), (f, ffn), (e, table), (i, init) in product(
                *(enumerate(getattr(self, n)) for n in SHAPE_GENES[1:])
            )
            if hidden % heads == 0
            and (table is None or table < hidden)
            and startable(BertShape(1, hidden, heads, ffn), self.teacher, init)
        }
        if not self.allowed:
            raise UserError(
                "search.joint: no width, heads, FFN size, embedding and start fit together "
                f"({', '.join(self.init)} from a teacher of {self.teacher_hidden} hidden, "
                f"{self.teacher.num_attention_heads} heads)"
            )
        self.mappings = {d: MappingSpace.build(d, self.teacher_layers, self.constraints) for d in self.layers}
        self.depth = max(self.layers)

    # ------------------------------------------------------------------ encode / decode

    def _shape(self, genome: Sequence[int]) -> tuple[int, int, int, int, int | None, str]:
        d, h, k, f, e, i = genome[:HEAD]
        sizes = self.layers[d], self.hidden[h], self.heads[k], self.intermediate[f]
        return (*sizes, self.embedding[e], self.init[i])

    def decode(self, genome: Sequence[int]) -> JointCandidate:
        layers, hidden, heads, ffn, table, init = self._shape(genome)
        mapping = self.mappings[layers].decode(list(genome[HEAD : HEAD + layers]))
        return JointCandidate(BertShape(layers, hidden, heads, ffn, embedding=table), init, mapping)

    def encode(self, candidate: JointCandidate) -> Genome:
        s = candidate.shape
        try:
            head = [
                self.layers.index(s.layers),
                self.hidden.index(s.hidden),
                self.heads.index(s.heads),
                self.intermediate.index(s.intermediate),
                self.embedding.index(s.embedding),
                self.init.index(candidate.init),
            ]
        except ValueError:
            raise UserError(f"student {candidate}: not in the joint space") from None
        genes = self.mappings[s.layers].encode(candidate.mapping)
        return head + genes + [0] * (self.depth - s.layers)

    def describe(self, genome: Sequence[int]) -> str:
        return str(self.decode(genome))

    def read(self, text: str) -> Genome:
        """The genome of ``"3L-256-4h-1024f-extract:2,4,6/6"``."""
        candidate = JointCandidate.parse(text, self.teacher_layers)
        if candidate.shape.layers not in self.mappings:
            raise UserError(f"student {text!r}: depth {candidate.shape.layers} is not in the joint space")
        genome = self.encode(candidate)
        if not self.valid(genome):
            raise UserError(f"student {text!r}: breaks the joint space's rules")
        return genome

    def trial_params(self, genome: Sequence[int]) -> dict[str, tuple[int | str, ParamChoices]]:
        """The shape as named choices, then ``student_layer_<m>`` for every possible student layer (0 past
        the student's depth)."""
        params: dict[str, tuple[int | str, ParamChoices]] = {}
        for name, value in zip(SHAPE_GENES, self._shape(genome), strict=True):
            params[name] = (label(value), [label(v) for v in getattr(self, name)])
        choices = range(self.teacher_layers + 1)
        for m, g in enumerate(genome[HEAD:], start=1):
            params[f"student_layer_{m}"] = (int(g), choices)
        return params

    # ------------------------------------------------------------------ rules

    def valid(self, genome: Sequence[int]) -> bool:
        if len(genome) != HEAD + self.depth:
            return False
        sizes = [len(getattr(self, n)) for n in SHAPE_GENES]
        if not all(0 <= g < n for g, n in zip(genome[:HEAD], sizes, strict=True)):
            return False
        if tuple(genome[1:HEAD]) not in self.allowed:
            return False
        layers = self.layers[genome[0]]
        mapping = list(genome[HEAD : HEAD + layers])
        return self.mappings[layers].valid(mapping) and not any(genome[HEAD + layers :])

    def repair(self, genome: Genome, rng: random.Random) -> Genome:
        """The nearest valid genome: width, FFN size, embedding, start and heads that fit together (the
        heads change first, then the start, the embedding, the FFN size, the width), and a mapping of the
        genome's depth that keeps the constraints."""
        g = list(genome)
        if tuple(g[1:HEAD]) not in self.allowed:
            h, k, f, e, i = g[1:HEAD]

            def distance(a: Fit) -> tuple[int, int, int, int, int, Fit]:
                start = 0 if a[4] == i else 1 if self.init[a[4]] == "extract" else 2  # extract keeps most
                return abs(a[0] - h), abs(a[2] - f), abs(a[3] - e), start, abs(a[1] - k), a

            g[1:HEAD] = min(self.allowed, key=distance)  # type: ignore[arg-type]
        layers = self.layers[g[0]]
        space = self.mappings[layers]
        mapping = space.repair(list(g[HEAD : HEAD + layers]), rng)
        if not space.valid(mapping):
            mapping = space.sample(rng)
        return g[:HEAD] + mapping + [0] * (self.depth - layers)

    def resize(self, mapping: Sequence[int], depth: int) -> Genome:
        """A mapping for ``depth`` student layers: layer m takes the teacher layer of the old layer at the
        same relative depth (then :meth:`repair` restores the constraints)."""
        old = len(mapping)
        if depth == old:
            return list(mapping)
        return [mapping[min(old - 1, round(m * (old - 1) / max(1, depth - 1)))] for m in range(depth)]

    # ------------------------------------------------------------------ sampling and variation

    def sample(self, rng: random.Random) -> Genome:
        """A random valid genome: a depth, and a width, heads, FFN size, embedding and start that fit
        together, each uniformly; then a uniform mapping of that depth."""
        depth = rng.randrange(len(self.layers))
        rest = rng.choice(sorted(self.allowed))
        layers = self.layers[depth]
        return [depth, *rest, *self.mappings[layers].sample(rng), *[0] * (self.depth - layers)]

    def mutate(self, genome: Genome, rng: random.Random, indpb: float = 0.3) -> Genome:
        """Each shape gene, with probability ``indpb``, moves to a neighbouring choice; the mapping is
        resized to the new depth and perturbed; then everything is repaired."""
        g = list(genome)
        old = self.layers[g[0]]
        for i, name in enumerate(SHAPE_GENES):
            if rng.random() < indpb:
                g[i] = min(len(getattr(self, name)) - 1, max(0, g[i] + rng.choice((-1, 1))))
        layers = self.layers[g[0]]
        mapping = self.resize(g[HEAD : HEAD + old], layers)
        mapping = self.mappings[layers].perturb(mapping, rng, indpb)
        return self.repair(g[:HEAD] + mapping + [0] * (self.depth - layers), rng)

    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> tuple[Genome, Genome]:
        """Uniform crossover of the shape genes; each child keeps the mapping of the parent whose depth
        it took (resized when needed: e.g. the same depth gene but another width), then repaired."""
        ca, cb = list(a[:HEAD]), list(b[:HEAD])
        for i in range(HEAD):
            if rng.random() < 0.5:
                ca[i], cb[i] = cb[i], ca[i]
        children = []
        for child, (pa, pb) in ((ca, (a, b)), (cb, (b, a))):
            parent = pa if pa[0] == child[0] else pb
            layers = self.layers[child[0]]
            mapping = self.resize(parent[HEAD : HEAD + self.layers[parent[0]]], layers)
            children.append(self.repair(child + mapping + [0] * (self.depth - layers), rng))
        return children[0], children[1]

    # ------------------------------------------------------------------ enumeration

    def widths(self) -> set[tuple[int, int, int]]:
        """Every (hidden, heads, intermediate) a student of the space can have."""
        return {(self.hidden[h], self.heads[k], self.intermediate[f]) for h, k, f, _, _ in self.allowed}

    def tables(self) -> set[tuple[int, int]]:
        """Every (hidden, E) of a factorised word-embedding table a student of the space can have."""
        return {(self.hidden[h], e) for h, _, _, t, _ in self.allowed if (e := self.embedding[t]) is not None}

    def all(self) -> list[Genome]:
        """Every valid genome (shape choices times each depth's mappings), in index order."""
        return [
            [d, *rest, *mapping, *[0] * (self.depth - layers)]
            for d, layers in enumerate(self.layers)
            for rest in sorted(self.allowed)
            for mapping in self.mappings[layers].all()
        ]

    def size(self) -> int:
        """How many valid genomes there are (shapes counted, each depth's mappings in closed form)."""
        return len(self.allowed) * sum(self.mappings[d].size() for d in self.layers)

    def params(self, genome: Sequence[int]) -> int:
        """Exact parameters of the candidate's encoder (:meth:`BertShape.parameters`)."""
        return self.decode(genome).shape.parameters(self.teacher)

    def smallest(self) -> Genome:
        """The fewest parameters (the first in index order among equals), with its first mapping."""
        return min(self.all_shapes(), key=lambda g: (self.params(g), g))

    def all_shapes(self) -> list[Genome]:
        """One genome per valid shape and start (its first mapping), in index order."""
        return [
            [d, *rest, *self.mappings[layers].smallest(), *[0] * (self.depth - layers)]
            for d, layers in enumerate(self.layers)
            for rest in sorted(self.allowed)
        ]


def startable(shape: BertShape, teacher: PretrainedConfig, init: str) -> bool:
    """Whether a student of ``shape`` can start ``init`` from the teacher (:func:`check_build`)."""
    try:
        check_build(shape, teacher, init)
    except UserError:
        return False
    return True


def label(value: int | str | None) -> str:
    """A shape choice as a trial parameter (a dense embedding table: ``dense``)."""
    return "dense" if value is None else str(value)
