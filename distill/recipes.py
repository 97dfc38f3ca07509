"""The one way a student is distilled: general distillation on the corpus from the pre-trained teacher, then
TinyBERT's two task stages from each task's fine-tuned teacher, then dev scores (and test-set predictions).

``distilnas distill``, the final stage's trials and, with step budgets, the mapping search's proxy all run
:class:`Distillation`. Every stage reads the teacher's outputs from the caches :func:`~distilnas.distill.
prepared.prepare` built, so the teacher never runs; with a ``folder`` every stage checkpoints there and a
finished stage is read back instead of trained again. What differs between student kinds (their heads,
a referenced student's references, the losses a NAS-BERT student can serve) comes from the student
registry (:mod:`distilnas.distill.students`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from transformers import AutoModel, PreTrainedModel

from distilnas.distill.config import DistillConfig, DistillSettings, TaskDistillConfig, TrainSettings
from distilnas.distill.data import TokenizedSplit, tokenize_split
from distilnas.distill.distiller import Distiller, distill_task
from distilnas.distill.errors import UserError
from distilnas.distill.finetune import EvalResult, evaluate, finetune_and_evaluate, predict, train
from distilnas.distill.glue import GlueTask, predictions_to_labels, write_submission
from distilnas.distill.metrics import task_score
from distilnas.distill.prepared import PreparedData
from distilnas.distill.students import StudentRecord, TaskInputs, kind_of_model
from distilnas.distill.teacher import ModelSource, has_head_for, load_for_task, load_tokenizer
from distilnas.distill.utils import (
    atomic_dir,
    atomic_write_json,
    default_device,
    fingerprint,
    seed_everything,
)

log = logging.getLogger(__name__)

Pairs = list[tuple[int, int]]


@dataclass(frozen=True)
class Budget:
    """A cheap run (the proxy): fixed step budgets and no checkpoints."""

    general_steps: int | None
    """Steps of general distillation; None: no general stage (the student starts its task stages as
    it was built)."""
    task_steps: int
    task_mode: Literal["distil", "finetune"] = "distil"
    """``distil``: task distillation; ``finetune``: fine-tuning on the labels (no teacher)."""
    task_rows: float = 1.0
    """The fraction of each task's prepared training rows its task stage trains on (the first ones; at
    least one): a lower rung of successive halving sees fewer rows as well as fewer steps."""

    def rows(self, split: TokenizedSplit) -> TokenizedSplit:
        """The first ``task_rows`` of ``split`` (row i stays example i of its teacher cache)."""
        if self.task_rows >= 1:
            return split
        n = max(1, math.ceil(len(split) * self.task_rows))
        return TokenizedSplit(split.task, split.split, split.dataset.select(range(n)))


@dataclass
class TaskOutcome:
    """A task stage's model, its dev metrics and training figures, and the inputs it was scored on."""

    model: PreTrainedModel
    metrics: dict[str, float]
    figures: dict[str, float]
    inputs: TaskInputs

    @property
    def score(self) -> float:
        return task_score(self.metrics)

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "metrics": self.metrics, **self.figures}


