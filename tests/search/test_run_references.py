"""`distilnas run` with a referenced student (RefBERT): the final stage distils it with references on
every split, times it with its retrieval, and exports it with its reference store, which a fresh process
uses to score the dev set as the run did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_process, save_tiny_bert


@pytest.mark.slow  # 48 s here: make test stays under 10 minutes (`make test-slow`); distilnas distill of a
# referenced student stays fast (test_distill_cli)
def test_final_stage_distils_times_and_exports_a_referenced_student(
    tmp_path: Path, glue_dir: Path, corpus_dir: Path
) -> None:
    teacher = save_tiny_bert(tmp_path / "teacher", layers=2)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"""
teacher:
  name: {teacher}
  train: {{epochs: 1, train_limit: 64, batch_size: 16, max_length: 32}}
data:
  glue_dir: {glue_dir}
  cache_dir: {tmp_path / "cache"}
  corpus: {{files: [{corpus_dir / "wikisplit" / "tune.tsv"}]}}
distill:
  student: {{layers: 1, hidden: 16, init: extract, importance_batches: 1, references: {{tokens: 6}}}}
  max_length: 32
  corpus_fraction: 0.01
  train_limit: 48
  general: {{losses: {{hidden_mse: 1}}, batch_size: 16, steps: 2}}
  task:
    intermediate: {{losses: {{hidden_mse: 1}}, steps: 2, batch_size: 16}}
    prediction: {{steps: 2, batch_size: 16}}
final: {{students: [uniform], tasks: [rte], latency: {{repeats: 5}}}}
ray: {{cpus_per_trial: 1}}
output_dir: {tmp_path / "out"}
"""
    )
    proc = run_process("run", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = json.loads(proc.stdout)
    (row,) = [r for r in out["table"] if r["kind"] == "student"]
    assert row["model"] == "1L-16-ref_uniform"

    measured = json.loads((tmp_path / "out" / "final" / "measurements.json").read_text())
    (figures,) = [v for k, v in next(iter(measured.values())).items() if "-ref" in k]
    lat = figures["latency"]
    assert lat["retrieval_ms"] > 0 and lat["ms"] == pytest.approx(lat["model_ms"] + lat["retrieval_ms"])
    assert figures["store_bytes"]["rte"] > 0
    assert row["latency_ms"] == pytest.approx(lat["ms"])

    folder = Path(out["exports"][0])
    record = json.loads((folder / "student.json").read_text())
    assert record["options"]["references"] == {"teacher_layer": 2, "tokens": 6}
    assert (folder / "rte" / "references" / "store.json").is_file()
    score = subprocess.run(  # a fresh process: the export alone, as a user loads it
        [sys.executable, "-c", SCORE, str(folder / "rte"), str(glue_dir)], capture_output=True, text=True
    )
    assert score.returncode == 0, score.stderr[-3000:]
    got = json.loads(score.stdout)
    assert got["accuracy"] == pytest.approx(got["recorded"])


SCORE = """
import json, sys
from pathlib import Path
import distilnas.distill.referenced_bert  # registers the referenced BERT with the Auto classes
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from distilnas.distill.data import tokenize_split
from distilnas.distill.finetune import evaluate
from distilnas.distill.glue import get_task
from distilnas.distill.reference_store import referenced_split
folder, glue = Path(sys.argv[1]), Path(sys.argv[2])
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
record = json.loads((folder / "student.json").read_text())
task = get_task("rte")
dev = tokenize_split(task, "validation", AutoTokenizer.from_pretrained(folder), record["max_length"], glue)
metrics = evaluate(model, [referenced_split(model.reference_store, dev, glue)]).metrics
print(json.dumps({"accuracy": metrics["accuracy"], "recorded": record["outcome"]["metrics"]["accuracy"]}))
"""
