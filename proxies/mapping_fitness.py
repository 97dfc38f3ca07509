"""The proxy fitness of a layer mapping.

:func:`prepare` runs once, in the driver: it fine-tunes the teacher on each proxy task (cached), tokenizes
a seeded corpus sample and the proxy tasks' train subsets and dev sets, ranks the teacher's heads and
neurons (for ``extract`` students), and caches the teacher's outputs on what the trials distil from (the
corpus sample; the task subsets in task-specific mode). The result is a small
JSON-able :class:`PreparedProxy`.

:class:`MappingFitness` is what a trial runs. It never runs the teacher: it reads the caches.
- task-agnostic mode: general distillation on the corpus sample with the mapping, then fine-tuning on each
  proxy task's train subset; fitness = the mean dev score over the tasks;
- task-specific mode: task distillation with the mapping on each proxy task; fitness likewise.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datasets import load_from_disk
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from distilnas.distill.config import DistillConfig, TaskDistillConfig, TeacherConfig
from distilnas.distill.corpus import sample_fraction
from distilnas.distill.data import TokenizedSplit, tokenize_split, tokenized_texts
from distilnas.distill.distiller import CachedTeacher, Distiller, distill_task
from distilnas.distill.finetune import evaluate, train
from distilnas.distill.glue import get_task
from distilnas.distill.losses import teacher_fields
from distilnas.distill.metrics import task_score
from distilnas.distill.recipes import importance_batches, student_spec, with_head
from distilnas.distill.student import Init, StudentSpec, build_student, importance
from distilnas.distill.teacher import ModelSource, fine_tuned_teacher, load_encoder, load_tokenizer, resolve
from distilnas.distill.teacher_cache import TeacherCache, teacher_cache
from distilnas.distill.utils import atomic_write_json, default_device, seed_everything
from distilnas.proxies.config import ProxyConfig
from distilnas.spaces.mapping import LayerMapping

log = logging.getLogger(__name__)


@dataclass
class ProxyTask:
    name: str
    teacher_path: str
    cache_path: str
    cache_fingerprint: str
    store_path: str = ""
    """The task's reference store, for referenced students (built by the final stage from this cache)."""


@dataclass
class PreparedProxy:
    """Everything a trial needs, as paths and settings (no models): cheap to ship to Ray workers."""

    teacher: str  # location of the pre-trained teacher (weights for student initialisation only)
    teacher_layers: int
    glue_dir: str | None
    cache_dir: str
    max_length: int
    train_examples: int | None
    corpus_data: str  # the tokenized corpus sample (a saved Dataset)
    corpus_cache: str
    corpus_fingerprint: str
    corpus_texts: int
    importance: str  # safetensors file of head and neuron importance, or ""
    tasks: list[ProxyTask] = field(default_factory=list)
    distill: dict[str, Any] = field(default_factory=dict)
    proxy: dict[str, Any] = field(default_factory=dict)
    mode: str = "task-agnostic"
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreparedProxy:
        data = dict(data)
        data["tasks"] = [ProxyTask(**t) for t in data["tasks"]]
        return cls(**data)

    def tokenizer(self) -> Any:
        return load_tokenizer(ModelSource(self.teacher, self.teacher, True, True))

    def initial_student(self, spec: StudentSpec, init: Init, mapping: LayerMapping) -> Any:
        """A student encoder built from the teacher's weights for ``mapping`` (the teacher never runs:
        ``extract`` uses the importance scores prepared once)."""
        teacher = AutoModel.from_pretrained(self.teacher, attn_implementation="eager")
        scores = None
        if self.importance:
            tensors = load_file(self.importance)
            scores = (tensors["heads"], tensors["neurons"])
        return build_student(
            spec, teacher, init, list(mapping.targets), seed=self.seed, importance_scores=scores
        )


