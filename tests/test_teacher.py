"""Teachers: resolving names, fine-tuning with a cache, seeded determinism, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
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


def run_cli(*args: str, env_glue: Path | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    if env_glue is not None:
        env["GLUE_DIR"] = str(env_glue)
    return subprocess.run(
        [sys.executable, "-m", "distilnas", *args], capture_output=True, text=True, timeout=600, env=env
    )


def test_teacher_cli_trains_then_reuses(tiny_bert: Path, glue_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        f"teacher:\n  name: {tiny_bert}\n"
        "  train: {epochs: 1, train_limit: 32, batch_size: 16, max_length: 48}\n"
        f"data:\n  glue_dir: {glue_dir}\n  cache_dir: {tmp_path / 'cache'}\noutput_dir: {tmp_path / 'run'}\n"
    )
    first = run_cli("teacher", str(cfg), "-t", "wnli", "-t", "STS-B", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert set(report["tasks"]) == {"wnli", "stsb"}
    assert set(report["tasks"]["stsb"]["metrics"]) == {"pearson", "spearman"}
    assert not report["tasks"]["wnli"]["cached"]
    stsb = report["tasks"]["stsb"]["metrics"]
    wnli = report["tasks"]["wnli"]["metrics"]["accuracy"]
    assert report["glue_average"] == pytest.approx((wnli + (stsb["pearson"] + stsb["spearman"]) / 2) / 2)
    assert (tmp_path / "run" / "logs" / "teacher.log").is_file()
    second = json.loads(run_cli("teacher", str(cfg), "-t", "wnli", "--json").stdout)
    assert second["tasks"]["wnli"]["cached"] is True
    bad = run_cli("teacher", str(cfg), "-t", "wnli", "-t", "sst3")
    assert bad.returncode == 2 and "unknown GLUE task 'sst3'" in bad.stderr


def test_evaluate_cli(tiny_bert: Path, glue_dir: Path, tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    proc = run_cli(
        "evaluate",
        str(tiny_bert),
        "--task",
        "wnli",
        "--epochs",
        "1",
        "--train-limit",
        "32",
        "--max-length",
        "48",
        "--cache-dir",
        str(tmp_path / "c"),
        "--predictions",
        str(preds),
        "--json",
        env_glue=glue_dir,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["metrics"]) == {"accuracy"}
    lines = (preds / "WNLI.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 147  # 146 test rows
    assert {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}  # WNLI is submitted as 0/1
    bad = run_cli("evaluate", str(tiny_bert), "--task", "wnli", "--lr", "-1", env_glue=glue_dir)
    assert (
        bad.returncode == 2 and bad.stderr.strip() == "distilnas: error: lr: Input should be greater than 0"
    )
    # a model without a head for the task cannot be scored without training
    no_head = run_cli("evaluate", "minilm-l6", "--task", "rte", "--no-train", env_glue=glue_dir)
    assert no_head.returncode == 2 and "has no trained rte head" in no_head.stderr


def test_evaluate_no_train_reproduces_the_recorded_score(
    tiny_bert: Path, glue_dir: Path, tmp_path: Path
) -> None:
    ft, _ = fine_tuned_teacher(resolve(str(tiny_bert)), get_task("mrpc"), QUICK, glue_dir, tmp_path / "c")
    proc = run_cli(
        "evaluate",
        str(ft.path),
        "--task",
        "mrpc",
        "--no-train",
        "--max-length",
        "64",
        "--json",
        env_glue=glue_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metrics"] == pytest.approx(ft.metrics)
