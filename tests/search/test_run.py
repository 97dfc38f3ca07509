"""`distilnas run` end to end on a tiny teacher: mapping search, final distillation as Ray Tune trials,
results table with the Pareto front, exports that load with transformers alone, the report; resuming."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import Cli, write_run_config
from helpers import run_process as run

from distilnas.results.storage import open_storage


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, glue_dir: Path, corpus_dir: Path) -> tuple[Path, dict]:
    cfg = write_run_config(tmp_path_factory.mktemp("run"), glue_dir, corpus_dir)
    proc = run("run", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr[-5000:]
    return cfg, json.loads(proc.stdout)


def test_run_end_to_end(finished: tuple[Path, dict]) -> None:
    cfg, out = finished
    rows = {r["model"]: r for r in out["table"]}
    assert rows["teacher"]["speedup"] == pytest.approx(1.0)
    students = [r for r in out["table"] if r["kind"] == "student"]
    assert 1 <= len(students) <= 3 and all(r["params"] < rows["teacher"]["params"] for r in students)
    for r in students:
        assert r["glue"] == pytest.approx((r["rte"] + r["mrpc"]) / 2)
    front = [r for r in students if r["pareto"]]
    assert front and len(out["exports"]) == len(front)
    assert 0 <= out["hypervolume"] <= 1
    run_dir = cfg.parent / "out"
    assert (run_dir / "report.html").read_text().count("<script") >= 1
    assert (run_dir / "results" / "results.csv").is_file()
    # every final trial is in the run's storage: a general trial per student, a task trial per task
    storage = open_storage(None, run_dir)
    tasks = optuna.load_study(study_name="distilnas-final", storage=storage).get_trials()
    general = optuna.load_study(study_name="distilnas-final-general", storage=storage).get_trials()
    assert len(general) == len(students) and len(tasks) == 2 * len(students)
    assert {t.params["task"] for t in tasks} == {"rte", "mrpc"}


LOAD = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder, dev = sys.argv[1], sys.argv[2]
assert "distilnas" not in sys.modules
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
tok = AutoTokenizer.from_pretrained(folder)
record = json.load(open(folder + "/student.json"))
rows = [line.rstrip("\\n").split("\\t") for line in open(dev, encoding="utf-8")][1:]
right = 0
with torch.no_grad():
    for _, a, b, label in rows:
        enc = tok(a, b, truncation=True, max_length=record["max_length"], return_tensors="pt")
        pred = model(**enc).logits.argmax(-1).item()
        right += model.config.id2label[pred] == label
print(json.dumps({"accuracy": 100 * right / len(rows), "recorded": record["outcome"]["metrics"]["accuracy"],
                  "n": len(rows)}))
"""


def test_exported_student_loads_with_transformers_alone(finished: tuple[Path, dict], glue_dir: Path) -> None:
    _, out = finished
    folder = Path(out["exports"][0])
    record = json.loads((folder / "student.json").read_text())
    assert set(record) >= {"architecture", "mapping", "metrics", "latency", "seed", "teacher", "config_hash"}
    assert record["latency"]["device"] and record["latency"]["batch_size"] == 1
    assert sorted(p.name for p in (folder / "predictions").iterdir()) == ["MRPC.tsv", "RTE.tsv"]
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(folder / "rte"), str(glue_dir / "RTE" / "dev.tsv")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    # one example at a time, unpadded, against distilnas's padded batches: equal up to a near-tie
    assert got["accuracy"] == pytest.approx(got["recorded"], abs=100 / got["n"] + 1e-9)


def test_resume_redoes_nothing_and_exports_are_protected(
    finished: tuple[Path, dict], tmp_path: Path, cli: Cli
) -> None:
    cfg, out = finished
    again = cli("run", cfg)  # refused before any work: in this process
    assert again.returncode == 2 and "pass --resume" in again.stderr
    other = cfg.parent / "other.yaml"
    other.write_text(cfg.read_text() + "seed: 1\n")
    mismatch = cli("run", other, "--resume")
    assert mismatch.returncode == 2 and "--resume with another config" in mismatch.stderr
    resumed = run("run", str(cfg), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert json.loads(resumed.stdout)["table"] == out["table"]
    storage = open_storage(None, cfg.parent / "out")
    assert (
        len(optuna.load_study(study_name="distilnas-final", storage=storage).get_trials())
        == len([r for r in out["table"] if r["kind"] == "student"]) * 2
    )
    # an export target that exists and is not this run's: refused, nothing written
    clash = tmp_path / "exports" / Path(out["exports"][0]).name
    clash.mkdir(parents=True)
    (clash / "mine.txt").write_text("keep")
    proc = cli("export", cfg.parent / "out", "--to", tmp_path / "exports")
    assert proc.returncode == 2 and "export target exists" in proc.stderr
    assert [p.name for p in clash.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == [clash.name]


def final_jobs(run_dir: Path) -> list[str]:
    if not (run_dir / "optuna.journal").is_file():
        return []
    storage = open_storage(None, run_dir)
    names = set(optuna.get_all_study_names(storage))
    return [
        t.user_attrs["job"]
        for name in ("distilnas-final-general", "distilnas-final")
        if name in names
        for t in optuna.load_study(study_name=name, storage=storage).get_trials()
    ]


@pytest.mark.slow  # keeps `make test` under 10 minutes; a killed search resumes in the fast suite
# (test_mapping_resume), and a finished run resumes here without redoing anything
def test_killed_run_resumes_without_redoing_finished_trials(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    """Killed mid-final-stage and resumed, a run of the finished one's config in another folder (its
    teacher, its caches and a copy of its search: the same inputs) ends with the same scores."""
    done, out = finished
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        done.read_text().replace(f"output_dir: {done.parent / 'out'}", f"output_dir: {tmp_path / 'out'}")
    )
    shutil.copytree(done.parent / "out" / "search-mapping", tmp_path / "out" / "search-mapping")
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_ADDRESS="")
    proc = subprocess.Popen(
        [sys.executable, "-m", "distilnas", "run", str(cfg)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while time.time() < deadline and len(final_jobs(tmp_path / "out")) < 4:  # generals done, tasks started
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = final_jobs(tmp_path / "out")
    assert 4 <= len(before) < 9, before  # 3 students: 3 general + 6 task jobs in all
    resumed = run("run", str(cfg), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "mapping search: finished earlier" in resumed.stderr
    after = final_jobs(tmp_path / "out")
    assert set(before) < set(after)
    assert len(after) == len(set(after)) == 9  # every job once: nothing finished ran again

    def scores(table: list[dict]) -> dict[str, tuple]:
        return {r["model"]: (r["params"], r["rte"], r["mrpc"]) for r in table}

    assert scores(json.loads(resumed.stdout)["table"]) == scores(out["table"])  # as if never killed
