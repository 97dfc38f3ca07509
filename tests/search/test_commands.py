"""The commands on data and models, run as a user runs them: ``data check``, ``latency``, ``teacher`` and
``evaluate`` (results, caching, and one-line errors with exit code 2), and ``cache list`` / ``prune``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from filelock import FileLock
from helpers import SHARED, SOURCES_ROWS, Cli, Ran, bert_flops, bert_params, save_tiny_bert

from distilnas.distill.config import TrainSettings
from distilnas.distill.glue import get_task
from distilnas.distill.teacher import fine_tuned_teacher, resolve

QUICK = TrainSettings(epochs=1, batch_size=16, lr=1e-3, max_length=64, train_limit=64, seed=3)


def test_data_check_reports_sources_row_counts(glue_dir: Path, cli: Cli) -> None:
    proc = cli("data", "check", "--glue-dir", glue_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.json["rows"] == SOURCES_ROWS


def test_data_check_names_the_bad_file_and_line(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "RTE").mkdir()
    bad = tmp_path / "RTE" / "train.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tnot_entailment\n")
    proc = cli("data", "check", "--glue-dir", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "train.tsv:3" in proc.stderr


def test_latency_cli_on_config_only_folder(cli: Cli) -> None:
    """BERT-Tiny's real config without weights: built with random weights, measured, counted."""
    folder = SHARED / "models" / "bert-tiny-config-only"
    proc = cli(
        "latency",
        folder,
        "-b",
        "1",
        "-b",
        "4",
        "--seq-len",
        "32",
        "--repeats",
        "5",
        "--warmup",
        "1",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["random_weights"] is True
    assert report["parameters"] == bert_params(30522, 512, 2, 128, 512, 2)  # 4.39M, BERT-Tiny's size
    assert [r["batch_size"] for r in report["latency"]] == [1, 4]
    assert report["latency"][1]["flops"] == bert_flops(4, 32, 128, 512, 2)


def test_teacher_cli_trains_then_reuses(tiny_bert: Path, glue_dir: Path, tmp_path: Path, cli: Cli) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        f"teacher:\n  name: {tiny_bert}\n"
        "  train: {epochs: 1, train_limit: 32, batch_size: 16, max_length: 48}\n"
        f"data:\n  glue_dir: {glue_dir}\n  cache_dir: {tmp_path / 'cache'}\noutput_dir: {tmp_path / 'run'}\n"
    )
    first = cli("teacher", str(cfg), "-t", "wnli", "-t", "STS-B", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert set(report["tasks"]) == {"wnli", "stsb"}
    assert set(report["tasks"]["stsb"]["metrics"]) == {"pearson", "spearman"}
    assert not report["tasks"]["wnli"]["cached"]
    stsb = report["tasks"]["stsb"]["metrics"]
    wnli = report["tasks"]["wnli"]["metrics"]["accuracy"]
    assert report["glue_average"] == pytest.approx((wnli + (stsb["pearson"] + stsb["spearman"]) / 2) / 2)
    assert (tmp_path / "run" / "logs" / "teacher.log").is_file()
    second = json.loads(cli("teacher", str(cfg), "-t", "wnli", "--json").stdout)
    assert second["tasks"]["wnli"]["cached"] is True
    bad = cli("teacher", str(cfg), "-t", "wnli", "-t", "sst3")
    assert bad.returncode == 2 and "unknown GLUE task 'sst3'" in bad.stderr
    # the cache holds both teachers (and their tokenized data); one unused for ten days is pruned
    listed = json.loads(cli("cache", "list", "--config", str(cfg), "--json").stdout)
    teachers = {e["what"]: e for e in listed["entries"] if e["kind"] == "teachers"}
    assert set(teachers) == {f"{tiny_bert} fine-tuned on wnli", f"{tiny_bert} fine-tuned on stsb"}
    assert listed["bytes"] == sum(e["bytes"] for e in listed["entries"]) > 0
    tokenized = sorted(e["what"] for e in listed["entries"] if e["kind"] == "tokenized")
    assert tokenized == [  # train_limit 32; dev whole (its header line apart)
        "stsb-train tokenized, 32 rows",
        "stsb-validation tokenized, 1,500 rows",
        "wnli-train tokenized, 32 rows",
        "wnli-validation tokenized, 71 rows",
    ]
    old = Path(teachers[f"{tiny_bert} fine-tuned on stsb"]["path"])
    (old / ".last-used").unlink(missing_ok=True)  # made by the first run, not used since
    os.utime(old, (time.time() - 10 * 86400,) * 2)
    args = ("cache", "prune", "--config", str(cfg), "--older-than", "5", "--kind", "teachers", "--json")
    would = json.loads(cli(*args, "--dry-run").stdout)
    assert [e["path"] for e in would["removed"]] == [str(old)] and old.is_dir()
    with FileLock(str(old) + ".lock"):  # in use (being read): kept
        assert json.loads(cli(*args).stdout)["removed"] == [] and old.is_dir()
    assert [e["path"] for e in json.loads(cli(*args).stdout)["removed"]] == [str(old)]
    assert not old.exists()
    again = json.loads(cli("teacher", str(cfg), "-t", "stsb", "-t", "wnli", "--json").stdout)
    assert not again["tasks"]["stsb"]["cached"] and again["tasks"]["wnli"]["cached"]  # made again
    assert again["tasks"]["stsb"]["metrics"] == stsb  # the same teacher: keyed by what made it


def test_evaluate_cli(tiny_bert: Path, glue_dir: Path, tmp_path: Path, cli: Cli) -> None:
    preds = tmp_path / "preds"
    proc = cli(
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
        env={"GLUE_DIR": str(glue_dir)},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["metrics"]) == {"accuracy"}
    lines = (preds / "WNLI.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 147  # 146 test rows
    assert {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}  # WNLI is submitted as 0/1
    bad = cli("evaluate", str(tiny_bert), "--task", "wnli", "--lr", "-1", env={"GLUE_DIR": str(glue_dir)})
    assert (
        bad.returncode == 2 and bad.stderr.strip() == "distilnas: error: lr: Input should be greater than 0"
    )
    # a model without a head for the task cannot be scored without training
    no_head = cli("evaluate", "minilm-l6", "--task", "rte", "--no-train", env={"GLUE_DIR": str(glue_dir)})
    assert no_head.returncode == 2 and "has no trained rte head" in no_head.stderr


def test_evaluate_no_train_reproduces_the_recorded_score(
    tiny_bert: Path, glue_dir: Path, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    ft, _ = fine_tuned_teacher(resolve(str(tiny_bert)), get_task("mrpc"), QUICK, glue_dir, tmp_path / "c")
    proc = cli(
        "evaluate",
        str(ft.path),
        "--task",
        "mrpc",
        "--no-train",
        "--max-length",
        "64",
        "--json",
        env={"GLUE_DIR": str(glue_dir)},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metrics"] == pytest.approx(ft.metrics)


def space_count(tmp_path: Path, supernet: str, cli: Cli) -> Ran:
    teacher = save_tiny_bert(tmp_path / "teacher", layers=4, hidden=64, heads=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"teacher: {{name: {teacher}}}\nsearch: {{supernet: {supernet}}}\n")
    return cli("space", "count", cfg, "--json")


def test_space_count_command(tmp_path: Path, cli: Cli) -> None:
    proc = space_count(
        tmp_path, cli=cli, supernet="{blocks: 2, hidden_sizes: [32, 64], operations: [mha, ffn]}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    # 4 teacher layers -> 8 layers, 2 blocks of 4: 2 sizes * (2 + 4 + 8 + 16) = 60 paths a block
    assert out["paths_per_block"] == [60, 60] and out["paths"] == 3600 and out["layers_per_block"] == 4


@pytest.mark.parametrize(
    ("supernet", "message"),
    [
        ("{blocks: 3}", "search.supernet.blocks: 3 does not divide the 8 layers of a 4-layer teacher"),
        ("{blocks: 2, hidden_sizes: [32, 128]}", "search.supernet.hidden_sizes: [128] not in 1..64"),
    ],
)
def test_space_count_bad_input(tmp_path: Path, supernet: str, message: str, cli: Cli) -> None:
    proc = space_count(tmp_path, supernet, cli)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
