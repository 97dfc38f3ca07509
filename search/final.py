"""The final stage: the chosen students fully distilled and scored on GLUE, as Ray Tune trials.

Each student (the mapping search's winner and its baselines, uniform and last-layers; the supernet
search's front students, from their inherited weights) gets one general distillation trial on the
corpus, then one trial per GLUE task: TinyBERT's task distillation from the fine-tuned teacher, dev
scores and test-set predictions. A task trial starts once its student's general trial has succeeded.
Every trial is recorded in the run's Optuna storage (studies ``<prefix>-final``,
task scores, and ``<prefix>-final-general``, distillation losses), and whatever a trial saved is reused,
so a killed stage resumes without redoing finished trials. The driver then measures every student's
latency on a quiet machine and builds the results table (:mod:`distilnas.results.table`).

Folder (``output_dir/final``): ``config.json``, ``proxy.json`` (the prepared data and teacher caches),
``students/<name>/general`` (the distilled encoder), ``students/<name>/<task>`` (the task model, its
``student.json`` and ``predictions/``), ``results.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution

from distilnas.distill.config import DistillConfig, DistillSettings
from distilnas.distill.errors import UserError
from distilnas.distill.recipes import student_spec
from distilnas.distill.student import Init, StudentSpec
from distilnas.distill.teacher import load_config as load_model_config
from distilnas.distill.teacher import resolve
from distilnas.distill.utils import atomic_write_json
from distilnas.proxies.config import ProxyConfig
from distilnas.proxies.mapping_fitness import PreparedProxy, prepare
from distilnas.search.config import RunConfig
from distilnas.search.tune_runner import (
    Job,
    JobSearcher,
    finished_jobs,
    init_ray,
    job_trial,
    record_job,
    run_searcher,
)
from distilnas.spaces.mapping import LayerMapping

log = logging.getLogger(__name__)


@dataclass
class FinalStudent:
    """A student the final stage distils: its shape, how it starts, its layer mapping, where it came from."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    init: Init | Literal["supernet"]
    mapping: str
    origin: list[str] = field(default_factory=list)
    kronecker: dict[str, Any] | None = None
    references: dict[str, Any] | None = None
    nas: dict[str, str] | None = None
    """A supernet student: its ``path`` and the ``folder`` of its extracted weights (where its
    distillation starts); its ``layers`` are blocks, its mapping pairs each block's output with a
    teacher layer."""

    @property
    def spec(self) -> StudentSpec:
        return StudentSpec(
            self.layers, self.hidden, self.heads, self.intermediate, self.kronecker, self.references
        )


def chosen_students(cfg: RunConfig, mapping_results: dict[str, Any] | None) -> list[FinalStudent]:
    """The searched mapping, then the uniform and last-layers baselines (as configured); a mapping chosen
    twice is one student with both origins."""
    source = resolve(cfg.teacher.name)
    tcfg = load_model_config(source)
    n = int(tcfg.num_hidden_layers)
    s = cfg.distill.student
    spec = student_spec(cfg.distill, tcfg)
    wanted: list[tuple[str, LayerMapping]] = []  # (origin, mapping)
    for kind in cfg.final.students:
        if kind == "supernet":
            continue  # added after the mapping students, below
        if kind == "searched":
            best = (mapping_results or {}).get("ga", {}).get("best")
            if not best:
                raise UserError("final.students: 'searched' needs a finished mapping search")
            wanted.append((kind, LayerMapping.from_string(best["mapping"], n)))
        elif kind == "uniform":
            wanted.append((kind, LayerMapping.uniform(s.layers, n)))
        else:
            wanted.append((kind, LayerMapping.last(s.layers, n)))
    students: dict[str, FinalStudent] = {}
    for origin, mapping in wanted:
        key = str(mapping)
        if key in students:
            students[key].origin.append(origin)
            continue
        name = f"{spec.name}_{origin}"
        students[key] = FinalStudent(
            name,
            spec.layers,
            spec.hidden,
            spec.heads,
            spec.intermediate,
            s.init,
            key,
            [origin],
            spec.kronecker,
            spec.references,
        )
    nas = supernet_students(cfg) if "supernet" in cfg.final.students else []
    return [*students.values(), *nas]


