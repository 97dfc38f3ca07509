"""The results table of a run: every final student beside the teacher, with the Pareto front.

One row per model: parameters (the encoder's, heads apart), measured latency and the speed-up over the
teacher, each task's dev score (the mean of its metrics, GLUE's rule) and every metric, the GLUE average
over the final tasks, and provenance (origin, mapping, shape). The Pareto front is over (GLUE average up,
parameters down, latency down), by exact non-dominated sorting; its hypervolume is computed on
normalised objectives (GLUE average / 100, parameters and latency as fractions of the teacher's) with the
reference point (GLUE 0, the teacher's parameters, the teacher's latency): a student that scores nothing
and is as large and as slow as the teacher adds nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from distilnas.distill.metrics import glue_average, task_score
from distilnas.distill.utils import atomic_write_json
from distilnas.results.pareto import hypervolume, non_dominated_sort
from distilnas.results.records import ModelResult

REFERENCE = (0.0, 1.0, 1.0)  # minimised: -GLUE/100, parameters / teacher's, latency / teacher's


def row(result: ModelResult, tasks: list[str], teacher_ms: float) -> dict[str, Any]:
    r = result.record
    info = (
        {"kind": "teacher", "origin": "teacher", "mapping": "", "shape": ""}
        if r is None
        else {
            "kind": "student",
            "origin": "+".join(r.origin),
            "mapping": r.mapping,
            "shape": r.kind.shape_label(r),
        }
    )
    return {
        "model": result.name,
        **info,
        "params": result.measured.params,
        "latency_ms": result.measured.ms,
        "speedup": teacher_ms / result.measured.ms,
        **{t: task_score(result.metrics[t]) for t in tasks},
        "glue": glue_average({t: result.metrics[t] for t in tasks}),
        "metrics": result.metrics,
    }


def results_table(teacher: ModelResult, students: list[ModelResult], tasks: list[str]) -> pd.DataFrame:
    """The teacher and every student (each scored on every task), Pareto front marked."""
    rows = [row(m, tasks, teacher.measured.ms) for m in (teacher, *students)]
    table = pd.DataFrame(rows)
    is_student = table["kind"] == "student"
    points = objectives(table[is_student], teacher.measured.params, teacher.measured.ms)
    front = set(non_dominated_sort(points)[0]) if points else set()
    table["pareto"] = False
    table.loc[is_student, "pareto"] = [i in front for i in range(len(points))]
    return table


def objectives(students: pd.DataFrame, params: float, ms: float) -> list[tuple[float, float, float]]:
    """Minimised objectives of each student row, normalised by the teacher's ``params`` and ``ms``."""
    return [(-r.glue / 100, r.params / params, r.latency_ms / ms) for r in students.itertuples()]


def front_hypervolume(table: pd.DataFrame) -> float:
    teacher = table[table["kind"] == "teacher"].iloc[0]
    points = objectives(table[table["kind"] == "student"], teacher["params"], teacher["latency_ms"])
    return hypervolume(points, REFERENCE)


def write_table(table: pd.DataFrame, folder: Path) -> None:
    """``results.csv`` (one line per model) and ``results.json`` (with every metric)."""
    folder.mkdir(parents=True, exist_ok=True)
    flat = table.drop(columns=["metrics"])
    tmp = folder / ".results.csv.tmp"
    flat.to_csv(tmp, index=False, float_format="%.4f")
    tmp.replace(folder / "results.csv")
    atomic_write_json(
        folder / "results.json",
        {"models": table.to_dict(orient="records"), "hypervolume": front_hypervolume(table)},
    )
