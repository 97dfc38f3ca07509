"""Layer mappings: which teacher layer supervises which student layer.

A mapping of M student layers onto N teacher layers gives, for each student layer m (1..M), a teacher
layer g(m) in 1..N or ``None`` (no intermediate loss there). The embeddings always map to the embeddings
(layer 0 to layer 0). The canonical string lists g(1..M) and then N: ``"2,4,-,6/6"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise

from distilnas.distill.errors import UserError


def monotone(targets: Iterable[int | None]) -> bool:
    """Teacher layers never go down from one student layer to the next (0 or None layers skipped)."""
    used = [t for t in targets if t]
    return all(a <= b for a, b in pairwise(used))


@dataclass(frozen=True)
class LayerMapping:
    """An immutable, validated layer mapping."""

    targets: tuple[int | None, ...]
    """g(m) for m = 1..M: a teacher layer (1..N) or None."""
    teacher_layers: int
    """N, the teacher's depth."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.teacher_layers < 1:
            raise UserError(f"mapping: the teacher needs at least one layer, got {self.teacher_layers}")
        if not self.targets:
            raise UserError("mapping: the student needs at least one layer")
        for m, t in enumerate(self.targets, start=1):
            if t is not None and not 1 <= t <= self.teacher_layers:
                raise UserError(
                    f"mapping {self}: student layer {m} maps to teacher layer {t}, "
                    f"outside 1..{self.teacher_layers}"
                )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def uniform(cls, student_layers: int, teacher_layers: int) -> LayerMapping:
        """TinyBERT's g(m) = m * N / M (rounded down, at least 1): every (N/M)-th teacher layer."""
        if student_layers > teacher_layers:
            raise UserError(
                f"mapping: a {student_layers}-layer student is deeper than its {teacher_layers}-layer teacher"
            )
        return cls(
            tuple(max(1, m * teacher_layers // student_layers) for m in range(1, student_layers + 1)),
            teacher_layers,
        )

    @classmethod
    def last(cls, student_layers: int, teacher_layers: int) -> LayerMapping:
        """The top M teacher layers, in order (as XtremeDistil)."""
        if student_layers > teacher_layers:
            raise UserError(
                f"mapping: a {student_layers}-layer student is deeper than its {teacher_layers}-layer teacher"
            )
        first = teacher_layers - student_layers + 1
        return cls(tuple(range(first, teacher_layers + 1)), teacher_layers)

    @classmethod
    def from_string(
        cls, text: str, teacher_layers: int | None = None, monotone: bool = False
    ) -> LayerMapping:
        """Parse the canonical form ``"2,4,-,6/6"`` (``-`` is no target); ``/N`` may come as an argument.

        With ``monotone``, a mapping whose teacher layers go down fails.
        """
        body, _, depth = text.strip().partition("/")
        try:
            n = int(depth) if depth else teacher_layers
            targets = tuple(None if tok.strip() == "-" else int(tok) for tok in body.split(","))
        except ValueError:
            raise UserError(
                f"mapping {text!r}: expected comma-separated teacher layers or '-', then '/N'"
            ) from None
        if n is None:
            raise UserError(f"mapping {text!r}: the teacher's depth is missing (write '/N')")
        if teacher_layers is not None and n != teacher_layers:
            raise UserError(
                f"mapping {text!r}: written for {n} teacher layers, the teacher has {teacher_layers}"
            )
        mapping = cls(targets, n)
        return mapping.check_monotone() if monotone else mapping

    # ------------------------------------------------------------------ views

    @property
    def student_layers(self) -> int:
        return len(self.targets)

    def pairs(self, embeddings: bool = True) -> list[tuple[int, int]]:
        """(student layer, teacher layer) pairs with a target; (0, 0) first for the embeddings."""
        head = [(0, 0)] if embeddings else []
        return head + [(m, t) for m, t in enumerate(self.targets, start=1) if t is not None]

    def teacher_layers_used(self, embeddings: bool = True) -> list[int]:
        return sorted({t for _, t in self.pairs(embeddings)})

    def is_monotone(self) -> bool:
        """Targets never go down from one student layer to the next (None layers are skipped)."""
        return monotone(self.targets)

    def has_repeats(self) -> bool:
        used = [t for t in self.targets if t is not None]
        return len(used) != len(set(used))

    def check_monotone(self) -> LayerMapping:
        """Raise unless monotone; returns self for chaining."""
        if not self.is_monotone():
            raise UserError(
                f"mapping {self}: teacher layers must not decrease from one student layer to the next"
            )
        return self

    def __iter__(self) -> Iterator[int | None]:
        return iter(self.targets)

    def __str__(self) -> str:
        return ",".join("-" if t is None else str(t) for t in self.targets) + f"/{self.teacher_layers}"
