"""Exports from typed records: one folder per front student named with its figures, its models, encoder
and predictions copied, ``student.json`` with its provenance; a foreign target refused before anything
is written, this run's own kept."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_table import TASKS, student, teacher

from distilnas.distill.errors import UserError
from distilnas.results.export import export_students
from distilnas.results.records import ExportSource, Provenance
from distilnas.results.table import results_table

PROVENANCE = Provenance("minilm-l6", "model.safetensors:abc", {"mrpc": "f1", "rte": "f2"}, 3, "hash1")


def saved_student(folder: Path) -> Path:
    """A final stage's student folder: its general encoder and a model per task, with predictions."""
    (folder / "general").mkdir(parents=True)
    (folder / "general" / "model.safetensors").write_text("encoder")
    (folder / "general" / "general.json").write_text("{}")
    for t, name in (("mrpc", "MRPC"), ("rte", "RTE")):
        (folder / t / "predictions").mkdir(parents=True)
        (folder / t / "model.safetensors").write_text(t)
        (folder / t / "predictions" / f"{name}.tsv").write_text("index\tprediction\n")
    return folder


def test_front_students_are_exported_with_their_record(tmp_path: Path) -> None:
    results = [student("a", 100, 2.0, (60.0, 70.0), 55.0), student("c", 500, 5.0, (60.0, 70.0), 50.0)]
    table = results_table(teacher(), results, TASKS)
    sources = {r.name: ExportSource(r, saved_student(tmp_path / "final" / r.name)) for r in results}
    written = export_students(table, sources, TASKS, PROVENANCE, tmp_path / "exports")
    assert [p.name for p in written] == ["2L-32_2.0ms_glue60.0"]  # c is dominated
    folder = written[0]
    assert sorted(p.name for p in folder.iterdir()) == [
        "encoder",
        "mrpc",
        "predictions",
        "rte",
        "student.json",
    ]
    assert (
        not (folder / "encoder" / "general.json").exists() and not (folder / "rte" / "predictions").exists()
    )
    assert sorted(p.name for p in (folder / "predictions").iterdir()) == ["MRPC.tsv", "RTE.tsv"]
    record = json.loads((folder / "student.json").read_text())
    assert record["architecture"] == {
        "type": "bert", "layers": 2, "hidden": 32, "heads": 2, "intermediate": 64, "init": "copy"
    }  # fmt: skip
    assert record["scores"] == {"mrpc": 65.0, "rte": 55.0} and record["glue_average"] == 60.0
    assert record["teacher"]["fine_tuned"] == {"mrpc": "f1", "rte": "f2"} and record["seed"] == 3
    assert record["config_hash"] == "hash1" and record["options"] == {
        "kronecker": None,
        "references": None,
        "embedding": None,
    }
    assert record["latency"] == {"ms": 2.0, "device": "cpu"} and record["speedup"] == 5.0
    every = export_students(table, sources, TASKS, PROVENANCE, tmp_path / "all", front_only=False)
    assert len(every) == 2
    # this run's own export is kept; another run's (another hash) or a stranger's folder is refused
    assert export_students(table, sources, TASKS, PROVENANCE, tmp_path / "exports") == written
    other = dataclasses.replace(PROVENANCE, config_hash="h2")
    with pytest.raises(UserError, match="export target exists"):
        export_students(table, sources, TASKS, other, tmp_path / "exports")
    (tmp_path / "strange" / written[0].name).mkdir(parents=True)
    with pytest.raises(UserError, match="export target exists"):
        export_students(table, sources, TASKS, PROVENANCE, tmp_path / "strange")
    assert [p.name for p in (tmp_path / "strange").iterdir()] == [written[0].name]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")  # a folder of someone's own: never written into
    with pytest.raises(UserError, match=r"notes\.txt: export target exists"):
        export_students(table, sources, TASKS, PROVENANCE, tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def export_two(root: str) -> None:
    """Two front students' exports under ``root/exports`` (their final-stage folders made once)."""
    results = [student("a", 100, 2.0, (60.0, 70.0), 55.0), student("b", 50, 1.0, (50.0, 60.0), 45.0)]
    final = Path(root) / "final"
    sources = {
        r.name: ExportSource(
            r, final / r.name if (final / r.name).is_dir() else saved_student(final / r.name)
        )
        for r in results
    }
    export_students(
        results_table(teacher(), results, TASKS), sources, TASKS, PROVENANCE, Path(root) / "exports"
    )


def test_an_export_killed_half_way_is_finished_the_same_by_the_next_one(tmp_path: Path) -> None:
    def tree(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    export_two(str(tmp_path / "whole"))
    # killed copying the second student's first task: the first student exported, the second not at all
    here = Path(__file__).parent
    env = dict(os.environ, DISTILNAS_KILL_AT="export:3", PYTHONPATH=f"{here}{os.pathsep}{here.parent}")
    code = f"import test_export as t; t.export_two({str(tmp_path / 'killed')!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-3000:]
    exports = tmp_path / "killed" / "exports"
    assert len([p for p in exports.iterdir() if not p.name.startswith(".")]) == 1
    export_two(str(tmp_path / "killed"))  # the killed one's temporary copy is no stranger: it is removed
    assert sorted(p.name for p in exports.iterdir()) == sorted(
        p.name for p in (tmp_path / "whole" / "exports").iterdir()
    )
    assert tree(exports) == tree(tmp_path / "whole" / "exports")
