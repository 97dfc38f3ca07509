"""Middleware around any strategy (NNI's model): each wraps one and is itself a strategy, so the rules it
keeps live here once and never as ``if``s inside a strategy.

- :class:`Deduplicated`: a candidate evaluated before, by any strategy sharing the evaluations (this
  run, or an earlier one recorded in the storage), is answered from memory and never evaluated again;
- :class:`Constrained`: a candidate that breaks one of the rules is told it failed without a trial;
- :class:`Retried`: a failed evaluation is handed out again, up to ``retries`` times, before the strategy
  is told it failed.

:func:`wrap` stacks them in the order that makes them compose (retries outermost, so a retried failure is
not first remembered as known).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distilnas.search.strategies.base import Memo, Strategy, key
from distilnas.spaces.base import Genome

Evaluations = dict[str, float | None]
"""Genome key -> fitness (None: failed) of every candidate evaluated, shared by the strategies of a search."""


class Middleware:
    """Forwards every call to the wrapped strategy."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    @property
    def space(self) -> Any:
        return self.inner.space

    @property
    def memo(self) -> Memo:
        return self.inner.memo

    @property
    def generation(self) -> int:
        return self.inner.generation

    @property
    def innermost(self) -> Strategy:
        inner = self.inner
        return inner.innermost if isinstance(inner, Middleware) else inner

    def ask(self) -> list[Genome]:
        return self.inner.ask()

    def tell(self, genome: Genome, fitness: float | None) -> None:
        self.inner.tell(genome, fitness)

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def generation_done(self) -> bool:
        return self.inner.generation_done()

    def advance(self) -> None:
        self.inner.advance()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


class Deduplicated(Middleware):
    """Answers candidates already in ``known`` from memory; records every evaluation there."""

    def __init__(self, inner: Strategy, known: Evaluations) -> None:
        super().__init__(inner)
        self.known = known

    def ask(self) -> list[Genome]:
        todo = []
        for g in self.inner.ask():
            if key(g) in self.known:
                self.inner.tell(g, self.known[key(g)])
            else:
                todo.append(g)
        return todo

    def tell(self, genome: Genome, fitness: float | None) -> None:
        self.known[key(genome)] = fitness
        self.inner.tell(genome, fitness)


class Constrained(Middleware):
    """Candidates that break a rule (``rules``: name -> check) fail at once, without an evaluation; the
    names of the rules each broke are kept in ``rejected``."""

    def __init__(self, inner: Strategy, rules: dict[str, Callable[[Sequence[int]], bool]]) -> None:
        super().__init__(inner)
        self.rules = rules
        self.rejected: dict[str, list[str]] = {}

    def ask(self) -> list[Genome]:
        todo = []
        for g in self.inner.ask():
            broken = [name for name, ok in self.rules.items() if not ok(g)]
            if broken:
                self.rejected[key(g)] = broken
                self.inner.tell(g, None)
            else:
                todo.append(g)
        return todo


class Retried(Middleware):
    """A failed evaluation is handed out again (``retries`` times at most) before it counts as failed."""

    def __init__(self, inner: Strategy, retries: int) -> None:
        super().__init__(inner)
        self.retries = retries
        self.failures: dict[str, int] = {}

    def tell(self, genome: Genome, fitness: float | None) -> None:
        if fitness is None:
            self.failures[key(genome)] = self.failures.get(key(genome), 0) + 1
            if self.failures[key(genome)] <= self.retries:
                return  # not told: the strategy asks for it again
        self.inner.tell(genome, fitness)


def wrap(
    strategy: Strategy,
    known: Evaluations | None = None,
    rules: dict[str, Callable[[Sequence[int]], bool]] | None = None,
    retries: int = 0,
) -> Strategy:
    """``strategy`` under the middleware asked for: constraints innermost, then de-duplication, then
    retries."""
    out: Any = strategy
    if rules:
        out = Constrained(out, rules)
    if known is not None:
        out = Deduplicated(out, known)
    if retries:
        out = Retried(out, retries)
    return out
