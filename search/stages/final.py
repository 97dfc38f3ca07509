"""The final stage: the chosen students fully distilled and scored on GLUE, as Ray Tune trials.

Each student (the mapping search's winner and its baselines, uniform and last-layers; the joint search's
front students at their shapes, with their mappings; the supernet search's front students, from their
inherited weights) gets one general distillation trial on the
corpus, then one trial per GLUE task: TinyBERT's task distillation from the fine-tuned teacher, dev
scores and test-set predictions. Trials run the one distillation recipe
(:class:`~distilnas.distill.recipes.Distillation`). A task trial starts once its student's general trial
has succeeded. Every trial is recorded in the run's Optuna storage (studies ``<prefix>-final``, task
scores, and ``<prefix>-final-general``, distillation losses), and whatever a trial saved is reused, so a
killed stage resumes without redoing finished trials. The driver then measures every student's latency
on a quiet machine (:func:`measure`), and :func:`scored` hands the results to ``results/``.

Folder (``output_dir/final``): ``proxy.json`` (the prepared data and teacher caches),
``students/<name>/general`` (the distilled encoder), ``students/<name>/<task>`` (the task model, its
``student.json`` and ``predictions/``), ``results.json``, ``measurements.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from transformers import AutoConfig, PretrainedConfig

from distilnas.distill.config import DistillConfig, StudentShape
from distilnas.distill.corpus import load_corpus
from distilnas.distill.errors import UserError
from distilnas.distill.measure import device_name, serving_device, timed
from distilnas.distill.prepared import PreparedData, prepare
from distilnas.distill.recipes import Distillation
from distilnas.distill.students import StudentRecord, StudentSpec, student_spec
from distilnas.distill.teacher import load_encoder, model_config, resolve, saved_teacher
from distilnas.distill.utils import atomic_write_json, fingerprint
from distilnas.results.records import ExportSource, Measured, ModelResult, Provenance
from distilnas.search.config import RunConfig
from distilnas.search.rundir import RunFolder
from distilnas.search.tune import Job, JobSearcher, Recorder, run_trials, shelf, start_ray
from distilnas.spaces.joint_space import JointCandidate
from distilnas.spaces.mapping import LayerMapping

log = logging.getLogger(__name__)


def searched_mapping(kind: str, mapping_results: dict[str, Any] | None) -> str:
    """The mapping search's best (``searched``) or random search's best at the same budget (``random``;
    an exhaustive search evaluated every mapping, so random search at its budget finds the same best)."""
    results = mapping_results or {}
    best = results.get("best")
    if kind == "random" and results.get("mode") != "exhaustive":
        best = results.get("random", {}).get("best")
    if not best:
        raise UserError(f"final.students: '{kind}' needs a finished mapping search")
    return str(best["mapping"])


def chosen_students(
    cfg: RunConfig, run: RunFolder, mapping_results: dict[str, Any] | None
) -> list[StudentRecord]:
    """The searched mapping, then the uniform, last-layers and random-search baselines (as configured),
    then the hand-designed students and the joint and supernet searches' fronts; a student chosen twice
    (the same shape, start and mapping: a mapping found twice, or a hand-designed shape equal to
    ``distill.student``) is one student with both origins, distilled once."""
    tcfg = model_config(resolve(cfg.teacher.name))
    n = int(tcfg.num_hidden_layers)
    s = cfg.distill.student
    spec = student_spec(s, tcfg)
    wanted: list[tuple[str, LayerMapping]] = []  # (origin, mapping)
    for kind in cfg.final.students:
        if kind in ("supernet", "joint", "hand"):
            continue  # added after the mapping students, below
        if kind in ("searched", "random"):
            wanted.append((kind, LayerMapping.from_string(searched_mapping(kind, mapping_results), n)))
        elif kind == "uniform":
            wanted.append((kind, LayerMapping.uniform(s.layers, n)))
        elif kind == "last":
            wanted.append((kind, LayerMapping.last(s.layers, n)))
    records = [StudentRecord(f"{spec.name}_{o}", spec, s.init, str(m), [o]) for o, m in wanted]
    records += [hand_student(cfg, tcfg, shape) for shape in cfg.final.hand_designed]
    students: dict[tuple[StudentSpec, str, str], StudentRecord] = {}
    for record in records:
        key = (record.spec, record.init, record.mapping)
        if key in students:
            students[key].origin.extend(record.origin)
        else:
            students[key] = record
    nas = supernet_students(cfg, run, n) if "supernet" in cfg.final.students else []
    joint = joint_students(cfg, run, tcfg) if "joint" in cfg.final.students else []
    return [*students.values(), *joint, *nas]


def hand_student(cfg: RunConfig, tcfg: PretrainedConfig, shape: StudentShape) -> StudentRecord:
    """One of ``final.hand_designed``: built as ``distill.student`` says but at ``shape`` (its empty sizes
    follow the teacher), with the uniform mapping."""
    config = cfg.distill.student.model_copy(update=shape.model_dump())
    spec = student_spec(config, tcfg)
    mapping = LayerMapping.uniform(spec.layers, int(tcfg.num_hidden_layers))
    return StudentRecord(f"{spec.name}_hand", spec, config.init, str(mapping), ["hand"])


def spread(items: list[Any], k: int) -> list[Any]:
    """At most ``k`` of ``items`` (ordered by size), evenly spaced, the first and the last included."""
    if len(items) <= k:
        return list(items)
    if k == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def joint_students(cfg: RunConfig, run: RunFolder, tcfg: PretrainedConfig) -> list[StudentRecord]:
    """Students of the joint search's front (of a search made from this config's inputs), at most
    ``final.joint_front``, spread over their sizes; each at its shape and start, with its mapping."""
    stage = run.joint
    if not stage.finished:
        raise UserError("final.students: 'joint' needs a finished joint search")
    stage.check_inputs(cfg)
    front = sorted(stage.results()["front"], key=lambda s: (s["params"], s["student"]))
    out = []
    for found in spread(front, cfg.final.joint_front):
        c = JointCandidate.parse(found["student"], int(tcfg.num_hidden_layers))
        spec = student_spec(cfg.distill.student.model_copy(update=c.student_options()), tcfg)
        table = f"-e{spec.embedding}" if spec.embedding else ""
        name = f"{spec.layers}L-{spec.hidden}-{spec.intermediate}f{table}_joint"
        out.append(StudentRecord(name, spec, c.init, str(c.mapping), ["joint"]))
    return out


def supernet_students(cfg: RunConfig, run: RunFolder, teacher_layers: int) -> list[StudentRecord]:
    """The supernet search's front students, read from their saved folders (of a search made from this
    config's inputs)."""
    stage = run.supernet
    if not stage.finished:
        raise UserError("final.students: 'supernet' needs a finished supernet search")
    stage.check_inputs(cfg)
    out = []
    for saved in stage.results()["front"]:
        path = (stage / "students" / saved).resolve()
        c = AutoConfig.from_pretrained(path)
        record = json.loads((path / "student.json").read_text())
        hidden = max(int(b["hidden"]) for b in c.blocks)
        boundaries = ",".join(map(str, c.teacher_boundaries))
        mapping = LayerMapping.from_string(f"{boundaries}/{teacher_layers}", teacher_layers)
        name = f"nas{len(c.blocks)}B-{record['params'] / 1e6:.1f}M-{saved.rsplit('_', 1)[-1]}"
        # sizes for the record: blocks, the widest block, its heads and its FFN (4x)
        spec = StudentSpec(
            len(c.blocks), hidden, int(c.num_attention_heads), 4 * hidden,
            nas={"path": str(c.path), "folder": str(path)},
        )  # fmt: skip
        out.append(StudentRecord(name, spec, "supernet", str(mapping), ["supernet"]))
    return out