def supernet_students(cfg: RunConfig) -> list[FinalStudent]:
    """The supernet search's front students, read from their saved folders."""
    from transformers import AutoConfig

    from distilnas.distill import nas_bert  # noqa: F401  (registers the NAS-BERT model type)

    folder = (cfg.output_dir / "search-supernet").resolve()
    done = folder / "results.json"
    if not done.is_file():
        raise UserError("final.students: 'supernet' needs a finished supernet search")
    n = int(load_model_config(resolve(cfg.teacher.name)).num_hidden_layers)
    out = []
    for saved in json.loads(done.read_text())["front"]:
        path = folder / "students" / saved
        c = AutoConfig.from_pretrained(path)
        record = json.loads((path / "student.json").read_text())
        hidden = max(int(b["hidden"]) for b in c.blocks)
        mapping = LayerMapping.from_string(",".join(map(str, c.teacher_boundaries)) + f"/{n}", n)
        name = f"nas{len(c.blocks)}B-{record['params'] / 1e6:.1f}M-{saved.rsplit('_', 1)[-1]}"
        out.append(
            FinalStudent(  # sizes for the record: blocks, the widest block, its heads and its FFN (4x)
                name,
                len(c.blocks),
                hidden,
                int(c.num_attention_heads),
                4 * hidden,
                "supernet",
                str(mapping),
                ["supernet"],
                nas={"path": str(c.path), "folder": str(path)},
            )
        )
    return out


NAS_LOSSES = ("hidden_mse", "hidden_cosine", "prediction_ce", "hard_label")
"""What a NAS-BERT student distils: block outputs and logits (it has no attention maps to match)."""


def nas_settings(settings: DistillSettings) -> DistillSettings:
    """A stage's settings for a NAS-BERT student: its losses that such a student can serve (block
    outputs and logits), or hidden-state MSE at the block boundaries when none of them can."""
    losses = {k: v for k, v in settings.losses.items() if k in NAS_LOSSES and v}
    return settings.model_copy(update={"losses": losses or {"hidden_mse": 1.0}})


def plan(students: list[FinalStudent], tasks: list[str]) -> list[Job]:
    """General trials first; then each student's tasks, interleaved across students so that parallel
    slots work on different students."""
    jobs = [Job(f"{s.name}/general", {"student": s.name, "task": "general"}) for s in students]
    for t in tasks:
        jobs += [
            Job(f"{s.name}/{t}", {"student": s.name, "task": t}, after=(f"{s.name}/general",))
            for s in students
        ]
    return jobs


@dataclass
class FinalWork:
    """What a final-stage trial runs (picklable: paths and settings only)."""

    prepared: dict[str, Any]
    students: dict[str, dict[str, Any]]
    folder: str

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        p = PreparedProxy.from_json(self.prepared)
        student = FinalStudent(**self.students[config["student"]])
        out = Path(self.folder) / "students" / student.name
        if config["task"] == "general":
            return general_job(p, student, out)
        return task_job(p, student, config["task"], out)


def general_job(p: PreparedProxy, student: FinalStudent, out: Path) -> dict[str, Any]:
    """General distillation of one student on the corpus from the teacher's cached outputs; the encoder
    is saved in ``out/general`` (a finished one is reused)."""
    from datasets import load_from_disk
    from transformers import AutoModel

    from distilnas.distill.distiller import CachedTeacher, Distiller
    from distilnas.distill.teacher_cache import TeacherCache
    from distilnas.distill.utils import atomic_dir, seed_everything

    record = out / "general" / "general.json"
    if record.is_file():
        return dict(json.loads(record.read_text()))
    dcfg = DistillConfig.model_validate(p.distill)
    seed_everything(p.seed)
    mapping = LayerMapping.from_string(student.mapping, p.teacher_layers)
    if student.nas:  # a supernet student starts from its inherited weights, matched block by block
        encoder = AutoModel.from_pretrained(student.nas["folder"])
        pairs, settings = mapping.pairs(embeddings=False), nas_settings(dcfg.general)
    else:
        encoder = p.initial_student(student.spec, student.init, mapping)  # type: ignore[arg-type]
        pairs, settings = mapping.pairs(), dcfg.general
    tok = p.tokenizer()
    cache = TeacherCache(Path(p.corpus_cache), p.corpus_fingerprint)
    result = Distiller(encoder, CachedTeacher(cache), pairs, settings).fit(
        load_from_disk(p.corpus_data), out / "checkpoint-general", tok.pad_token_id or 0, desc="general"
    )
    outcome = {"loss": result.loss, "steps": result.steps, "train_seconds": result.seconds}
    with atomic_dir(out / "general") as tmp:
        encoder.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "general.json", outcome)
    return outcome


