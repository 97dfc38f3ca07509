"""What a distillation reads, prepared once before any student trains: the fine-tuned teachers, a seeded
corpus sample, the tasks' tokenized rows, head and neuron importance (for ``extract`` students), and the
teacher-output caches of all of it (and a referenced student's reference stores).

:func:`prepare` runs in the driver; the result, :class:`PreparedData`, is paths and settings only (JSON),
cheap to ship to Ray workers, whose trials never run the teacher. The mapping search's proxy, the final
stage and ``distilnas distill`` all prepare through it, each with its own tasks, corpus fraction and row
limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig

from distilnas.distill.artifacts import Shelf
from distilnas.distill.bert import importance, sample_batches
from distilnas.distill.config import DistillConfig, TeacherConfig
from distilnas.distill.corpus import sample_fraction
from distilnas.distill.data import TokenizedSplit, tokenize_split, tokenized_texts
from distilnas.distill.distiller import CachedTeacher
from distilnas.distill.errors import UserError
from distilnas.distill.glue import GlueTask, get_task
from distilnas.distill.losses import teacher_fields
from distilnas.distill.reference_store import example_texts
from distilnas.distill.students import StudentSpec
from distilnas.distill.teacher import ModelSource, fine_tuned_teacher, load_encoder, load_tokenizer, resolve
from distilnas.distill.teacher_cache import TeacherCache, reopened, teacher_cache


def reopen(path: str, fingerprint: str, rebuild: Callable[[], TeacherCache]) -> CachedTeacher:
    """A prepared teacher-output cache as a trial's teacher (see :func:`reopened`)."""
    return CachedTeacher(reopened(path, fingerprint, rebuild))


@dataclass
class CorpusData:
    """The tokenized corpus sample and the pre-trained teacher's outputs on it."""

    data: str
    """The saved tokenized Dataset."""
    cache: str
    fingerprint: str
    texts: int
    fields: list[str] = field(default_factory=list)
    """The teacher outputs cached (what the general losses read)."""

    def dataset(self) -> Dataset:
        return load_from_disk(self.data)


@dataclass
class TaskData:
    """One task: its fine-tuned teacher, and that teacher's outputs on the training rows when cached."""

    name: str
    teacher_path: str
    teacher_id: str
    """The fine-tuned teacher's identity (``finetuned:<fingerprint>``), as its caches are keyed."""
    cache: str = ""
    fingerprint: str = ""
    store: str = ""
    """A referenced student's reference store for this task (made from the cache)."""
    fields: list[str] = field(default_factory=list)

    @property
    def task(self) -> GlueTask:
        return get_task(self.name)

    def teacher_config(self) -> PretrainedConfig:
        return AutoConfig.from_pretrained(self.teacher_path)


@dataclass
class PreparedData:
    """Everything a distillation needs, as absolute paths and settings (no models)."""

    teacher: str
    """The pre-trained teacher's location (its weights start students; it never runs in a trial)."""
    teacher_layers: int
    glue_dir: str | None
    cache_dir: str
    max_length: int
    train_limit: int | None
    """Training rows per task (the first N); None: the whole training set."""
    corpus: CorpusData | None
    importance: str
    """A safetensors file of head and neuron importance, or "" (not an ``extract`` student)."""
    tasks: list[TaskData] = field(default_factory=list)
    seed: int = 0
    shelf: str = ""
    """Where the run storage keeps copies of the cache folders trials read (a cluster run), or "" (one
    machine: trials read the driver's cache)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreparedData:
        data = dict(data)
        data["corpus"] = CorpusData(**data["corpus"]) if data.get("corpus") else None
        data["tasks"] = [TaskData(**t) for t in data["tasks"]]
        return cls(**data)

    def travelling(self) -> list[str]:
        """The cache folders trials read that only the driver can make: the fine-tuned teachers (trained
        there), the tokenized corpus sample (the corpus is the driver's) and reference stores. (Tokenized
        GLUE splits and teacher outputs are remade on each node from inputs every node reads.)"""
        folders = [t.teacher_path for t in self.tasks] + [t.store for t in self.tasks if t.store]
        return folders + ([self.corpus.data] if self.corpus else [])

    def published(self, root: str) -> PreparedData:
        """Put what travels on the run storage's shelf ``root`` (a folder or a URI), for trials on other
        nodes."""
        shelf = Shelf(root, self.cache_dir)
        for folder in self.travelling():
            shelf.publish(folder)
        return replace(self, shelf=str(root))

    def on_node(self) -> PreparedData:
        """Make sure this node's cache holds what travels (copied from the shelf where it lacks it); a
        trial calls it before reading anything."""
        if self.shelf:
            shelf = Shelf(self.shelf, self.cache_dir)
            for folder in self.travelling():
                shelf.fetch(folder)
        return self

    def tokenizer(self) -> Any:
        return load_tokenizer(ModelSource(self.teacher, self.teacher, True, True))

    def task(self, name: str) -> TaskData:
        found = [t for t in self.tasks if t.name == name]
        if not found:
            raise UserError(f"{name}: not a prepared task ({', '.join(t.name for t in self.tasks)})")
        return found[0]

    def scores(self) -> Any:
        """Head and neuron importance, when prepared."""
        if not self.importance:
            return None
        tensors = load_file(self.importance)
        return tensors["heads"], tensors["neurons"]

    def teacher_model(self) -> Any:
        return AutoModel.from_pretrained(self.teacher, attn_implementation="eager")

    def corpus_teacher(self) -> CachedTeacher:
        """The pre-trained teacher's outputs on the corpus sample (rebuilt when found damaged)."""
        corpus = self.corpus
        if corpus is None:
            raise UserError("general distillation needs a prepared corpus")
        source = ModelSource(self.teacher, self.teacher, True, True)
        return reopen(
            corpus.cache,
            corpus.fingerprint,
            lambda: teacher_cache(
                self.teacher_model(),
                source.identity(),
                corpus.dataset(),
                self.max_length,
                corpus.fields,
                self.cache_dir,
            ),
        )

    def task_teacher(self, name: str) -> CachedTeacher:
        """The fine-tuned teacher's outputs on a task's training rows (rebuilt when found damaged)."""
        entry = self.task(name)
        if not entry.cache:
            raise UserError(f"{name}: the task's teacher outputs were not prepared (no cache)")

        def rebuild() -> TeacherCache:
            model = AutoModelForSequenceClassification.from_pretrained(
                entry.teacher_path, attn_implementation="eager"
            )
            rows = self.train_split(entry.task, self.tokenizer()).dataset
            return teacher_cache(model, entry.teacher_id, rows, self.max_length, entry.fields, self.cache_dir)

        return reopen(entry.cache, entry.fingerprint, rebuild)

    def split(self, task: GlueTask, split: str, tokenizer: Any, limit: int | None = None) -> TokenizedSplit:
        """A task split tokenized as prepared (cached: it was tokenized in :func:`prepare`)."""
        return tokenize_split(task, split, tokenizer, self.max_length, self.glue_dir, self.cache_dir, limit)

    def train_split(self, task: GlueTask, tokenizer: Any) -> TokenizedSplit:
        return self.split(task, task.train_split or "train", tokenizer, self.train_limit)


