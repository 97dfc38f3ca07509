"""``distilnas distill``: one student, distilled by the one recipe the final stage uses — general
distillation on the corpus, then TinyBERT's two task stages from each task's fine-tuned teacher — with
dev scores, and optionally the same student fine-tuned on labels alone for comparison.

Folder ``output_dir/students/<student>_map<mapping>/``: ``proxy.json`` (the prepared data),
``general/`` (the distilled encoder), ``<task>/`` (the task model and its ``student.json``) and the
checkpoints (``checkpoint-general``, ``checkpoint-<task>``); a second run reads finished stages back.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilnas.distill.errors import UserError
from distilnas.distill.glue import get_task
from distilnas.distill.recipes import Distillation
from distilnas.distill.students import StudentRecord, StudentSpec, student_spec
from distilnas.distill.teacher import model_config, resolve, saved_teacher
from distilnas.search.config import RunConfig
from distilnas.search.preflight import configured_mapping
from distilnas.search.stages.final import prepare_tasks
from distilnas.spaces.mapping import LayerMapping

log = logging.getLogger(__name__)


def parse_student(text: str) -> tuple[int, int | None]:
    """``4L-256`` -> (4, 256); ``4L`` -> (4, None: the teacher's width)."""
    m = re.fullmatch(r"(\d+)L(?:-(\d+))?", text.strip(), flags=re.IGNORECASE)
    if not m:
        raise UserError(f"--student {text!r}: expected <layers>L-<hidden>, e.g. 4L-256")
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


@dataclass
class DistilledStudent:
    """What ``distilnas distill`` reports."""

    spec: StudentSpec
    mapping: LayerMapping
    folder: Path
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Task -> {"distilled": metrics, "teacher": metrics, "fine-tuned": metrics (with a baseline)}."""

    def to_json(self) -> dict[str, Any]:
        return {
            "student": self.spec.__dict__,
            "mapping": str(self.mapping),
            "run_dir": str(self.folder),
            "tasks": self.tasks,
        }


def with_overrides(cfg: RunConfig, student: str | None, mapping: str | None) -> RunConfig:
    """``cfg`` with ``--student`` and ``--mapping`` in its ``distill`` section (so the recorded config and
    every check see them)."""
    dcfg = cfg.distill
    if student is not None:
        layers, hidden = parse_student(student)
        dcfg = dcfg.model_copy(
            update={"student": dcfg.student.model_copy(update={"layers": layers, "hidden": hidden})}
        )
    if mapping is not None:
        dcfg = dcfg.model_copy(update={"mapping": mapping})
    return cfg.model_copy(update={"distill": dcfg})


def distill_student(cfg: RunConfig, tasks: list[str], baseline: bool = False) -> DistilledStudent:
    """Distil ``cfg``'s student (``distill`` section) on ``tasks``; every check runs before any work."""
    names = [get_task(t).name for t in tasks]
    if cfg.data.corpus is None:
        raise UserError("data.corpus: general distillation needs a corpus")
    tcfg = model_config(resolve(cfg.teacher.name))
    mapping = configured_mapping(cfg, tcfg)
    spec = student_spec(cfg.distill.student, tcfg)
    name = f"{spec.name}_map{str(mapping).replace(',', '.').replace('/', 'of')}"
    folder = (cfg.output_dir / "students" / name).resolve()
    log.info("student %s, mapping %s", spec.name, mapping)
    data = prepare_tasks(cfg, names, folder, spec)
    record = StudentRecord(name, spec, cfg.distill.student.init, str(mapping), ["distill"])
    run = Distillation(record, mapping.pairs(), data, cfg.distill, folder)
    start = run.initial() if baseline else None  # the baseline fine-tunes the student as it starts
    run.general(copy.deepcopy(start) if start is not None else None)
    out = DistilledStudent(spec, mapping, folder)
    for t in names:
        teacher = saved_teacher(Path(data.task(t).teacher_path))
        extra = {
            "teacher_metrics": teacher.metrics,
            "teacher_fingerprint": teacher.fingerprint,
            "config_hash": cfg.config_hash(),
        }
        outcome = run.saved_task(t, predictions=False, extra=extra)
        entry: dict[str, Any] = {"distilled": outcome["metrics"], "teacher": teacher.metrics}
        if start is not None:
            entry["fine-tuned"] = run.baseline(t, start).metrics
        out.tasks[t] = entry
        log.info("%s: distilled %s, teacher %s", t, outcome["metrics"], teacher.metrics)
    return out