def task_job(p: PreparedProxy, student: FinalStudent, task_name: str, out: Path) -> dict[str, Any]:
    """Task distillation of one student's general encoder on one GLUE task, dev scores and test-set
    predictions; the model is saved in ``out/<task>`` (a finished one is reused)."""
    from transformers import AutoConfig, AutoModel

    from distilnas.distill.data import TokenizedSplit, tokenize_split
    from distilnas.distill.distiller import CachedTeacher, distill_task
    from distilnas.distill.finetune import evaluate, predict
    from distilnas.distill.glue import get_task, predictions_to_labels, write_submission
    from distilnas.distill.metrics import task_score
    from distilnas.distill.recipes import with_head
    from distilnas.distill.references import ReferenceStore, referenced, referenced_split
    from distilnas.distill.teacher_cache import TeacherCache
    from distilnas.distill.utils import atomic_dir, seed_everything
    from distilnas.proxies.mapping_fitness import task_data

    record = out / task_name / "student.json"
    if record.is_file():
        return dict(json.loads(record.read_text())["outcome"])
    dcfg = DistillConfig.model_validate(p.distill)
    seed_everything(p.seed)
    task = get_task(task_name)
    entry = next(t for t in p.tasks if t.name == task_name)
    tok = p.tokenizer()
    encoder = AutoModel.from_pretrained(out / "general", attn_implementation="eager")
    teacher_config = AutoConfig.from_pretrained(entry.teacher_path)
    model = with_head(encoder, teacher_config)
    pairs = LayerMapping.from_string(student.mapping, p.teacher_layers).pairs(embeddings=not student.nas)
    stages = dcfg.task
    if student.nas:
        intermediate, prediction = nas_settings(stages.intermediate), nas_settings(stages.prediction)
        stages = stages.model_copy(update={"intermediate": intermediate, "prediction": prediction})
    cache = TeacherCache(Path(entry.cache_path), entry.cache_fingerprint)
    data = task_data(p, task_name, tok)
    evals = [tokenize_split(task, s, tok, p.max_length, p.glue_dir, p.cache_dir) for s in task.eval_splits]
    tests = [tokenize_split(task, s, tok, p.max_length, p.glue_dir, p.cache_dir) for s in task.test_splits]
    refs = student.references
    if refs:  # every split's inputs bring their references; the store is saved with the model
        store = ReferenceStore(Path(entry.store_path))
        width, layer, tokens = int(teacher_config.hidden_size), refs["teacher_layer"], refs["tokens"]
        model = referenced(model, width, layer, tokens).attach(store)  # type: ignore[arg-type]
        train = TokenizedSplit(task, task.train_split or "train", data)
        data = referenced_split(store, train, p.glue_dir, p.train_examples).dataset
        evals = [referenced_split(store, e, p.glue_dir) for e in evals]
        tests = [referenced_split(store, e, p.glue_dir) for e in tests]
    results = distill_task(
        model,
        CachedTeacher(cache),
        data,
        pairs,
        stages,
        task.is_regression,
        out / f"checkpoint-{task_name}",
        tok.pad_token_id or 0,
    )
    pad = tok.pad_token_id or 0
    metrics = evaluate(model, evals, pad_id=pad).metrics
    outcome = {
        "score": task_score(metrics),
        "metrics": metrics,
        **{f"{k}_loss": r.loss for k, r in results.items()},
        **{f"{k}_seconds": r.seconds for k, r in results.items()},
    }
    with atomic_dir(out / task_name) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        for ts in tests:
            logits, idx = predict(model, ts, pad_id=pad)
            write_submission(task, ts.split, idx, predictions_to_labels(task, logits), tmp / "predictions")
        record_data = {
            "student": asdict(student),
            "task": task_name,
            "teacher": entry.teacher_path,
            "max_length": p.max_length,
            "seed": p.seed,
            "outcome": outcome,
        }
        atomic_write_json(tmp / "student.json", record_data)
    return outcome