def prepare(
    teacher: TeacherConfig,
    distill: DistillConfig,
    tasks: list[str],
    corpus_texts: list[str] | None,
    glue_dir: Path | None,
    cache_dir: Path,
    out_dir: Path,
    seed: int,
    *,
    corpus_fraction: float,
    train_limit: int | None,
    task_caches: bool,
    student: StudentSpec | None = None,
    shelf: str | None = None,
) -> PreparedData:
    """Prepare every input once (see the module docstring); importance is saved in ``out_dir``.

    ``task_caches``: cache the fine-tuned teachers' outputs on the tasks' training rows (task
    distillation reads them; fine-tuning on labels does not). ``student``: the student the caches serve,
    when its kind needs more of them (a referenced student's reference stores). ``shelf``: a folder of the
    run storage to publish what travels to (a cluster run). Paths are made absolute: trials run in their
    own working folders."""
    cache_dir, out_dir = cache_dir.resolve(), out_dir.resolve()
    glue_dir = glue_dir.resolve() if glue_dir is not None else None
    source = resolve(teacher.name)
    encoder, tok = load_encoder(source), load_tokenizer(source)
    pad = tok.pad_token_id or 0
    corpus, scores_file = None, ""
    if corpus_texts is not None:
        texts = sample_fraction(corpus_texts, corpus_fraction, seed)
        dataset, data_path = tokenized_texts(texts, tok, distill.max_length, cache_dir)
        fields = sorted(teacher_fields(distill.general.losses))
        cache = teacher_cache(encoder, source.identity(), dataset, distill.max_length, fields, cache_dir)
        corpus = CorpusData(str(data_path), str(cache.path), cache.fingerprint, len(texts), fields)
        if distill.student.init == "extract":
            heads, neurons = importance(
                encoder, sample_batches(dataset, max(distill.student.importance_batches, 1), pad)
            )
            scores_file = str(out_dir / "importance.safetensors")
            out_dir.mkdir(parents=True, exist_ok=True)
            save_file({"heads": heads.contiguous(), "neurons": neurons.contiguous()}, scores_file)

    prepared = PreparedData(
        teacher=source.location,
        teacher_layers=int(encoder.config.num_hidden_layers),
        glue_dir=str(glue_dir) if glue_dir else None,
        cache_dir=str(cache_dir),
        max_length=distill.max_length,
        train_limit=train_limit,
        corpus=corpus,
        importance=scores_file,
        seed=seed,
    )
    task_weights = {**distill.task.intermediate.losses, **distill.task.prediction.losses}
    for name in tasks:
        task = get_task(name)
        ft, _ = fine_tuned_teacher(source, task, teacher.settings_for(name), glue_dir, cache_dir)
        entry = TaskData(name, str(ft.path), f"finetuned:{ft.fingerprint}")
        rows = prepared.train_split(task, tok).dataset
        if task_caches:
            extra = student.kind.task_fields(student) if student is not None else set()
            fields = sorted(teacher_fields(task_weights) | {"logits"} | extra)
            tmodel = AutoModelForSequenceClassification.from_pretrained(ft.path, attn_implementation="eager")
            tcache = teacher_cache(tmodel, entry.teacher_id, rows, distill.max_length, fields, cache_dir)
            entry.cache, entry.fingerprint, entry.fields = str(tcache.path), tcache.fingerprint, fields
            if student is not None:

                def pool(task: GlueTask = task) -> list[str]:
                    return example_texts(task, task.train_split or "train", glue_dir, train_limit)

                store = student.kind.task_store(student, tcache, pool, cache_dir)
                entry.store = str(store.folder) if store is not None else ""
        prepared.tasks.append(entry)
        for split in task.eval_splits:
            prepared.split(task, split, tok)
    return prepared.published(shelf) if shelf is not None else prepared