def plan(students: list[StudentRecord], tasks: list[str]) -> list[Job]:
    """General trials first; then each student's tasks, interleaved across students so that parallel
    slots work on different students."""
    jobs = [Job(f"{s.name}/general", {"student": s.name}) for s in students]
    for t in tasks:
        jobs += [
            Job(f"{s.name}/{t}", {"student": s.name, "task": t}, after=(f"{s.name}/general",))
            for s in students
        ]
    return jobs


@dataclass
class FinalWork:
    """What a final-stage trial runs (picklable: paths and settings only): a student's general stage, or
    one of its task stages (``config["task"]``)."""

    prepared: dict[str, Any]
    distill: dict[str, Any]
    students: dict[str, dict[str, Any]]
    folder: str

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        data = PreparedData.from_json(self.prepared).on_node()
        record = StudentRecord.from_json(self.students[config["student"]])
        pairs = LayerMapping.from_string(record.mapping, data.teacher_layers).pairs()
        folder = Path(self.folder) / "students" / record.name
        run = Distillation(record, pairs, data, DistillConfig.model_validate(self.distill), folder)
        return run.saved_task(config["task"]) if "task" in config else run.general()


class FinalRecorder:
    """Final-stage trials as Optuna trials: task scores in one study, general distillation in another."""

    def __init__(
        self, storage: optuna.storages.BaseStorage, run: RunFolder, students: list[str], tasks: list[str]
    ):
        self.tasks = Recorder(storage, run.studies.final)
        self.general = Recorder(storage, run.studies.final_general, directions=("minimize",))
        self.students, self.task_names = students, tasks

    def record(self, job: Job, outcome: dict[str, Any] | None, reason: str | None = None) -> None:
        params: dict[str, tuple[int | str, Any]] = {"student": (job.config["student"], self.students)}
        attrs = {"error": reason} if reason else {}
        if "task" in job.config:
            params["task"] = (job.config["task"], self.task_names)
            value = None if outcome is None else float(outcome["score"])
            self.tasks.job(job.id, outcome, value, params, attrs)
        else:
            value = None if outcome is None else float(outcome["loss"])
            self.general.job(job.id, outcome, value, params, attrs)

    def done(self) -> dict[str, dict[str, Any] | None]:
        """Job id -> outcome of every finished job (the storage is the record of what ran)."""
        return {**self.general.jobs(), **self.tasks.jobs()}

    def failures(self) -> dict[str, int]:
        return {**self.general.failures("job"), **self.tasks.failures("job")}


