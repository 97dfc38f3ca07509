"""Recipes: one student through general distillation, task distillation and scoring, and the plain
fine-tuning baseline it is compared with.

General distillation uses the pre-trained teacher on corpus text; task distillation uses the teacher
fine-tuned on the task. Both read the teacher's outputs from the cache, so the teacher runs once per
example, and both checkpoint into ``out_dir`` so a killed run resumes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from distilnas.distill.config import DistillConfig
from distilnas.distill.data import LengthBucketBatches, collate, tokenize_split, tokenize_texts
from distilnas.distill.distiller import CachedTeacher, Distiller, distill_task
from distilnas.distill.errors import UserError
from distilnas.distill.finetune import EvalResult, evaluate, train
from distilnas.distill.glue import GlueTask
from distilnas.distill.kronecker import check_factors
from distilnas.distill.losses import teacher_fields
from distilnas.distill.references import example_texts, referenced, referenced_split, task_store
from distilnas.distill.student import StudentSpec, build_student
from distilnas.distill.teacher import ModelSource, load_encoder, load_tokenizer
from distilnas.distill.teacher_cache import teacher_cache
from distilnas.distill.utils import default_device

log = logging.getLogger(__name__)


def student_spec(config: DistillConfig, teacher: PretrainedConfig) -> StudentSpec:
    """The configured student's shape; sizes left empty follow the teacher's head size and FFN ratio."""
    s = config.student
    base = StudentSpec.like(teacher, s.layers, s.hidden)
    spec = StudentSpec(s.layers, base.hidden, s.heads or base.heads, s.intermediate or base.intermediate)
    if s.references is not None:
        refs = s.references.model_dump()
        layers = int(teacher.num_hidden_layers)
        if refs["teacher_layer"] is not None and refs["teacher_layer"] > layers:
            raise UserError(
                f"distill.student.references.teacher_layer: {refs['teacher_layer']} is not a teacher layer "
                f"(0..{layers})"
            )
        refs["teacher_layer"] = layers if refs["teacher_layer"] is None else refs["teacher_layer"]
        return StudentSpec(spec.layers, spec.hidden, spec.heads, spec.intermediate, references=refs)
    if s.kronecker is None:
        return spec
    factors = s.kronecker.factors()
    try:
        check_factors(factors, int(teacher.vocab_size), spec.hidden, spec.intermediate)
    except UserError as exc:
        raise UserError(f"distill.student.{exc}") from None
    return StudentSpec(spec.layers, spec.hidden, spec.heads, spec.intermediate, factors)


def importance_batches(data: Dataset, n: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    batches = itertools.islice(LengthBucketBatches(data["length"], 16, shuffle=True, seed=0), n)
    cols = [c for c in ("input_ids", "token_type_ids") if c in data.column_names]
    rows = data.select_columns(cols)
    return [collate([rows[i] for i in b], pad_id) for b in batches]


def initial_student(
    source: ModelSource,
    config: DistillConfig,
    layer_sources: Sequence[int | None],
    sample_texts: Sequence[str],
) -> PreTrainedModel:
    """The student encoder before any training: random, copied or extracted from the teacher."""
    teacher, tok = load_encoder(source), load_tokenizer(source)
    spec = student_spec(config, teacher.config)
    batches = None
    if config.student.init == "extract" and config.student.importance_batches:
        data = tokenize_texts(list(sample_texts)[:2000], tok, config.max_length)
        batches = importance_batches(data, config.student.importance_batches, tok.pad_token_id or 0)
    return build_student(spec, teacher, config.student.init, layer_sources, importance_batches=batches)


def general_distillation(
    source: ModelSource,
    student: PreTrainedModel,
    pairs: list[tuple[int, int]],
    texts: Sequence[str],
    config: DistillConfig,
    cache_dir: str | Path,
    out_dir: str | Path,
) -> PreTrainedModel:
    """Task-agnostic distillation of ``student`` (an encoder) from the pre-trained teacher on ``texts``."""
    teacher, tok = load_encoder(source), load_tokenizer(source)
    data = tokenize_texts(texts, tok, config.max_length, cache_dir)
    fields = sorted(teacher_fields(config.general.losses))
    cache = teacher_cache(teacher, source.identity(), data, config.max_length, fields, cache_dir)
    del teacher  # a warm cache is all the distiller needs
    result = Distiller(student, CachedTeacher(cache), pairs, config.general).fit(
        data, Path(out_dir) / "general", tok.pad_token_id or 0, desc="general distillation"
    )
    log.info("general distillation: %d steps, loss %.4f, %.0fs", result.steps, result.loss, result.seconds)
    return student


def _label_as(cfg: PretrainedConfig, teacher_config: PretrainedConfig) -> None:
    names: Any = teacher_config.id2label
    cfg.id2label = {int(k): str(v) for k, v in names.items()}
    cfg.label2id = {str(v): int(k) for k, v in names.items()}
    cfg.problem_type = teacher_config.problem_type


def with_head(encoder: PreTrainedModel, teacher_config: PretrainedConfig) -> PreTrainedModel:
    """A sequence-classification student whose encoder is ``encoder``'s weights, labelled as the teacher
    (a BERT, or any registered encoder such as a NAS-BERT student)."""
    if encoder.config.model_type != "bert":  # NAS-BERT, Kronecker BERT: their own registered heads
        cfg = type(encoder.config).from_dict(encoder.config.to_dict())
        _label_as(cfg, teacher_config)
        torch.manual_seed(0)
        head = AutoModelForSequenceClassification.from_config(cfg)
        head.base_model.load_state_dict(encoder.state_dict())
        return head
    cfg = BertConfig.from_dict(encoder.config.to_dict())
    _label_as(cfg, teacher_config)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    model.bert.load_state_dict(encoder.state_dict())
    return model


@dataclass
class TaskOutcome:
    model: PreTrainedModel
    result: EvalResult
    figures: dict[str, float]


def task_distillation(
    student_encoder: PreTrainedModel,
    teacher_path: Path,
    teacher_id: str,
    task: GlueTask,
    pairs: list[tuple[int, int]],
    config: DistillConfig,
    glue_dir: str | Path | None,
    cache_dir: str | Path,
    out_dir: str | Path,
) -> TaskOutcome:
    """TinyBERT's two task stages from the fine-tuned teacher at ``teacher_path``, then dev scores."""
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path, attn_implementation="eager")
    tok = load_tokenizer(ModelSource(str(teacher_path), str(teacher_path), True, True))
    train_split = tokenize_split(
        task, task.train_split or "train", tok, config.max_length, glue_dir, cache_dir, config.train_limit
    )
    data = train_split.dataset
    weights = {**config.task.intermediate.losses, **config.task.prediction.losses}
    refs = student_spec(config, teacher.config).references
    fields = sorted(teacher_fields(weights) | {"logits"} | ({"hidden"} if refs else set()))
    cache = teacher_cache(teacher, teacher_id, data, config.max_length, fields, cache_dir)
    evals = [tokenize_split(task, s, tok, config.max_length, glue_dir, cache_dir) for s in task.eval_splits]
    student = with_head(student_encoder, teacher.config)
    if refs:  # the pool is the training rows; each row's reference is another one of them
        texts = example_texts(task, task.train_split or "train", glue_dir, config.train_limit)
        store = task_store(cache, texts, teacher_id, refs["teacher_layer"], refs["tokens"], Path(cache_dir))
        data = referenced_split(store, train_split, glue_dir, config.train_limit).dataset
        evals = [referenced_split(store, e, glue_dir) for e in evals]
        width = int(teacher.config.hidden_size)
        student = referenced(student, width, refs["teacher_layer"], refs["tokens"])  # type: ignore[arg-type]
        student.attach(store)
    results = distill_task(
        student,
        CachedTeacher(cache),
        data,
        pairs,
        config.task,
        regression=task.is_regression,
        checkpoint_dir=Path(out_dir) / task.name,
        pad_id=tok.pad_token_id or 0,
    )
    figures = {f"{k}_loss": r.loss for k, r in results.items()} | {
        f"{k}_seconds": r.seconds for k, r in results.items()
    }
    return TaskOutcome(student, evaluate(student, evals), figures)


def plain_finetune(
    student_encoder: PreTrainedModel,
    teacher_path: Path,
    task: GlueTask,
    config: DistillConfig,
    glue_dir: str | Path | None,
    cache_dir: str | Path,
) -> TaskOutcome:
    """The baseline: the same student fine-tuned on gold labels only (no teacher), then dev scores."""
    teacher_config = AutoModelForSequenceClassification.from_pretrained(teacher_path).config
    tok = load_tokenizer(ModelSource(str(teacher_path), str(teacher_path), True, True))
    settings = config.baseline.model_copy(
        update={"max_length": config.max_length, "train_limit": config.train_limit}
    )
    data = tokenize_split(
        task, task.train_split or "train", tok, settings.max_length, glue_dir, cache_dir, settings.train_limit
    )
    student = with_head(student_encoder, teacher_config).to(default_device())  # type: ignore[arg-type]
    figures = train(student, data, settings, tok.pad_token_id or 0)
    evals = [tokenize_split(task, s, tok, config.max_length, glue_dir, cache_dir) for s in task.eval_splits]
    return TaskOutcome(student, evaluate(student, evals), figures)
