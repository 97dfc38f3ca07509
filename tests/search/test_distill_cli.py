"""`distilnas distill` end to end on a tiny teacher: general and task distillation, baseline, resume."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import Cli
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


def test_distill_command(tiny_bert: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path, cli: Cli) -> None:
    cfg = config(tmp_path, tiny_bert, glue_dir, corpus_dir)
    proc = cli("distill", cfg, "-t", "rte", "--mapping", "2/2", "--baseline", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["mapping"] == "2/2" and report["student"]["hidden"] == 16
    rte = report["tasks"]["rte"]
    assert set(rte) == {"distilled", "teacher", "fine-tuned"}
    assert set(rte["distilled"]) == {"accuracy"}
    folder = Path(report["run_dir"]) / "rte"
    record = json.loads((folder / "student.json").read_text())
    assert record["outcome"]["metrics"] == rte["distilled"] and record["student"]["mapping"] == "2/2"
    assert record["teacher_metrics"] == rte["teacher"] and record["task"] == "rte"
    model = AutoModelForSequenceClassification.from_pretrained(folder)  # a plain transformers BERT
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 1
    assert (folder / "tokenizer.json").is_file()
    general = load_file(str(Path(report["run_dir"]) / "checkpoint-general" / "weights.safetensors"))
    assert any(k.startswith("projections.") for k in general)  # 16 -> 32 projections were trained
    assert (Path(report["run_dir"]) / "general" / "model.safetensors").is_file()  # the distilled encoder

    # a second run finds every stage done: same scores, nothing trained again
    again = cli("distill", cfg, "-t", "rte", "--mapping", "2/2", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["tasks"]["rte"]["distilled"] == rte["distilled"]
    assert "general distillation: finished earlier" in again.stderr


def test_distill_bad_input(
    tiny_bert: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path, cli: Cli
) -> None:
    cfg = config(tmp_path, tiny_bert, glue_dir, corpus_dir)
    bad = cli("distill", str(cfg), "-t", "rte", "--mapping", "3/2")
    assert bad.returncode == 2 and "outside 1..2" in bad.stderr
    bad = cli("distill", str(cfg), "-t", "rte", "--student", "four")
    assert bad.returncode == 2 and "expected <layers>L-<hidden>" in bad.stderr
    bad = cli("distill", str(cfg), "-t", "rte", "--mapping", "1,2/2")
    assert bad.returncode == 2 and "has 2 student layers, the student has 1" in bad.stderr


def test_distill_a_referenced_student(
    tiny_bert: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path, cli: Cli
) -> None:
    """The student's task stages take references; the saved student carries its store, loads with the
    Auto classes and scores the same dev set as the run reported, retrieving its own references."""
    import torch

    from distilnas.distill.data import tokenize_split
    from distilnas.distill.finetune import evaluate
    from distilnas.distill.glue import get_task
    from distilnas.distill.reference_store import example_texts, with_references
    from distilnas.distill.teacher import ModelSource, load_tokenizer

    cfg = config(tmp_path, tiny_bert, glue_dir, corpus_dir)
    text = cfg.read_text().replace(
        "importance_batches: 2}", "importance_batches: 2, references: {tokens: 6}}"
    )
    cfg.write_text(text)
    proc = cli("distill", str(cfg), "-t", "mrpc", "--mapping", "2/2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    folder = Path(report["run_dir"]) / "mrpc"
    assert Path(report["run_dir"]).name.startswith("1L-16-ref")
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    store = model.reference_store
    assert store is not None and store.examples == 48 and store.key.layer == 2 and store.key.tokens == 6
    assert model.bert.reference_projection.weight.shape == (16, 32)  # teacher width -> student width

    task = get_task("mrpc")
    tok = load_tokenizer(ModelSource(str(folder), str(folder), True, True))
    dev = tokenize_split(task, "validation", tok, 32, glue_dir)
    refs = store.retrieve(example_texts(task, "validation", glue_dir))
    scored = evaluate(model, [type(dev)(task, "validation", with_references(dev.dataset, refs))])
    assert scored.metrics == report["tasks"]["mrpc"]["distilled"]
    # `distilnas evaluate` retrieves a saved referenced student's references too
    again = cli(
        "evaluate",
        str(folder),
        "-t",
        "mrpc",
        "--no-train",
        "--max-length",
        "32",
        "--json",
        "--glue-dir",
        str(glue_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["metrics"] == report["tasks"]["mrpc"]["distilled"]
    # and the references matter: other references give other logits
    batch = {"input_ids": torch.tensor([dev.dataset[0]["input_ids"]])}
    with torch.no_grad():
        a = model(**batch, reference_ids=torch.tensor([int(refs[0])])).logits
        b = model(**batch, reference_ids=torch.tensor([(int(refs[0]) + 1) % 48])).logits
    assert not torch.equal(a, b)


def test_distill_a_factorised_student(
    tiny_bert: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path, cli: Cli
) -> None:
    """A student whose word embeddings are factorised (a vocab x 4 table, 4 x 16 projection) is built
    from the extracted table by truncated SVD, distilled, and saved as a registered transformers model."""
    from distilnas.distill.bert import BertShape
    from distilnas.distill.factorised import FactorisedBertForSequenceClassification
    from distilnas.distill.measure import count_parameters

    cfg = config(tmp_path, tiny_bert, glue_dir, corpus_dir)
    cfg.write_text(cfg.read_text().replace("importance_batches: 2}", "importance_batches: 2, embedding: 4}"))
    proc = cli("distill", cfg, "-t", "rte", "--mapping", "2/2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["student"]["embedding"] == 4 and set(report["tasks"]["rte"]["distilled"]) == {"accuracy"}
    folder = Path(report["run_dir"]) / "rte"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert isinstance(model, FactorisedBertForSequenceClassification) and model.config.embedding_size == 4
    c = model.config  # the teacher's vocabulary, positions and token types
    shape = BertShape(1, 16, c.num_attention_heads, c.intermediate_size, embedding=4)
    head = 16 * 2 + 2  # the classifier
    assert count_parameters(model) == shape.parameters(c) + head
    assert json.loads((folder / "student.json").read_text())["student"]["embedding"] == 4
