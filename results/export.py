"""Exports: each Pareto-front student as a folder named with its figures, e.g. ``3L-384_5.2ms_glue71.3``.

A folder holds, per task, the model (safetensors via save_pretrained; a plain BERT student loads with
transformers' Auto classes alone) with its tokenizer; the general-distilled ``encoder/``; ``predictions/``,
the GLUE test-set files of every task (the server's format); and ``student.json``: architecture, mapping,
origin, every metric, the latency with its device and settings, the seed, the teacher's fingerprints and
the config hash. Each folder is written atomically; an existing one is never overwritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from distilnas.distill.errors import UserError
from distilnas.distill.utils import atomic_dir, atomic_write_json
from distilnas.results.records import ExportSource, Provenance


def export_name(row: Any) -> str:
    return f"{row.shape}_{row.latency_ms:.1f}ms_glue{row.glue:.1f}"


def exported(table: pd.DataFrame, front_only: bool) -> pd.DataFrame:
    """The rows to export: the Pareto front (or every student, without ``front_only``)."""
    students = table[table["kind"] == "student"]
    return students[students["pareto"]] if front_only else students


def student_record(
    row: Any, source: ExportSource, tasks: list[str], provenance: Provenance
) -> dict[str, Any]:
    record = source.result.record
    assert record is not None
    return {
        "name": record.name,
        "architecture": record.kind.architecture_record(record),
        "mapping": record.mapping,
        "origin": record.origin,
        "options": record.options(),
        "params": int(row.params),
        "latency": source.result.measured.latency,
        "speedup": float(row.speedup),
        "glue_average": float(row.glue),
        "scores": {t: float(getattr(row, t)) for t in tasks},
        "metrics": row.metrics,
        "seed": provenance.seed,
        "teacher": {
            "name": provenance.teacher,
            "weights": provenance.teacher_weights,
            "fine_tuned": {t: provenance.fine_tuned[t] for t in tasks},
        },
        "config_hash": provenance.config_hash,
    }


def export_students(
    table: pd.DataFrame,
    sources: dict[str, ExportSource],
    tasks: list[str],
    provenance: Provenance,
    dest: Path,
    front_only: bool = True,
) -> list[Path]:
    """Write every exported student under ``dest``. A folder that exists is refused before anything is
    written, unless it is this run's own export of the same student (then it is kept: resuming)."""
    rows = list(exported(table, front_only).itertuples())
    names = [export_name(r) for r in rows]
    # students with the same figures (same shape, same scores) are told apart by their origin
    names = [n if names.count(n) == 1 else f"{n}_{r.origin}" for n, r in zip(names, rows, strict=True)]
    targets = [dest / n for n in names]
    for target in targets:
        record = target / "student.json"
        if target.exists():
            mine = (
                record.is_file()
                and json.loads(record.read_text()).get("config_hash") == provenance.config_hash
            )
            if not mine:
                raise UserError(f"{target}: export target exists (from elsewhere); choose another folder")
    written = []
    for target, r in zip(targets, rows, strict=True):
        if target.exists():
            written.append(target)
            continue
        source = sources[r.model]
        with atomic_dir(target) as tmp:
            shutil.copytree(
                source.folder / "general", tmp / "encoder", ignore=shutil.ignore_patterns("general.json")
            )
            for t in tasks:
                shutil.copytree(source.folder / t, tmp / t, ignore=shutil.ignore_patterns("predictions"))
                if (source.folder / t / "predictions").is_dir():
                    shutil.copytree(
                        source.folder / t / "predictions", tmp / "predictions", dirs_exist_ok=True
                    )
            atomic_write_json(tmp / "student.json", student_record(r, source, tasks, provenance))
        written.append(target)
    return written
