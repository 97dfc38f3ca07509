"""Settings of the proxy setting: the cheap stand-in on which both searches score candidates."""

from __future__ import annotations

from pydantic import Field

from distilnas.distill.config import Strict, TaskName


class ProxyConfig(Strict):
    """A seeded corpus sample and a few small GLUE tasks with train subsets and step budgets."""

    tasks: list[TaskName] = Field(["mrpc", "rte", "stsb"], min_length=1)
    """Representative GLUE tasks the fitness averages over (their dev sets score a candidate)."""
    corpus_fraction: float = Field(0.1, gt=0, le=1)
    """Fraction of the corpus used for general distillation in the proxy."""
    train_examples: int | None = Field(2000, gt=0)
    """Training rows per proxy task (the first N); empty: the whole training set."""
    general_steps: int = Field(200, gt=0)
    """Optimizer steps of general distillation on the corpus sample."""
    task_steps: int = Field(200, gt=0)
    """Optimizer steps of fine-tuning or task distillation on each proxy task."""
    rungs: int = Field(1, ge=1)
    """Successive halving: rungs of proxy budget (1: none). Rung r trains ``eta ** (rungs - 1 - r)`` times
    fewer steps than the budgets above, on as many times fewer task rows (the first ones); the best
    ``1 / eta`` of each rung are promoted to the next."""
    eta: int = Field(3, ge=2)
    """Successive halving's rate: each rung keeps a 1/eta of the candidates, at eta times the steps and
    rows."""


class FidelityConfig(Strict):
    """The full setting a proxy is checked against (``distilnas fidelity``): more corpus and the whole
    task training sets, with larger step budgets, on the proxy's tasks unless others are named."""

    tasks: list[TaskName] | None = None
    """Tasks scored in the full setting; empty: the proxy's tasks."""
    corpus_fraction: float = Field(1.0, gt=0, le=1)
    train_examples: int | None = Field(None, gt=0)
    """Training rows per task; empty: the whole training set."""
    general_steps: int = Field(1000, gt=0)
    task_steps: int = Field(1000, gt=0)

    def as_proxy(self, proxy: ProxyConfig) -> ProxyConfig:
        """The full setting in the proxy's terms, so the same fitness code scores it."""
        return ProxyConfig(
            tasks=self.tasks or proxy.tasks,
            corpus_fraction=self.corpus_fraction,
            train_examples=self.train_examples,
            general_steps=self.general_steps,
            task_steps=self.task_steps,
        )
