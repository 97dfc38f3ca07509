"""`distilnas search supernet` end to end on a tiny teacher under Ray Tune: block trials, NSGA-II over
whole students, inherited-weight re-scoring, the front saved as students; every trial in Optuna;
resuming; extraction of any path; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from helpers import Cli, save_tiny_bert
from helpers import run_process as run

from distilnas.results.storage import open_storage


def write_config(tmp: Path, corpus_dir: Path, glue_dir: Path | None = None, **supernet: object) -> Path:
    teacher = tmp / "teacher"
    if not teacher.is_dir():
        save_tiny_bert(teacher, layers=4, hidden=64, heads=2)
    settings = {
        "blocks": 2,
        "hidden_sizes": [32, 64],
        "operations": ["mha", "ffn", "conv3"],
        "corpus_fraction": 0.04,
        "batch_size": 16,
        "lr": 1e-3,
        "warmup_epochs": 1,
        "bins": 2,
        "paths_per_bin": 8,
        "keep_per_bin": 2,
        "score_batches": 2,
        "population": 8,
        "generations": 4,
        "rescore": 6,
        "hand_designed": ["1L-32"],
        **supernet,
    }
    cfg = tmp / "supernet.yaml"
    cfg.write_text(
        f"""
teacher: {{name: {teacher}}}
data:
  glue_dir: {glue_dir}
  cache_dir: {tmp / "cache"}
  corpus: {{files: [{corpus_dir / "wikisplit" / "tune.tsv"}]}}
