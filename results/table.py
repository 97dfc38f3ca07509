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

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from distilnas.distill.glue import get_task
from distilnas.distill.measure import count_parameters, measure_latency
from distilnas.distill.metrics import glue_average, task_score
from distilnas.distill.teacher import ModelSource, fine_tuned_teacher, load_encoder, resolve
from distilnas.distill.utils import atomic_write_json, fingerprint
from distilnas.results.pareto import hypervolume, non_dominated_sort
from distilnas.search.config import RunConfig

log = logging.getLogger(__name__)

REFERENCE = (0.0, 1.0, 1.0)  # minimised: -GLUE/100, parameters / teacher's, latency / teacher's


def timed(model: torch.nn.Module, cfg: RunConfig) -> dict[str, Any]:
    lat = cfg.final.latency
    threads = torch.get_num_threads()
    if lat.threads:
        torch.set_num_threads(lat.threads)
    try:
        result = measure_latency(model, lat.batch_size, lat.seq_len, repeats=lat.repeats)
    finally:
        torch.set_num_threads(threads)
    return {"params": count_parameters(model), "latency": result.as_dict()}


def shape_key(student: dict[str, Any]) -> str:
    shape = f"{student['layers']}L-{student['hidden']}H-{student['heads']}A-{student['intermediate']}F"
    if student.get("nas"):  # a supernet student: its name carries its path's digest
        return str(student["name"])
    kron, refs = student.get("kronecker"), student.get("references")
    shape += f"-kron{fingerprint(kron)[:6]}" if kron else ""
    return shape + (f"-ref{fingerprint(refs)[:6]}" if refs else "")


def timed_referenced(folder: Path, tasks: list[str], cfg: RunConfig) -> dict[str, Any] | None:
    """A referenced student's figures: its encoder (reference projection included) timed with a full-length
    reference, plus the time to retrieve one input's reference, averaged over the tasks' stores (each task
    has its own pool); the stores' sizes are recorded apart from the parameters."""
    from transformers import AutoModel

    from distilnas.distill.measure import retrieval_latency
    from distilnas.distill.references import ReferenceStore

    saved = [folder / t for t in tasks if (folder / t / "config.json").is_file()]
    if not saved:  # not distilled on any task yet
        return None
    figures = timed(AutoModel.from_pretrained(saved[0], attn_implementation="sdpa"), cfg)
    retrieval, stores = {}, {}
    for path in saved:  # each task's store beside its model (the weights are not needed for this)
        store = ReferenceStore(path / "references")
        retrieval[path.name] = retrieval_latency(store.lookup, store.index.texts[:200])["ms"]
        stores[path.name] = store.bytes
    mean = sum(retrieval.values()) / len(retrieval)
    figures["latency"] = {**figures["latency"], "model_ms": figures["latency"]["ms"], "retrieval_ms": mean}
    figures["latency"]["ms"] += mean
    return {**figures, "retrieval_ms": retrieval, "store_bytes": stores}


def measurements(cfg: RunConfig, final: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Parameters and latency of the teacher and of every student with a general encoder, by name.

    Latency depends on the architecture, not the weights, so each distinct shape is timed once (students
    of one shape share the figure, and the front is not decided by timing noise). Timing runs one model
    at a time in this process (no trial beside it), with SDPA attention as deployed, and is kept in
    ``final/measurements.json`` per latency setting, so a report is never re-timed."""
    folder = cfg.output_dir / "final"
    record = folder / "measurements.json"
    key = fingerprint(cfg.final.latency.model_dump(mode="json"))
    stored = json.loads(record.read_text()) if record.is_file() else {}
    found: dict[str, dict[str, Any]] = stored.get(key, {})
    if "teacher" not in found:
        found["teacher"] = timed(load_encoder(resolve(cfg.teacher.name), attention="sdpa"), cfg)
    out = {"teacher": found["teacher"]}
    for s in final["students"]:
        path = folder / "students" / s["name"] / "general"
        if not (path / "config.json").is_file():
            continue
        shape = shape_key(s)
        if shape not in found and s.get("references"):
            figures = timed_referenced(path.parent, list(final["tasks"]), cfg)
            if figures is None:
                continue
            found[shape] = figures
        elif shape not in found:
            found[shape] = timed(
                load_encoder(ModelSource(str(path), str(path), True, True), attention="sdpa"), cfg
            )
            log.info(
                "%s: %d parameters, %.2f ms", shape, found[shape]["params"], found[shape]["latency"]["ms"]
            )
        out[s["name"]] = found[shape]
    atomic_write_json(record, {**stored, key: found})
    return out


def teacher_metrics(cfg: RunConfig) -> dict[str, dict[str, float]]:
    """The fine-tuned teacher's dev metrics per final task (from the teacher cache)."""
    source = resolve(cfg.teacher.name)
    out = {}
    for t in cfg.final.tasks:
        ft, _ = fine_tuned_teacher(
            source, get_task(t), cfg.teacher.settings_for(t), cfg.data.glue_dir, cfg.cache_dir
        )
        out[t] = ft.metrics
    return out


def results_table(cfg: RunConfig, final: dict[str, Any]) -> pd.DataFrame:
    """The teacher and every final student with all its tasks scored, Pareto front marked."""
    measured = measurements(cfg, final)
    tasks = list(final["tasks"])
    teacher = measured["teacher"]
    rows: list[dict[str, Any]] = []

    def row(name: str, kind: str, metrics: dict[str, dict[str, float]], info: dict[str, Any]) -> None:
        m = measured[name]
        rows.append(
            {
                "model": name,
                "kind": kind,
                **info,
                "params": m["params"],
                "latency_ms": m["latency"]["ms"],
                "speedup": teacher["latency"]["ms"] / m["latency"]["ms"],
                **{t: task_score(metrics[t]) for t in tasks},
                "glue": glue_average(metrics),
                "metrics": metrics,
            }
        )

    row("teacher", "teacher", teacher_metrics(cfg), {"origin": "teacher", "mapping": "", "shape": ""})
    for s in final["students"]:
        jobs = [final["jobs"].get(f"{s['name']}/{t}") for t in tasks]
        if s["name"] not in measured or any(j is None for j in jobs):
            log.warning("%s: not every task finished; left out of the table", s["name"])
            continue
        info = {
            "origin": "+".join(s["origin"]),
            "mapping": s["mapping"],
            "shape": s["name"] if s.get("nas") else f"{s['layers']}L-{s['hidden']}",
        }
        row(s["name"], "student", {t: j["metrics"] for t, j in zip(tasks, jobs, strict=True) if j}, info)
    table = pd.DataFrame(rows)
    students = table["kind"] == "student"
    points = objectives(table[students], teacher["params"], teacher["latency"]["ms"])
    front = set(non_dominated_sort(points)[0]) if points else set()
    table["pareto"] = False
    table.loc[students, "pareto"] = [i in front for i in range(len(points))]
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
