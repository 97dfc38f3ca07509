"""Fine-tune a sequence-classification model on a GLUE task and score it on the dev sets."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from distilnas.distill.config import TrainSettings
from distilnas.distill.data import LengthBucketBatches, TokenizedSplit, collate, tokenize_split
from distilnas.distill.glue import GlueTask, compute_metrics, predictions_to_labels
from distilnas.distill.optim import adamw
from distilnas.distill.utils import autocast_context, default_device, seed_everything

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Metrics of one task (every eval split; MNLI's carry _m/_mm) and the raw predictions per split."""

    metrics: dict[str, float]
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    idx: dict[str, np.ndarray] = field(default_factory=dict)


def _loader(split: TokenizedSplit, batch_size: int, shuffle: bool, seed: int, pad_id: int) -> DataLoader:
    sampler = LengthBucketBatches(split.lengths, batch_size, shuffle=shuffle, seed=seed)
    cols = [
        c for c in ("input_ids", "token_type_ids", "label", "reference") if c in split.dataset.column_names
    ]
    return DataLoader(
        split.dataset.select_columns(cols),
        batch_sampler=sampler,
        collate_fn=lambda rows: collate(rows, pad_id),
    )


@torch.no_grad()
def predict(
    model: PreTrainedModel, split: TokenizedSplit, batch_size: int = 128, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs for a split, in the split's row order: (logits, idx)."""
    device = next(model.parameters()).device
    model.eval()
    loader = _loader(split, batch_size, shuffle=False, seed=0, pad_id=pad_id)
    order = [i for batch in loader.batch_sampler for i in batch]  # type: ignore[union-attr]
    outs = []
    for batch in tqdm(loader, desc=f"predict {split.task.name}/{split.split}", leave=False):
        batch.pop("labels", None)
        with autocast_context(device):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        outs.append(logits.float().cpu().numpy())
    logits_sorted = np.concatenate(outs)
    logits = np.empty_like(logits_sorted)
    logits[np.asarray(order)] = logits_sorted
    return logits, np.asarray(split.dataset["idx"])


def evaluate(
    model: PreTrainedModel, splits: list[TokenizedSplit], batch_size: int = 128, pad_id: int = 0
) -> EvalResult:
    """Score a model on the task's eval splits with the official metrics."""
    result = EvalResult(metrics={})
    for split in splits:
        logits, idx = predict(model, split, batch_size, pad_id)
        preds = predictions_to_labels(split.task, logits)
        labels = np.asarray(split.dataset["label"])
        result.metrics.update(compute_metrics(split.task, preds, labels, split.split))
        result.predictions[split.split] = preds
        result.idx[split.split] = idx
    return result


def train(
    model: PreTrainedModel,
    split: TokenizedSplit,
    settings: TrainSettings,
    pad_id: int = 0,
) -> dict[str, float]:
    """Fine-tune ``model`` in place: AdamW, linear warm-up and decay, gradient clipping, bucketed batches.

    Returns training figures (steps, final loss, seconds).
    """
    seed_everything(settings.seed)
    device = next(model.parameters()).device
    loader = _loader(split, settings.batch_size, shuffle=True, seed=settings.seed, pad_id=pad_id)
    steps_per_epoch = len(loader)
    total = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    no_decay = ("bias", "LayerNorm.weight", "layernorm", "layer_norm")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
            "weight_decay": settings.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = adamw(groups, settings.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total), total)

    model.train()
    step, epoch, running = 0, 0, float("nan")
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"train {split.task.name}", unit="step")
    while step < total:
        loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(device):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = float(loss.detach())
            running = value if math.isnan(running) else 0.98 * running + 0.02 * value
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", epoch=epoch)
            if step >= total:
                break
        epoch += 1
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    log.info("trained %s: %d steps in %.0fs, loss %.4f", split.task.name, step, seconds, running)
    return {"steps": step, "loss": running, "train_seconds": seconds}


def finetune_and_evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: GlueTask,
    settings: TrainSettings,
    glue_dir: str | Path | None,
    cache_dir: str | Path | None,
    do_train: bool = True,
    reads: Callable[[TokenizedSplit, int | None], TokenizedSplit] | None = None,
) -> tuple[EvalResult, dict[str, float]]:
    """Fine-tune on the task's train split (unless ``do_train`` is off), then score every eval split.

    ``reads(split, limit)`` gives a split as the model reads it (a referenced student: with references)."""
    pad_id = tokenizer.pad_token_id or 0
    model.to(default_device())  # type: ignore[arg-type]

    def inputs(split: TokenizedSplit, limit: int | None = None) -> TokenizedSplit:
        return split if reads is None else reads(split, limit)

    figures: dict[str, float] = {}
    if do_train:
        if task.train_split is None:
            raise ValueError(f"{task.name} has no training split")
        train_split = tokenize_split(
            task, task.train_split, tokenizer, settings.max_length, glue_dir, cache_dir, settings.train_limit
        )
        figures = train(model, inputs(train_split, settings.train_limit), settings, pad_id)
    evals = [
        inputs(tokenize_split(task, s, tokenizer, settings.max_length, glue_dir, cache_dir))
        for s in task.eval_splits
    ]
    return evaluate(model, evals, settings.eval_batch_size, pad_id), figures