def prepare_tasks(cfg: RunConfig, tasks: list[str], folder: Path, student: StudentSpec) -> PreparedData:
    """What a full distillation of ``cfg``'s students reads (its ``distill`` section's corpus fraction and
    rows, the fine-tuned teachers' caches, a referenced student's stores), recorded in
    ``folder/proxy.json``: the final stage and ``distilnas distill`` prepare alike."""
    if cfg.data.corpus is None:
        raise UserError("data.corpus: general distillation needs a corpus")
    prepared = prepare(
        cfg.teacher,
        cfg.distill,
        tasks,
        load_corpus(cfg.data.corpus),
        cfg.data.glue_dir,
        cfg.cache_dir,
        folder,
        cfg.seed,
        corpus_fraction=cfg.distill.corpus_fraction,
        train_limit=cfg.distill.train_limit,
        task_caches=True,  # task distillation reads the fine-tuned teachers' cached outputs
        student=student,
        shelf=shelf(RunFolder.of(cfg).artifacts),
    )
    atomic_write_json(folder / "proxy.json", prepared.to_json())
    return prepared


def run_final(
    cfg: RunConfig,
    mapping_results: dict[str, Any] | None,
    storage: optuna.storages.BaseStorage,
    address: str | None = None,
) -> dict[str, Any]:
    """Distil and score every chosen student on the final tasks; returns the outcomes per job."""
    run = RunFolder.of(cfg)
    folder = run.final.path.resolve()
    if cfg.data.corpus is None:
        raise UserError("data.corpus: the final stage's general distillation needs a corpus")
    students = chosen_students(cfg, run, mapping_results)
    tasks = list(cfg.final.tasks)
    start_ray(cfg.ray, address)
    spec = student_spec(cfg.distill.student, model_config(resolve(cfg.teacher.name)))
    prepared = prepare_tasks(cfg, tasks, folder, spec)
    recorder = FinalRecorder(storage, run, [s.name for s in students], tasks)
    work = FinalWork(
        prepared.to_json(),
        cfg.distill.model_dump(mode="json"),
        {s.name: s.to_json() for s in students},
        str(folder),
    )
    searcher = JobSearcher(
        plan(students, tasks), recorder.done(), recorder.record, recorder.failures(), cfg.ray.retries
    )
    run_trials(searcher, work, folder, "final", cfg.ray)
    results = {
        "students": [s.to_json() for s in students],
        "tasks": tasks,
        "jobs": searcher.results,
        "ray": searcher.overhead(),
    }
    run.final.write_results(results)
    return results


