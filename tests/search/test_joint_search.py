"""`distilnas search joint` end to end on a tiny teacher (NSGA-II under Ray Tune, three-objective trials in
the Optuna storage, a measured front, resume without re-running), and bad input before any work."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import Cli, save_tiny_bert
from helpers import run_process as run
from test_search_cli import config

from distilnas.results.pareto import dominates
from distilnas.results.storage import open_storage

JOINT = {
    "layers": [1, 2],
    "hidden": [16, 32],
    "heads": [1, 2],
    "intermediate": [32, 64],
    "init": ["extract"],
    "population": 4,
    "generations": 3,
}  # 2 widths x 2 FFN sizes x (4 + 6 mappings) = 40 students, a budget of 12


@pytest.fixture(scope="module")
def teacher4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("teacher4"), layers=4)


def joint_config(tmp_path: Path, teacher: Path, glue_dir: Path, corpus_dir: Path, **joint: object) -> Path:
    data = yaml.safe_load(config(tmp_path, teacher, glue_dir, corpus_dir).read_text())
    data["search"]["joint"] = JOINT | joint
    data["final"] = {"latency": {"seq_len": 32, "repeats": 5}}
    path = tmp_path / "joint.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow  # 75 s here: make test stays under 10 minutes (`make test-slow`); the joint rules stay fast
def test_search_joint_end_to_end(teacher4: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path) -> None:
    cfg = joint_config(tmp_path, teacher4, glue_dir, corpus_dir, embedding=[None, 8])  # 80 students
    proc = run("search", "joint", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout)
    assert results["mode"] == "nsga2" and results["space"]["size"] == 80 and results["budget"] == 12
    study = optuna.load_study(study_name="distilnas-joint", storage=open_storage(None, tmp_path / "run"))
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == results["evaluations"] >= 8  # generations of 4, children never evaluated twice
    assert len({t.user_attrs["student"] for t in trials}) == len(trials)
    assert study.metric_names == ["proxy score", "parameters", "predicted latency (ms)"]
    assert {"layers", "hidden", "intermediate", "embedding", "student_layer_1"} <= set(trials[0].params)
    assert {t.params["embedding"] for t in trials} == {"dense", "8"}  # factorised students were distilled
    # the front: exactly the non-dominated trials (score up, parameters and predicted latency down)
    points = {t.user_attrs["student"]: (-t.values[0], t.values[1], t.values[2]) for t in trials}
    on_front = {s for s, p in points.items() if not any(dominates(q, p) for q in points.values())}
    front = results["front"]
    assert {s["student"] for s in front} == on_front
    for s in front:
        assert (s["params"], s["predicted_ms"]) == pytest.approx(points[s["student"]][1:])
        assert s["measured_ms"] > 0
    assert results["latency"]["mape_percent"] >= 0 and results["latency"]["drift"] > 0
    volumes = [g["hypervolume"] for g in results["hypervolume"]["per_generation"]]
    assert len(volumes) == 3 and volumes == sorted(volumes) and volumes[-1] > 0  # NSGA-II keeps its front
    assert results["signal"]["evaluations"] == len(trials)
    stage = tmp_path / "run" / "search-joint"
    table = json.loads((stage / "latency.json").read_text())
    assert table["seq_len"] == 32 and set(table["tables"]) == {"16-e8", "32-e8"}
    resumed = run("search", "joint", str(cfg), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert json.loads(resumed.stdout)["front"][0]["student"] == front[0]["student"]
    assert len(
        optuna.load_study(study_name="distilnas-joint", storage=open_storage(None, tmp_path / "run")).trials
    ) == len(study.trials)  # nothing evaluated again


@pytest.mark.parametrize(
    ("joint", "message"),
    [
        ({"hidden": [16, 64]}, "search.joint.hidden: 64 is wider than the teacher (32)"),
        (
            {"max_params": 1000},
            "search.joint.max_params: 1,000 is below the smallest student (1L-16-1h-32f-extract",
        ),
        ({"layers": [1, 5]}, "a 5-layer student is deeper than its 4-layer teacher"),
        ({"strategy": "exhaustive"}, "exhaustive over 40 valid students, more than the budget of 12"),
        ({"heads": [3]}, "search.joint.heads: none divides"),
        ({"population": 1}, "search.joint.population: Input should be greater than 1"),
    ],
)
def test_search_joint_bad_input(
    teacher4: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path, cli: Cli, joint: dict, message: str
) -> None:
    proc = cli("search", "joint", joint_config(tmp_path, teacher4, glue_dir, corpus_dir, **joint))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow
def test_search_joint_with_successive_halving(
    teacher4: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    """Two rungs, eta 2: each generation's 4 children at rung 0 (half the steps), the best 2 at rung 1."""
    cfg = joint_config(tmp_path, teacher4, glue_dir, corpus_dir, generations=2)
    data = yaml.safe_load(cfg.read_text())
    data["proxy"] |= {"rungs": 2, "eta": 2, "general_steps": 4, "task_steps": 4}
    cfg.write_text(yaml.safe_dump(data))
    proc = run("search", "joint", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout)
    study = optuna.load_study(study_name="distilnas-joint", storage=open_storage(None, tmp_path / "run"))
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    by_rung = {r: [t for t in trials if t.params["rung"] == r] for r in (0, 1)}
    for generation in (0, 1):
        zero = [t for t in by_rung[0] if t.user_attrs["generation"] == generation]
        one = [t for t in by_rung[1] if t.user_attrs["generation"] == generation]
        assert len(one) == -(-len(zero) // 2)  # ceil(n / eta)
        promoted = {t.user_attrs["student"].removesuffix("@r1") for t in one}
        at_zero = {t.user_attrs["student"].removesuffix("@r0"): t.values[0] for t in zero}
        assert promoted <= set(at_zero)  # the best of rung 0 (ties broken by genome)
        assert min(at_zero[s] for s in promoted) >= max(v for s, v in at_zero.items() if s not in promoted)
    finalists = {t.user_attrs["student"].removesuffix("@r1") for t in by_rung[1]}
    assert {s["student"] for s in results["front"]} <= finalists  # only full-proxy scores compare
    rungs = results["signal"]["rungs"]
    assert [(r["rung"], r["task_steps"], r["evaluations"]) for r in rungs] == [
        (0, 2, len(by_rung[0])),
        (1, 4, len(by_rung[1])),
    ]
    # fidelity takes the joint search too: its top candidates re-scored in the full setting, per rung
    fid = run("fidelity", str(tmp_path / "run"), "--stage", "joint", "--top", "2", "--random", "1", "--json")
    assert fid.returncode == 0, fid.stderr[-4000:]
    found = json.loads(fid.stdout)
    assert found["search"] == "joint" and len(found["candidates"]) == 3
    assert all(c["student"] in finalists and isinstance(c["full"], float) for c in found["candidates"])
    assert [r["rung"] for r in found["rungs"]] == [0, 1] and found["rungs"][1]["candidates"] == 3
