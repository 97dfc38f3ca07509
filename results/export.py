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
from distilnas.distill.glue import get_task
from distilnas.distill.teacher import fine_tuned_teacher, resolve
from distilnas.distill.utils import atomic_dir, atomic_write_json
from distilnas.search.config import RunConfig


def run_hash(cfg: RunConfig) -> str:
    """The hash the run folder was made with (its ``config.json``), else this config's."""
    record = cfg.output_dir / "config.json"
    return str(json.loads(record.read_text())["hash"]) if record.is_file() else cfg.config_hash()


def export_name(row: Any) -> str:
    return f"{row.shape}_{row.latency_ms:.1f}ms_glue{row.glue:.1f}"


def exported(table: pd.DataFrame, cfg: RunConfig) -> pd.DataFrame:
    """The rows to export: the Pareto front (or every student, with ``final.export_front`` off)."""
    students = table[table["kind"] == "student"]
    return students[students["pareto"]] if cfg.final.export_front else students


def student_record(
    cfg: RunConfig, row: Any, student: dict[str, Any], latency: dict[str, Any], tasks: list[str]
) -> dict[str, Any]:
    source = resolve(cfg.teacher.name)
    teachers = {
        t: fine_tuned_teacher(
            source, get_task(t), cfg.teacher.settings_for(t), cfg.data.glue_dir, cfg.cache_dir
        )[0].fingerprint
        for t in tasks
    }
    return {
        "name": student["name"],
        "architecture": {
            "type": "nas-bert" if student.get("nas") else "bert",
            **({"path": student["nas"]["path"]} if student.get("nas") else {}),
            "layers": student["layers"],
            "hidden": student["hidden"],
            "heads": student["heads"],
            "intermediate": student["intermediate"],
            "init": student["init"],
        },
        "mapping": student["mapping"],
        "origin": student["origin"],
        "options": {"kronecker": student.get("kronecker"), "references": student.get("references")},
        "params": int(row.params),
        "latency": latency,
        "speedup": float(row.speedup),
        "glue_average": float(row.glue),
        "scores": {t: float(getattr(row, t)) for t in tasks},
        "metrics": row.metrics,
        "seed": cfg.seed,
        "teacher": {"name": cfg.teacher.name, "weights": source.identity(), "fine_tuned": teachers},
        "config_hash": run_hash(cfg),
    }


def export_students(
    cfg: RunConfig, table: pd.DataFrame, final: dict[str, Any], measured: dict[str, Any], dest: Path
) -> list[Path]:
    """Write every exported student under ``dest``. A folder that exists is refused before anything is
    written, unless it is this run's own export of the same student (then it is kept: resuming)."""
    rows = list(exported(table, cfg).itertuples())
    students = {s["name"]: s for s in final["students"]}
    names = [export_name(r) for r in rows]
    # students with the same figures (same shape, same scores) are told apart by their origin
    names = [n if names.count(n) == 1 else f"{n}_{r.origin}" for n, r in zip(names, rows, strict=True)]
    targets = [dest / n for n in names]
    for target in targets:
        record = target / "student.json"
        if target.exists():
            mine = record.is_file() and json.loads(record.read_text()).get("config_hash") == run_hash(cfg)
            if not mine:
                raise UserError(f"{target}: export target exists (from elsewhere); choose another folder")
    written = []
    for target, r in zip(targets, rows, strict=True):
        if target.exists():
            written.append(target)
            continue
        student = students[r.model]
        source = cfg.output_dir / "final" / "students" / r.model
        with atomic_dir(target) as tmp:
            shutil.copytree(
                source / "general", tmp / "encoder", ignore=shutil.ignore_patterns("general.json")
            )
            for t in final["tasks"]:
                shutil.copytree(source / t, tmp / t, ignore=shutil.ignore_patterns("predictions"))
                if (source / t / "predictions").is_dir():
                    shutil.copytree(source / t / "predictions", tmp / "predictions", dirs_exist_ok=True)
            latency = measured[r.model]["latency"]
            atomic_write_json(tmp / "student.json", student_record(cfg, r, student, latency, final["tasks"]))
        written.append(target)
    return written