search: {{supernet: {json.dumps(settings)}}}
fidelity: {{tasks: [rte], train_examples: 32, general_steps: 4, task_steps: 2}}
distill: {{max_length: 32, baseline: {{batch_size: 16}}}}
final: {{latency: {{seq_len: 32, repeats: 5, threads: 1}}}}
ray: {{cpus_per_trial: 1}}
output_dir: {tmp / "out"}
"""
    )
    return cfg


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path, glue_dir: Path) -> tuple[Path, dict]:
    cfg = write_config(tmp_path_factory.mktemp("supernet"), corpus_dir, glue_dir)
    proc = run("search", "supernet", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr[-5000:]
    return cfg, json.loads(proc.stdout)


def test_supernet_search_end_to_end(searched: tuple[Path, dict]) -> None:
    cfg, out = searched
    folder = cfg.parent / "out" / "search-supernet"
    assert out["space"]["paths_per_block"] == 2 * (3 + 9 + 27 + 81)
    assert [b["block"] for b in out["blocks"]] == [1, 2] and all(b["epochs"] == 3 for b in out["blocks"])
    students = out["students"]
    assert 1 <= len(students) <= 6 + 1 and out["front"]  # the front, spread, and the hand-designed one
    # the hand-designed 1L-32 (attention, then feed-forward) survived shrinking, was selected first and
    # was re-scored beside the front
    hand = "32:mha,id,id,id|32:ffn,id,id,id"
    for b, block in enumerate(hand.split("|"), start=1):
        candidates = json.loads((folder / "blocks" / f"block{b}" / "result.json").read_text())["candidates"]
        assert "hand-designed" in next(c for c in candidates if c["path"] == block)["bins"]
    assert [s for s in students if s.get("hand_designed")] == [next(s for s in students if s["path"] == hand)]
    for s in students:
        assert s["inherited_loss"] > 0 and s["predicted_ms"] > 0 and s["measured_ms"] > 0
    front = [s for s in students if s["front"]]
    assert [s["name"] for s in front] == out["front"]
    # nothing in the front is dominated by a re-scored student
    for f in front:
        for s in students:
            keys = ("inherited_loss", "params", "measured_ms")  # the front is on measured latency
            assert not (all(s[k] <= f[k] for k in keys) and any(s[k] < f[k] for k in keys))
    assert out["cost"]["score_seconds_per_student"] < out["cost"]["supernet_train_seconds"]
    # every trial is in the run's storage
    storage = open_storage(None, cfg.parent / "out")
    blocks = optuna.load_study(study_name="distilnas-supernet-blocks", storage=storage).get_trials()
    selection = optuna.load_study(study_name="distilnas-supernet", storage=storage).get_trials()
    inherited = optuna.load_study(study_name="distilnas-supernet-inherited", storage=storage).get_trials()
    assert len(blocks) == 2 and len(selection) == 8 * 4 and len(inherited) == len(students)
    assert selection[0].user_attrs["path"] == hand
    assert {t.user_attrs["path"] for t in inherited} == {s["path"] for s in students}
    # the front's students are standalone transformers folders with the supernet's weights
    from transformers import AutoModel

    import distilnas.distill.nas_bert  # noqa: F401  (registers the architecture with the Auto classes)

    for name in out["front"]:
        model = AutoModel.from_pretrained(folder / "students" / name).eval()
        record = json.loads((folder / "students" / name / "student.json").read_text())
        assert model.config.path == record["path"]
        ids = torch.randint(1000, 2000, (1, 10))
        assert model(ids).last_hidden_state.shape == (1, 10, 64)


def test_supernet_search_resumes_without_retraining(searched: tuple[Path, dict], cli: Cli) -> None:
    cfg, out = searched
    proc = run("search", "supernet", str(cfg), "--resume", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout)
    assert again["front"] == out["front"] and again["blocks"] == out["blocks"]
    storage = open_storage(None, cfg.parent / "out")
    assert len(optuna.load_study(study_name="distilnas-supernet-blocks", storage=storage).get_trials()) == 2
    assert len(optuna.load_study(study_name="distilnas-supernet", storage=storage).get_trials()) == 8 * 4
    # without --resume the run folder is refused
    proc = cli("search", "supernet", cfg)  # refused before any work: in this process
    assert proc.returncode == 2 and "--resume" in proc.stderr


def test_extract_any_path(searched: tuple[Path, dict], tmp_path: Path, cli: Cli) -> None:
    cfg, _ = searched
    runs = cfg.parent / "out"
    proc = cli("search", "extract", runs, "64:mha,conv3,id,id|32:ffn,id,id,id", "--to", tmp_path / "s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoModel

    from distilnas.distill.measure import count_parameters
    from distilnas.distill.nas_bert import deployed
    from distilnas.search.config import load_config
    from distilnas.search.stages.supernet import nas_space

    space = nas_space(load_config(cfg))
    model = AutoModel.from_pretrained(tmp_path / "s")  # the distillation form: it is distilled from here
    assert model.config.form == "distillation"
    params = space.params(space.parse("64:mha,conv3,id,id|32:ffn,id,id,id"))
    assert count_parameters(deployed(model)) == params < count_parameters(model)
    bad = cli("search", "extract", runs, "64:mha,id,conv3,id|32:ffn,id,id,id", "--to", tmp_path / "t")
    assert bad.returncode == 2 and "identity only ends a block" in bad.stderr
    assert not (tmp_path / "t").exists()


@pytest.mark.slow  # 43 s here: make test stays under 10 minutes (`make test-slow`)
def test_inherited_scores_against_standalone_distillation(searched: tuple[Path, dict], cli: Cli) -> None:
    cfg, out = searched
    runs = cfg.parent / "out"
    proc = run("fidelity", str(runs), "--stage", "supernet", "--top", "2", "--random", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    students = result["students"]
    by_loss = sorted(out["students"], key=lambda s: s["inherited_loss"])
    assert [s["path"] for s in students[:2]] == [s["path"] for s in by_loss[:2]]  # the two best, then one
    assert len({s["path"] for s in students}) == 3 and students[2]["chosen"] == "random"
    for s in students:
        assert 0 <= s["tasks"]["rte"] <= 100 and s["held_out_loss"] > 0
    for key in ("task_score", "held_out_loss"):
        assert set(result[key]) == {"kendall_tau", "kendall_p", "spearman_rho", "spearman_p"}
    storage = open_storage(None, runs)
    trials = optuna.load_study(study_name="distilnas-supernet-fidelity", storage=storage).get_trials()
    assert sorted(t.user_attrs["path"] for t in trials) == sorted(s["path"] for s in students)
    again = cli("fidelity", runs, "--stage", "supernet", "--top", "2", "--random", "1", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["students"] == students
    assert len(optuna.load_study(study_name="distilnas-supernet-fidelity", storage=storage).get_trials()) == 3
    few = cli("fidelity", runs, "--stage", "supernet", "--top", "1", "--random", "1")
    assert few.returncode == 2 and "at least 3" in few.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"hidden_sizes": [32, 128]}, "search.supernet.hidden_sizes: [128] not in 1..64"),
        ({"blocks": 3}, "search.supernet.blocks: 3 does not divide the 8 layers"),
        ({"blocks": 8}, "end inside a teacher layer"),
    ],
)
def test_bad_space_is_one_line_and_exit_2(
    tmp_path: Path, corpus_dir: Path, setting: dict, message: str, cli: Cli
) -> None:
    cfg = write_config(tmp_path, corpus_dir, None, **setting)
    proc = cli("search", "supernet", cfg)  # refused before Ray starts: in this process
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow  # 60 s here: make test stays under 10 minutes (`make test-slow`)
def test_run_distils_the_supernet_front_in_the_final_stage(searched: tuple[Path, dict]) -> None:
    """`distilnas run` with `final.students: [supernet]` takes the finished search's front: each student
    is distilled from its inherited weights at its block boundaries, scored, timed and exported."""
    from transformers import AutoModelForSequenceClassification

    cfg, out = searched
    text = cfg.read_text()
    text = text.replace(
        "distill: {max_length: 32, baseline: {batch_size: 16}}",
        "distill: {max_length: 32, train_limit: 48, corpus_fraction: 0.02,"
        " general: {steps: 2, batch_size: 16},"
        " task: {intermediate: {steps: 2, batch_size: 16}, prediction: {steps: 2, batch_size: 16}}}",
    )
    text = text.replace("final: {", "final: {tasks: [rte], students: [supernet], export_front: false, ")
    text = text.replace(
        "teacher: {name: ", "teacher: {train: {epochs: 1, train_limit: 64, batch_size: 16}, name: "
    )
    run_cfg = cfg.parent / "run.yaml"
    run_cfg.write_text(text)
    proc = run("run", str(run_cfg), "--json")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "supernet search: finished earlier" in proc.stderr  # the search is not run again
    result = json.loads(proc.stdout)
    students = [r for r in result["table"] if r["kind"] == "student"]
    searched_front = {s["name"]: s for s in out["students"] if s["front"]}
    assert len(students) == len(searched_front) == len(result["exports"])
    by_params = {s["params"]: s["path"] for s in searched_front.values()}
    for row in students:
        assert row["model"].startswith("nas2B-") and row["origin"] == "supernet"
        assert row["params"] in by_params  # the distilled encoder is the searched architecture
    for folder in map(Path, result["exports"]):
        record = json.loads((folder / "student.json").read_text())
        assert record["architecture"]["type"] == "nas-bert"
        assert record["architecture"]["form"] == "deployed"  # what is timed, put on the front and shipped
        assert record["architecture"]["path"] == by_params[record["params"]]
        model = AutoModelForSequenceClassification.from_pretrained(folder / "rte")
        assert model.config.model_type == "nas-bert" and model.config.num_labels == 2
        assert model.config.form == "deployed" and model.nas_bert.blocks[-1].out is None
