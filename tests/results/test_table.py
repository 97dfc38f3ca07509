"""The results table from typed records: per-task scores and the GLUE average by GLUE's rule, speed-ups,
the Pareto front and its hypervolume, against values worked by hand; and the files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distilnas.distill.students import StudentRecord, StudentSpec
from distilnas.results.records import Measured, ModelResult
from distilnas.results.table import front_hypervolume, results_table, write_table

TASKS = ["mrpc", "rte"]


def student(name: str, params: int, ms: float, mrpc: tuple[float, float], rte: float) -> ModelResult:
    record = StudentRecord(name, StudentSpec(2, 32, 2, 64), "copy", "2,4/4", ["uniform", "searched"])
    metrics = {"mrpc": {"accuracy": mrpc[0], "f1": mrpc[1]}, "rte": {"accuracy": rte}}
    return ModelResult(name, Measured(params, {"ms": ms, "device": "cpu"}), metrics, record)


def teacher() -> ModelResult:
    metrics = {"mrpc": {"accuracy": 80.0, "f1": 90.0}, "rte": {"accuracy": 70.0}}
    return ModelResult("teacher", Measured(1000, {"ms": 10.0}), metrics)


def test_scores_speedups_and_front_by_hand() -> None:
    students = [
        student("a", 100, 2.0, (60.0, 70.0), 55.0),  # GLUE (65 + 55) / 2 = 60
        student("b", 400, 4.0, (70.0, 80.0), 60.0),  # 67.5: better, larger, slower
        student("c", 500, 5.0, (60.0, 70.0), 50.0),  # 57.5: dominated by a and b
    ]
    table = results_table(teacher(), students, TASKS)
    rows = {r["model"]: r for r in table.to_dict(orient="records")}
    assert rows["teacher"]["glue"] == pytest.approx((85.0 + 70.0) / 2) and rows["teacher"]["speedup"] == 1.0
    assert rows["a"]["mrpc"] == 65.0 and rows["a"]["glue"] == 60.0 and rows["b"]["glue"] == 67.5
    assert rows["a"]["speedup"] == 5.0 and rows["c"]["speedup"] == 2.0
    assert [rows[n]["pareto"] for n in "abc"] == [True, True, False]
    assert not rows["teacher"]["pareto"]
    assert rows["a"]["origin"] == "uniform+searched" and rows["a"]["shape"] == "2L-32"
    assert rows["a"]["mapping"] == "2,4/4" and rows["teacher"]["shape"] == ""
    # normalised: (-0.60, 0.1, 0.2) and (-0.675, 0.4, 0.4) against (0, 1, 1): 0.6*0.9*0.8 + 0.075*0.6*0.6
    assert front_hypervolume(table) == pytest.approx(0.6 * 0.9 * 0.8 + 0.075 * 0.6 * 0.6)


def test_written_files(tmp_path: Path) -> None:
    table = results_table(teacher(), [student("a", 100, 2.0, (60.0, 70.0), 55.0)], TASKS)
    write_table(table, tmp_path)
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["model", "kind", "origin"] and len(lines) == 3
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"][1]["metrics"]["mrpc"] == {"accuracy": 60.0, "f1": 70.0}
    assert saved["hypervolume"] == pytest.approx(front_hypervolume(table))