# ---------------------------------------------------------------------- measurements and results


def measure(cfg: RunConfig, run: RunFolder, final: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Parameters and latency of the teacher and of every distilled student, by name.

    Latency depends on the architecture, not the weights, so each distinct shape is timed once (students
    of one shape share the figure, and the front is not decided by timing noise); each kind measures as
    it is deployed (SDPA attention; a referenced student with its retrieval). Timing runs one model at a
    time in this process (no trial beside it), and is kept in ``final/measurements.json`` per latency
    setting, so a report is never re-timed."""
    record = run.final / "measurements.json"
    # The device is in the key: a run resumed on another machine times its students again.
    latency = cfg.final.latency
    key = fingerprint(latency.model_dump(mode="json"), device_name(serving_device(latency)))
    stored = json.loads(record.read_text()) if record.is_file() else {}
    found: dict[str, dict[str, Any]] = stored.get(key, {})
    if "teacher" not in found:
        found["teacher"] = timed(load_encoder(resolve(cfg.teacher.name), attention="sdpa"), cfg.final.latency)
    out = {"teacher": found["teacher"]}
    for entry in final["students"]:
        student = StudentRecord.from_json(entry)
        shape = student.kind.shape_key(student)
        if shape not in found:
            folder = run.final / "students" / student.name
            figures = student.kind.measure(folder, list(final["tasks"]), cfg.final.latency)
            if figures is None:  # nothing distilled yet
                continue
            found[shape] = figures
            log.info("%s: %d parameters, %.2f ms", shape, figures["params"], figures["latency"]["ms"])
        out[student.name] = found[shape]
    atomic_write_json(record, {**stored, key: found})
    return out


@dataclass
class Scored:
    """A finished final stage as ``results/`` reads it."""

    teacher: ModelResult
    students: list[ModelResult]
    sources: dict[str, ExportSource]
    provenance: Provenance
    tasks: list[str]


def scored(cfg: RunConfig, run: RunFolder, final: dict[str, Any]) -> Scored:
    """The teacher and every student with all its tasks scored, measured; never trains anything (the
    fine-tuned teachers are read from the cache the stage prepared)."""
    tasks = list(final["tasks"])
    prepared = PreparedData.from_json(json.loads((run.final / "proxy.json").read_text()))
    teachers = {t: saved_teacher(Path(prepared.task(t).teacher_path)) for t in tasks}
    measured = measure(cfg, run, final)

    def figures(name: str) -> Measured:
        return Measured(int(measured[name]["params"]), measured[name]["latency"])

    teacher = ModelResult("teacher", figures("teacher"), {t: teachers[t].metrics for t in tasks})
    students, sources = [], {}
    for entry in final["students"]:
        record = StudentRecord.from_json(entry)
        jobs = [final["jobs"].get(f"{record.name}/{t}") for t in tasks]
        if record.name not in measured or any(j is None for j in jobs):
            log.warning("%s: not every task finished; left out of the table", record.name)
            continue
        metrics = {t: j["metrics"] for t, j in zip(tasks, jobs, strict=True) if j}
        result = ModelResult(record.name, figures(record.name), metrics, record)
        students.append(result)
        sources[record.name] = ExportSource(result, run.final / "students" / record.name)
    provenance = Provenance(
        teacher=cfg.teacher.name,
        teacher_weights=resolve(cfg.teacher.name).identity(),
        fine_tuned={t: ft.fingerprint for t, ft in teachers.items()},
        seed=cfg.seed,
        config_hash=run.recorded_hash() if run.started else cfg.config_hash(),
    )
    return Scored(teacher, students, sources, provenance, tasks)