class FinalRecorder:
    """Final-stage trials as Optuna trials: task scores in one study, general distillation in another."""

    def __init__(
        self, storage: optuna.storages.BaseStorage, prefix: str, students: list[str], tasks: list[str]
    ):
        self.tasks = optuna.create_study(
            study_name=f"{prefix}-final", storage=storage, direction="maximize", load_if_exists=True
        )
        self.general = optuna.create_study(
            study_name=f"{prefix}-final-general", storage=storage, direction="minimize", load_if_exists=True
        )
        self.dists: dict[str, BaseDistribution] = {
            "student": CategoricalDistribution(students),
            "task": CategoricalDistribution(tasks),
        }

    def record(self, job: Job, outcome: dict[str, Any] | None) -> None:
        general = job.config["task"] == "general"
        study = self.general if general else self.tasks
        params = {"student": job.config["student"]} if general else dict(job.config)
        dists = {k: self.dists[k] for k in params}
        value = None if outcome is None else float(outcome["loss"] if general else outcome["score"])
        record_job(study, job, outcome, value, params, dists)

    def done(self) -> dict[str, dict[str, Any] | None]:
        """Job id -> outcome of every finished job (the storage is the record of what ran)."""
        return dict(finished_jobs(self.general, self.tasks))


def reference_stores(p: PreparedProxy, layer: int, tokens: int) -> None:
    """Each task's reference store for referenced students, built once before the trials from the task's
    teacher-output cache (the fine-tuned teacher's states of the training rows it was made on)."""
    from distilnas.distill.glue import get_task
    from distilnas.distill.references import example_texts, task_store
    from distilnas.distill.teacher_cache import TeacherCache

    for entry in p.tasks:
        task = get_task(entry.name)
        cache = TeacherCache(Path(entry.cache_path), entry.cache_fingerprint)
        texts = example_texts(task, task.train_split or "train", p.glue_dir, p.train_examples)
        store = task_store(cache, texts, str(cache.index["teacher"]), layer, tokens, Path(p.cache_dir))
        entry.store_path = str(store.folder)


def run_final(
    cfg: RunConfig,
    mapping_results: dict[str, Any] | None,
    storage: optuna.storages.BaseStorage,
    address: str | None = None,
) -> dict[str, Any]:
    """Distil and score every chosen student on the final tasks; returns the outcomes per job."""
    folder = (cfg.output_dir / "final").resolve()
    if cfg.data.corpus is None:
        raise UserError("data.corpus: the final stage's general distillation needs a corpus")
    students = chosen_students(cfg, mapping_results)
    tasks = list(cfg.final.tasks)
    init_ray(address or cfg.ray.address)
    from distilnas.distill.corpus import load_corpus

    setting = ProxyConfig(
        tasks=tasks,
        corpus_fraction=cfg.distill.corpus_fraction,
        train_examples=cfg.distill.train_limit,
        general_steps=1,  # unused: the final stage trains with the `distill` section's own budgets
        task_steps=1,
    )
    prepared = prepare(
        cfg.teacher,
        setting,
        cfg.distill,
        load_corpus(cfg.data.corpus),
        cfg.data.glue_dir,
        cfg.cache_dir,
        folder,
        "task-specific",  # task distillation reads the fine-tuned teachers' cached outputs
        cfg.seed,
    )
    refs = student_spec(cfg.distill, load_model_config(resolve(cfg.teacher.name))).references
    if refs:
        reference_stores(prepared, refs["teacher_layer"], refs["tokens"])
        atomic_write_json(folder / "proxy.json", prepared.to_json())
    recorder = FinalRecorder(storage, cfg.storage.study_prefix, [s.name for s in students], tasks)
    work = FinalWork(prepared.to_json(), {s.name: asdict(s) for s in students}, str(folder))
    searcher = JobSearcher(plan(students, tasks), recorder.done(), recorder.record)
    run_searcher(
        searcher,
        work,
        folder,
        "final",
        cfg.ray.cpus_per_trial,
        cfg.ray.gpus_per_trial,
        cfg.ray.max_concurrent,
        trainable=job_trial,
    )
    results = {
        "students": [asdict(s) for s in students],
        "tasks": tasks,
        "jobs": searcher.results,
        "ray": searcher.overhead(),
    }
    atomic_write_json(folder / "results.json", results)
    return results