class Distillation:
    """One student (``record``) distilled over the layer ``pairs`` from the ``data`` prepared for it, with
    ``config``'s stages.

    With ``folder``: the general encoder is saved in ``folder/general``, each task model in
    ``folder/<task>`` (with its ``student.json``), checkpoints in ``folder/checkpoint-*``; a finished stage
    is read back. With ``budget``: step budgets, nothing saved."""

    def __init__(
        self,
        record: StudentRecord,
        pairs: Pairs,
        data: PreparedData,
        config: DistillConfig,
        folder: Path | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.record, self.data, self.config = record, data, config
        self.kind = record.kind
        self.pairs = [p for p in pairs if p[0] > 0 or self.kind.matches_embeddings]
        self.folder, self.budget = folder, budget
        self._encoder: PreTrainedModel | None = None

    @cached_property
    def tokenizer(self) -> Any:
        return self.data.tokenizer()

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def initial(self) -> PreTrainedModel:
        """The student's encoder before any training: built from the teacher as its kind builds it."""
        spec, targets = self.record.spec, dict(self.pairs)
        sources = [targets.get(m) for m in range(1, spec.layers + 1)]
        teacher = self.data.teacher_model() if self.kind.builds_from_teacher else None
        return self.kind.build(spec, teacher, self.record.init, sources, self.data.scores(), self.data.seed)  # type: ignore[arg-type]

    def stage(self, settings: DistillSettings, steps: int | None) -> DistillSettings:
        """A stage's settings: the losses the student's kind can serve, and the budget's steps."""
        update: dict[str, Any] = {"losses": self.kind.settings(settings.losses)}
        if self.budget is not None:
            update |= {"steps": steps, "checkpoint_every": 0}
        return settings.model_copy(update=update)

    def checkpoint(self, name: str) -> Path | None:
        return self.folder / f"checkpoint-{name}" if self.folder is not None else None

    # ------------------------------------------------------------------ what made a saved stage

    @cached_property
    def general_key(self) -> str:
        """The general stage's inputs: the student, its start, the pairs, the settings, the teacher's
        outputs on the corpus sample (their cache's fingerprint) and the seed."""
        student = {k: v for k, v in self.record.to_json().items() if k not in ("name", "origin")}
        corpus = self.data.corpus.fingerprint if self.data.corpus is not None else None
        steps = self.budget.general_steps if self.budget is not None else None
        settings = self.stage(self.config.general, steps).model_dump(mode="json")
        start = self.config.student.model_dump(mode="json")
        return fingerprint(
            "general-v1", student, start, self.pairs, settings, corpus, self.data.teacher, self.data.seed
        )

    def task_key(self, name: str) -> str:
        """A task stage's inputs: the general stage's, the fine-tuned teacher's outputs on the task's rows
        (and a referenced student's store), the stage settings and the rows."""
        entry = self.data.task(name)
        teacher = (entry.teacher_id, entry.fingerprint, entry.store)
        stages = self.config.task.model_dump(mode="json")
        rows = (self.data.train_limit, self.data.max_length)
        return fingerprint(
            "task-v1",
            self.general_key,
            teacher,
            stages,
            self.config.baseline.model_dump(mode="json"),
            rows,
            self.budget,
        )

    @staticmethod
    def finished(record: Path, key: str) -> dict[str, Any] | None:
        """A saved stage's record when it was made from these inputs; a stage made from others is
        removed (it is trained again)."""
        if not record.is_file():
            return None
        saved = dict(json.loads(record.read_text()))
        if saved.get("key") == key:
            return saved
        log.info("%s: made from other inputs (teacher, data or settings); training it again", record.parent)
        shutil.rmtree(record.parent)
        return None

    # ------------------------------------------------------------------ general distillation

    def general(self, encoder: PreTrainedModel | None = None) -> dict[str, Any]:
        """General distillation of ``encoder`` (default: the initial one) on the corpus sample; its
        outcome (loss, steps, seconds). A finished one in ``folder`` is read back."""
        saved = self.folder / "general" if self.folder is not None else None
        done = self.finished(saved / "general.json", self.general_key) if saved is not None else None
        if done is not None:
            log.info("general distillation: finished earlier (%s)", saved)
            return {k: v for k, v in done.items() if k != "key"}
        if self.data.corpus is None:
            raise ValueError("general distillation needs a prepared corpus")
        seed_everything(self.data.seed)
        encoder = encoder if encoder is not None else self.initial()
        steps = self.budget.general_steps if self.budget is not None else None
        result = Distiller(
            encoder, self.data.corpus_teacher(), self.pairs, self.stage(self.config.general, steps)
        ).fit(
            self.data.corpus.dataset(),
            self.checkpoint("general"),
            self.pad_id,
            desc="general distillation",
            restart_foreign=True,  # a checkpoint of other inputs: the stage is trained again
        )
        log.info(
            "general distillation: %d steps, loss %.4f, %.0fs", result.steps, result.loss, result.seconds
        )
        outcome = {"loss": result.loss, "steps": result.steps, "train_seconds": result.seconds}
        if saved is not None:
            with atomic_dir(saved) as tmp:
                encoder.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                atomic_write_json(tmp / "general.json", {**outcome, "key": self.general_key})
        self._encoder = encoder
        return outcome

    def encoder(self) -> PreTrainedModel:
        """The encoder the task stages start from: the general one (in memory or saved), or the initial
        one when the budget has no general stage."""
        if self._encoder is not None:
            return self._encoder
        if self.budget is not None and self.budget.general_steps is None:
            seed_everything(self.data.seed)
            self._encoder = self.initial()
        else:
            done = self.folder is not None and self.finished(
                self.folder / "general" / "general.json", self.general_key
            )
            if done and self.folder is not None:
                self._encoder = AutoModel.from_pretrained(
                    self.folder / "general", attn_implementation="eager"
                )
            else:
                self.general()
        assert self._encoder is not None
        return self._encoder

    # ------------------------------------------------------------------ task stages

    def inputs(self, name: str, tests: bool = False) -> TaskInputs:
        task, tok = self.data.task(name).task, self.tokenizer
        return TaskInputs(
            self.data.train_split(task, tok),
            [self.data.split(task, s, tok) for s in task.eval_splits],
            [self.data.split(task, s, tok) for s in task.test_splits] if tests else [],
        )

    def task(self, name: str, tests: bool = False) -> TaskOutcome:
        """TinyBERT's task stages on ``name`` (intermediate layers, then the prediction layer) from the
        encoder, then dev scores; with the budget's ``finetune`` mode, fine-tuning on labels instead."""
        encoder = self.encoder()
        seed_everything(self.data.seed)
        entry = self.data.task(name)
        task, teacher_config = entry.task, entry.teacher_config()
        model, inputs = self.kind.for_task(
            kind_of_model(encoder).with_head(encoder, teacher_config),
            self.record.spec,
            self.inputs(name, tests),
            entry.store,
            int(teacher_config.hidden_size),
            self.data.glue_dir,
            self.data.train_limit,
        )
        if self.budget is not None:
            inputs = replace(inputs, train=self.budget.rows(inputs.train))
        if self.budget is not None and self.budget.task_mode == "finetune":
            settings = self.config.baseline.model_copy(
                update={
                    "max_steps": self.budget.task_steps,
                    "max_length": self.data.max_length,
                    "seed": self.data.seed,
                }
            )
            return self.finetuned(model, inputs, settings)
        steps = self.budget.task_steps if self.budget is not None else None
        stages = TaskDistillConfig(
            intermediate=self.stage(self.config.task.intermediate, steps),
            prediction=self.stage(self.config.task.prediction, steps),
        )
        results = distill_task(
            model,
            self.data.task_teacher(name),
            inputs.train.dataset,
            self.pairs,
            stages,
            task.is_regression,
            self.checkpoint(name),
            self.pad_id,
            restart_foreign=True,
        )
        figures = {f"{k}_loss": r.loss for k, r in results.items()} | {
            f"{k}_seconds": r.seconds for k, r in results.items()
        }
        return TaskOutcome(model, evaluate(model, inputs.evals, pad_id=self.pad_id).metrics, figures, inputs)

    def finetuned(self, model: PreTrainedModel, inputs: TaskInputs, settings: TrainSettings) -> TaskOutcome:
        model = model.to(default_device())  # type: ignore[arg-type]
        figures = train(model, inputs.train, settings, self.pad_id)
        return TaskOutcome(model, evaluate(model, inputs.evals, pad_id=self.pad_id).metrics, figures, inputs)

    def baseline(self, name: str, encoder: PreTrainedModel) -> TaskOutcome:
        """The comparison: ``encoder`` (the student before distillation) fine-tuned on the labels alone,
        with the ``baseline`` settings."""
        entry = self.data.task(name)
        settings = self.config.baseline.model_copy(
            update={"max_length": self.config.max_length, "train_limit": self.config.train_limit}
        )
        model = kind_of_model(encoder).with_head(encoder, entry.teacher_config())
        return self.finetuned(model, self.inputs(name), settings)

    def saved_task(
        self, name: str, predictions: bool = True, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The task stage's outcome, its model saved in ``folder/<name>`` with the tokenizer, its
        ``student.json`` and (``predictions``) the GLUE test-set files; a finished one is read back."""
        assert self.folder is not None, "saved_task needs a folder"
        target = self.folder / name
        done = self.finished(target / "student.json", self.task_key(name))
        if done is not None:
            return dict(done["outcome"])
        outcome = self.task(name, tests=predictions)
        entry = self.data.task(name)
        record = {
            "student": self.record.to_json(),
            "task": name,
            "teacher": entry.teacher_path,
            "max_length": self.data.max_length,
            "seed": self.data.seed,
            "outcome": outcome.to_json(),
            **(extra or {}),
            "key": self.task_key(name),
        }
        with atomic_dir(target) as tmp:
            outcome.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            for split in outcome.inputs.tests:
                logits, idx = predict(outcome.model, split, pad_id=self.pad_id)
                labels = predictions_to_labels(entry.task, logits)
                write_submission(entry.task, split.split, idx, labels, tmp / "predictions")
            atomic_write_json(tmp / "student.json", record)
        return outcome.to_json()


def distil(
    record: StudentRecord,
    pairs: Pairs,
    data: PreparedData,
    config: DistillConfig,
    tasks: list[str],
    folder: Path | None = None,
    budget: Budget | None = None,
) -> dict[str, dict[str, Any]]:
    """General distillation (unless the budget skips it), then every task: each task's outcome (score,
    metrics, figures). With ``folder`` the models are saved there (see :class:`Distillation`)."""
    run = Distillation(record, pairs, data, config, folder, budget)
    if budget is None or budget.general_steps is not None:
        run.general()
    if folder is not None:
        return {t: run.saved_task(t, predictions=False) for t in tasks}
    return {t: run.task(t).to_json() for t in tasks}


def evaluate_model(
    source: ModelSource,
    task: GlueTask,
    settings: TrainSettings,
    glue_dir: Path | None,
    cache_dir: Path,
    do_train: bool = True,
    predictions: Path | None = None,
) -> tuple[EvalResult, dict[str, float], list[Path]]:
    """Fine-tune any model (a name, a folder, a saved student) on ``task``'s train split, or only score it
    (``do_train`` off), on every eval split; with ``predictions``, write the test-set files there. A saved
    student reads splits as its kind does (a referenced one retrieves its references)."""
    if not do_train and not has_head_for(source, task):
        raise UserError(
            f"{source.name}: has no trained {task.name} head ({task.num_labels} labels); drop --no-train"
        )
    tok = load_tokenizer(source)
    net = load_for_task(source, task, settings.seed)
    reads = kind_of_model(net).split_inputs(net, glue_dir)
    result, figures = finetune_and_evaluate(net, tok, task, settings, glue_dir, cache_dir, do_train, reads)
    written: list[Path] = []
    for split in task.test_splits if predictions is not None else ():
        tokenized = tokenize_split(task, split, tok, settings.max_length, glue_dir, cache_dir)
        tokenized = reads(tokenized, None) if reads is not None else tokenized
        logits, idx = predict(net, tokenized, settings.eval_batch_size, tok.pad_token_id or 0)
        labels = predictions_to_labels(task, logits)
        written.append(write_submission(task, split, idx, labels, predictions or Path()))
    return result, figures, written
