"""Exports: each Pareto-front student as a folder named with its figures, e.g. ``3L-384_5.2ms_glue71.3``.

A folder holds, per task, the model as deployed (safetensors via save_pretrained; a plain BERT student
loads with transformers' Auto classes alone) with its tokenizer; the general-distilled ``encoder/``;
``predictions/``, the GLUE test-set files of every task (the server's format); and ``student.json``:
architecture, mapping, origin, every metric, the latency with its device and settings, the seed, the
teacher's fingerprints and the config hash. Each folder is written atomically; an existing one is never
overwritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from distilnas.distill.errors import UserError
from distilnas.distill.utils import atomic_dir, atomic_write_json, is_temporary, kill_point
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


def is_own_export(folder: Path, config_hash: str) -> bool:
    """Whether ``folder`` is an export this run (its config hash) wrote."""
    record = folder / "student.json"
    try:
        return record.is_file() and json.loads(record.read_text()).get("config_hash") == config_hash
    except (OSError, ValueError):
        return False


def export_targets(table: pd.DataFrame, dest: Path, config_hash: str, front_only: bool = True) -> list[Path]:
    """The folders the exports go to, checked before anything is written: ``dest`` may be new, empty or
    hold this run's exports only; a target that exists is refused unless it is this run's own export of
    the same student (then it is kept: resuming). A killed export's temporary copies are not strangers."""
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest}: not a folder; choose another export folder")
    if dest.is_dir():
        strangers = sorted(
            p for p in dest.iterdir() if not is_temporary(p) and not is_own_export(p, config_hash)
        )
        if strangers:
            raise UserError(
                f"{strangers[0]}: export target exists (not this run's export); choose another folder"
            )
    rows = list(exported(table, front_only).itertuples())
    names = [export_name(r) for r in rows]
    # students with the same figures (same shape, same scores) are told apart by their origin
    names = [n if names.count(n) == 1 else f"{n}_{r.origin}" for n, r in zip(names, rows, strict=True)]
    return [dest / n for n in names]


def export_students(
    table: pd.DataFrame,
    sources: dict[str, ExportSource],
    tasks: list[str],
    provenance: Provenance,
    dest: Path,
    front_only: bool = True,
) -> list[Path]:
    """Write every exported student under ``dest`` (checked first: :func:`export_targets`)."""
    targets = export_targets(table, dest, provenance.config_hash, front_only)
    rows = list(exported(table, front_only).itertuples())
    written = []
    for target, r in zip(targets, rows, strict=True):
        if target.exists():
            written.append(target)
            continue
        source = sources[r.model]
        kind = source.result.record.kind  # type: ignore[union-attr]  # a student row has its record
        with atomic_dir(target) as tmp:
            shutil.copytree(
                source.folder / "general", tmp / "encoder", ignore=shutil.ignore_patterns("general.json")
            )
            kind.deploy_folder(tmp / "encoder")
            for t in tasks:
                kill_point("export")
                shutil.copytree(source.folder / t, tmp / t, ignore=shutil.ignore_patterns("predictions"))
                kind.deploy_folder(tmp / t)
                if (source.folder / t / "predictions").is_dir():
                    shutil.copytree(
                        source.folder / t / "predictions", tmp / "predictions", dirs_exist_ok=True
                    )
            atomic_write_json(tmp / "student.json", student_record(r, source, tasks, provenance))
        written.append(target)
    return written
