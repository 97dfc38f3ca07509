"""`distilnas distill` end to end on a tiny teacher: general and task distillation, baseline, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification


def config(tmp_path: Path, teacher: Path, glue_dir: Path, corpus_dir: Path) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"""
teacher:
  name: {teacher}
  train: {{epochs: 1, train_limit: 64, batch_size: 16, max_length: 32}}
data:
  glue_dir: {glue_dir}
  cache_dir: {tmp_path / "cache"}
  corpus:
    files: [{corpus_dir / "wikisplit" / "tune.tsv"}]
distill:
  student: {{layers: 1, hidden: 16, init: extract, importance_batches: 2}}
  max_length: 32
  corpus_fraction: 0.01
  train_limit: 48
  general: {{steps: 4, batch_size: 16, relation_heads: 4, checkpoint_every: 2}}
  task:
    intermediate:
      {{losses: {{hidden_mse: 1, minilm_relation: 1}}, steps: 3, batch_size: 16, relation_heads: 4}}
    prediction: {{losses: {{prediction_ce: 1}}, steps: 3, batch_size: 16}}
  baseline: {{epochs: 1, batch_size: 16}}
output_dir: {tmp_path / "run"}
"""
    )
    return cfg


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "distilnas", *args], capture_output=True, text=True, timeout=900, env=env
    )


def test_distill_command(tiny_bert: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, tiny_bert, glue_dir, corpus_dir)
    proc = run("distill", str(cfg), "-t", "rte", "--mapping", "2/2", "--baseline", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["mapping"] == "2/2" and report["student"]["hidden"] == 16
    rte = report["tasks"]["rte"]
    assert set(rte) == {"distilled", "teacher", "fine-tuned"}
    assert set(rte["distilled"]) == {"accuracy"}
    folder = Path(report["run_dir"]) / "models" / "rte"
    record = json.loads((folder / "student.json").read_text())
    assert record["metrics"] == rte["distilled"] and record["mapping"] == "2/2"
    model = AutoModelForSequenceClassification.from_pretrained(folder)  # a plain transformers BERT
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 1
    assert (folder / "tokenizer.json").is_file()
    general = load_file(str(Path(report["run_dir"]) / "general" / "weights.safetensors"))
    assert any(k.startswith("projections.") for k in general)  # 16 -> 32 projections were trained

    # a second run finds every stage done: same scores, nothing trained again
    again = run("distill", str(cfg), "-t", "rte", "--mapping", "2/2", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["tasks"]["rte"]["distilled"] == rte["distilled"]
    assert "resumed general distillation at step 4 of 4" in again.stderr


def test_distill_bad_input(tiny_bert: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, tiny_bert, glue_dir, corpus_dir)
    bad = run("distill", str(cfg), "-t", "rte", "--mapping", "3/2")
    assert bad.returncode == 2 and "outside 1..2" in bad.stderr
    bad = run("distill", str(cfg), "-t", "rte", "--student", "four")
    assert bad.returncode == 2 and "expected <layers>L-<hidden>" in bad.stderr
    bad = run("distill", str(cfg), "-t", "rte", "--mapping", "1,2/2")
    assert bad.returncode == 2 and "has 2 student layers, the student has 1" in bad.stderr
