"""Teachers: resolving names, fine-tuning with a cache, seeded determinism, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distilnas.distill.config import TrainSettings
from distilnas.distill.errors import UserError
from distilnas.distill.glue import get_task
from distilnas.distill.teacher import (
    fine_tuned_teacher,
    load_encoder,
    load_for_task,
    load_tokenizer,
    resolve,
)

QUICK = TrainSettings(epochs=1, batch_size=16, lr=1e-3, max_length=64, train_limit=64, seed=3)


def test_minilm_alias_resolves_offline() -> None:
    src = resolve("minilm-l6")
    assert src.local and src.has_weights
    assert (Path(src.location) / "model.safetensors").is_file()
    model = load_encoder(src)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert model.config._attn_implementation == "eager"
    tok = load_tokenizer(src)
    out = model(**tok(["a short test"], return_tensors="pt"), output_attentions=True)
    assert len(out.attentions) == 6  # eager attention returns the maps the losses need


def test_bad_names(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model folder not found"):
        resolve(str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve(str(tmp_path))
    with pytest.raises(UserError, match="neither a model folder nor reachable"):
        resolve("no-such-org/no-such-model-xyz")


def test_regression_head_for_stsb(tiny_bert: Path) -> None:
    model = load_for_task(resolve(str(tiny_bert)), get_task("stsb"))
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    rte = load_for_task(resolve(str(tiny_bert)), get_task("rte"))
    assert rte.config.id2label == {0: "entailment", 1: "not_entailment"}


def test_fine_tuned_teacher_is_cached_and_never_trained_twice(
    tiny_bert: Path, glue_dir: Path, cache_dir: Path
) -> None:
    src, task = resolve(str(tiny_bert)), get_task("rte")
    first, cached = fine_tuned_teacher(src, task, QUICK, glue_dir, cache_dir)
    assert not cached
    assert set(first.metrics) == {"accuracy"} and 0 <= first.metrics["accuracy"] <= 100
    assert (first.path / "model.safetensors").is_file() and (first.path / "teacher.json").is_file()
    record = json.loads((first.path / "teacher.json").read_text())
    assert record["train"]["steps"] == 4  # 64 rows / batch 16, one epoch
    mtime = (first.path / "model.safetensors").stat().st_mtime_ns
    again, cached = fine_tuned_teacher(src, task, QUICK, glue_dir, cache_dir)
    assert cached and again.path == first.path and again.metrics == first.metrics
    assert (first.path / "model.safetensors").stat().st_mtime_ns == mtime
    other, cached = fine_tuned_teacher(src, task, QUICK.model_copy(update={"lr": 5e-4}), glue_dir, cache_dir)
    assert not cached and other.fingerprint != first.fingerprint


def test_fine_tuning_is_deterministic_with_a_seed(tiny_bert: Path, glue_dir: Path, tmp_path: Path) -> None:
    src, task = resolve(str(tiny_bert)), get_task("mrpc")
    a, _ = fine_tuned_teacher(src, task, QUICK, glue_dir, tmp_path / "a")
    b, _ = fine_tuned_teacher(src, task, QUICK, glue_dir, tmp_path / "b")
    assert a.metrics == b.metrics
    wa, wb = load_file(a.path / "model.safetensors"), load_file(b.path / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