def prepare(
    teacher: TeacherConfig,
    proxy: ProxyConfig,
    distill: DistillConfig,
    corpus_texts: list[str],
    glue_dir: Path | None,
    cache_dir: Path,
    out_dir: Path,
    mode: str,
    seed: int,
) -> PreparedProxy:
    """Fine-tuned teachers, token data, importance and teacher-output caches for the proxy setting.

    Paths are made absolute: trials run in their own working folders, possibly on other nodes of a
    cluster that shares the file system.
    """
    cache_dir, out_dir = cache_dir.resolve(), out_dir.resolve()
    glue_dir = glue_dir.resolve() if glue_dir is not None else None
    source = resolve(teacher.name)
    encoder, tok = load_encoder(source), load_tokenizer(source)
    texts = sample_fraction(corpus_texts, proxy.corpus_fraction, seed)
    corpus, corpus_data = tokenized_texts(texts, tok, distill.max_length, cache_dir)
    general_fields = sorted(teacher_fields(distill.general.losses))
    ccache = teacher_cache(encoder, source.identity(), corpus, distill.max_length, general_fields, cache_dir)

    scores_file = ""
    if distill.student.init == "extract":
        batches = importance_batches(
            corpus, max(distill.student.importance_batches, 1), tok.pad_token_id or 0
        )
        heads, neurons = importance(encoder, batches)
        scores_file = str(out_dir / "importance.safetensors")
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({"heads": heads.contiguous(), "neurons": neurons.contiguous()}, scores_file)

    prepared = PreparedProxy(
        teacher=source.location,
        teacher_layers=int(encoder.config.num_hidden_layers),
        glue_dir=str(glue_dir) if glue_dir else None,
        cache_dir=str(cache_dir),
        max_length=distill.max_length,
        train_examples=proxy.train_examples,
        corpus_data=str(corpus_data),
        corpus_cache=str(ccache.path),
        corpus_fingerprint=ccache.fingerprint,
        corpus_texts=len(texts),
        importance=scores_file,
        distill=distill.model_dump(mode="json"),
        proxy=proxy.model_dump(mode="json"),
        mode=mode,
        seed=seed,
    )
    task_weights = {**distill.task.intermediate.losses, **distill.task.prediction.losses}
    refs = student_spec(distill, encoder.config).references
    for name in proxy.tasks:
        task = get_task(name)
        ft, _ = fine_tuned_teacher(source, task, teacher.settings_for(name), glue_dir, cache_dir)
        data = task_data(prepared, name, tok)
        cache_path, cache_fingerprint = "", ""
        if mode == "task-specific":  # task-agnostic trials fine-tune on labels: no teacher outputs needed
            # a referenced student's reference store is taken from the hidden states of this cache
            fields = sorted(teacher_fields(task_weights) | {"logits"} | ({"hidden"} if refs else set()))
            tmodel = AutoModelForSequenceClassification.from_pretrained(ft.path, attn_implementation="eager")
            tcache = teacher_cache(
                tmodel, f"finetuned:{ft.fingerprint}", data, distill.max_length, fields, cache_dir
            )
            cache_path, cache_fingerprint = str(tcache.path), tcache.fingerprint
        prepared.tasks.append(ProxyTask(name, str(ft.path), cache_path, cache_fingerprint))
        for split in task.eval_splits:
            tokenize_split(task, split, tok, distill.max_length, glue_dir, cache_dir)
    atomic_write_json(out_dir / "proxy.json", prepared.to_json())
    return prepared


def task_data(prepared: PreparedProxy, name: str, tok: Any) -> Any:
    task = get_task(name)
    return tokenize_split(
        task,
        task.train_split or "train",
        tok,
        prepared.max_length,
        prepared.glue_dir,
        prepared.cache_dir,
        prepared.train_examples,
    ).dataset


class MappingFitness:
    """The proxy score of a mapping (picklable; runs inside a Ray trial, never runs the teacher)."""

    def __init__(self, prepared: PreparedProxy) -> None:
        self.prepared = prepared

    def __call__(self, mapping_text: str) -> dict[str, float]:
        p = self.prepared
        mapping = LayerMapping.from_string(mapping_text, p.teacher_layers)
        dcfg = DistillConfig.model_validate(p.distill)
        proxy = ProxyConfig.model_validate(p.proxy)
        seed_everything(p.seed)
        tok = p.tokenizer()
        teacher_config = AutoConfig.from_pretrained(p.teacher)
        student = p.initial_student(student_spec(dcfg, teacher_config), dcfg.student.init, mapping)
        pairs = mapping.pairs()
        scores: dict[str, float] = {}
        if p.mode == "task-agnostic":
            corpus = TeacherCache(Path(p.corpus_cache), p.corpus_fingerprint)
            data = load_from_disk(p.corpus_data)
            general = dcfg.general.model_copy(update={"steps": proxy.general_steps, "checkpoint_every": 0})
            Distiller(student, CachedTeacher(corpus), pairs, general).fit(data, desc="proxy: general")
        for t in p.tasks:
            task = get_task(t.name)
            tconfig = AutoConfig.from_pretrained(t.teacher_path)
            data = task_data(p, t.name, tok)
            model = with_head(student, tconfig).to(default_device())  # type: ignore[arg-type]
            if p.mode == "task-agnostic":
                finetune = dcfg.baseline.model_copy(
                    update={"max_steps": proxy.task_steps, "max_length": p.max_length, "seed": p.seed}
                )
                train(model, TokenizedSplit(task, "train", data), finetune, tok.pad_token_id or 0)
            else:
                cache = TeacherCache(Path(t.cache_path), t.cache_fingerprint)
                stages = TaskDistillConfig(
                    intermediate=dcfg.task.intermediate.model_copy(
                        update={"steps": proxy.task_steps, "checkpoint_every": 0}
                    ),
                    prediction=dcfg.task.prediction.model_copy(
                        update={"steps": proxy.task_steps, "checkpoint_every": 0}
                    ),
                )
                distill_task(model, CachedTeacher(cache), data, pairs, stages, task.is_regression)
            evals = [
                tokenize_split(task, s, tok, p.max_length, p.glue_dir, p.cache_dir) for s in task.eval_splits
            ]
            scores[t.name] = task_score(evaluate(model, evals).metrics)
        scores["fitness"] = sum(scores.values()) / len(scores)
        return scores
