"""The typed records ``results/`` reads: what a run measured and scored, never the run's whole config.

The final stage writes the students (:class:`~distilnas.distill.students.StudentRecord`), their task
outcomes and their measurements; the pipeline hands them here as these records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilnas.distill.students import StudentRecord


@dataclass(frozen=True)
class Measured:
    """A model's parameters (the encoder's) and latency (as measured, with its device and settings)."""

    params: int
    latency: dict[str, Any]

    @property
    def ms(self) -> float:
        return float(self.latency["ms"])


@dataclass(frozen=True)
class ModelResult:
    """One row of the results table: a model, its provenance, its size and speed, its dev metrics."""

    name: str
    measured: Measured
    metrics: dict[str, dict[str, float]]
    """Task -> metric -> value (dev)."""
    record: StudentRecord | None = None
    """The student (None: the teacher)."""


@dataclass(frozen=True)
class Provenance:
    """What every exported student records of where it came from."""

    teacher: str
    teacher_weights: str
    """The pre-trained teacher's identity (its weights' digest, or its hub id)."""
    fine_tuned: dict[str, str]
    """Task -> the fine-tuned teacher's fingerprint."""
    seed: int
    config_hash: str


@dataclass(frozen=True)
class ExportSource:
    """Where a student's saved models are (its general encoder in ``general/``, a folder per task)."""

    result: ModelResult
    folder: Path
