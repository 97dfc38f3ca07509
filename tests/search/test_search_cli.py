"""`distilnas search mapping` and `distilnas fidelity` end to end on a tiny teacher, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import Cli, save_tiny_bert
from helpers import run_process as run
from scipy import stats

from distilnas.results.storage import open_storage


@pytest.fixture(scope="module")
def teacher4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("teacher4"), layers=4)


MAPPING = "population: 3, generations: 2, tournament: 2, hall_of_fame: 1"


def config(
    tmp_path: Path, teacher: Path, glue_dir: Path, corpus_dir: Path, extra: str = "", mapping: str = MAPPING
) -> Path:
    cfg = tmp_path / "search.yaml"
    cfg.write_text(
        f"""
teacher:
  name: {teacher}
  train: {{epochs: 1, train_limit: 32, batch_size: 16, max_length: 32}}
data:
  glue_dir: {glue_dir}
  cache_dir: {tmp_path / "cache"}
  corpus: {{files: [{corpus_dir / "wikisplit" / "tune.tsv"}]}}
proxy: {{tasks: [rte], corpus_fraction: 0.01, train_examples: 32, general_steps: 2, task_steps: 2}}
fidelity: {{corpus_fraction: 0.02, train_examples: 64, general_steps: 3, task_steps: 3}}
distill:
  student: {{layers: 2, init: copy}}
  max_length: 32
  general: {{losses: {{embedding_mse: 1, hidden_mse: 1}}, batch_size: 16}}
  baseline: {{batch_size: 16}}
search:
  mapping: {{{mapping}}}
ray: {{cpus_per_trial: 1}}
output_dir: {tmp_path / "run"}
{extra}
"""
    )
    return cfg


@pytest.mark.slow  # keeps `make test` under 10 minutes: exhaustive search under Ray Tune stays in the fast
# suite (test_mapping_resume kills and resumes it), and so does a whole run's mapping search (test_run)
def test_search_mapping_end_to_end(
    teacher4: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path, cli: Cli
) -> None:
    """6 valid mappings, a budget of 12 evaluations: every mapping is evaluated once, and only once."""
    cfg = config(tmp_path, teacher4, glue_dir, corpus_dir)
    proc = run("search", "mapping", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout)
    assert results["space"] == {
        "student_layers": 2,
        "teacher_layers": 4,
        "constraints": ["monotone", "no_repeats", "supervised"],
        "size": 6,
    }
    assert results["mode"] == "exhaustive" and results["budget"] == 12 and "ga" not in results
    ranked = results["exhaustive"]["ranked"]
    assert sorted(r["mapping"] for r in ranked) == ["1,2/4", "1,3/4", "1,4/4", "2,3/4", "2,4/4", "3,4/4"]
    assert results["best"] == ranked[0] and ranked[0]["fitness"] == max(r["fitness"] for r in ranked)
    signal = results["signal"]  # a tiny random teacher, 2 steps: its students are mostly at chance
    assert signal["evaluations"] == 6 and set(signal["chance"]) == {"rte"}
    at_chance = [r["mapping"] for r in ranked if r["fitness"] <= signal["chance"]["rte"]["threshold"]]
    assert signal["uninformative"] == sorted(at_chance)
    assert ("at chance level" in proc.stderr) == (signal["fraction"] > 0.25)
    assert set(results["baselines"]) == {"uniform", "last"}
    proxy = {r["mapping"]: r["fitness"] for r in ranked}
    assert results["baselines"] == {"uniform": proxy["2,4/4"], "last": proxy["3,4/4"]}  # shared, not re-run
    storage = open_storage(None, tmp_path / "run")
    study = optuna.load_study(study_name="distilnas-mapping", storage=storage)
    assert sorted(t.user_attrs["mapping"] for t in study.trials) == sorted(proxy)  # each once
    stage = tmp_path / "run" / "search-mapping"
    for name in ("results.json", "report.html", "search_state.json", "proxy.json"):
        assert (stage / name).is_file(), name
    assert (tmp_path / "run" / "optuna.journal").is_file()  # the run's storage, shared by its stages
    assert "every valid mapping" in (stage / "report.html").read_text()
    # a second run in the same folder without --resume is refused; with --resume nothing is evaluated again
    again = cli("search", "mapping", cfg)  # refused before any work: in this process
    assert again.returncode == 2 and "pass --resume" in again.stderr
    resumed = run("search", "mapping", str(cfg), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert json.loads(resumed.stdout)["exhaustive"] == results["exhaustive"]
    assert len(optuna.load_study(study_name="distilnas-mapping", storage=storage).trials) == 6

    # fidelity: the 2 best mappings and 2 drawn from the rest, re-scored in the full setting
    proc = run("fidelity", str(tmp_path / "run"), "--top", "2", "--random", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    fid = json.loads(proc.stdout)
    cands = fid["candidates"]
    assert len(cands) == 4 and [c["chosen"] for c in cands] == ["top", "top", "random", "random"]
    assert cands[0]["proxy"] == results["best"]["fitness"] >= cands[1]["proxy"]
    assert all(c["proxy"] == proxy[c["mapping"]] for c in cands)
    assert all(isinstance(c["full"], float) and set(c["scores"]) == {"rte"} for c in cands)
    tau = stats.kendalltau([c["proxy"] for c in cands], [c["full"] for c in cands]).statistic
    assert fid["kendall_tau"] == (None if math.isnan(tau) else pytest.approx(tau))  # tied: undefined
    assert (stage / "fidelity.json").is_file()
    study = [s for s in optuna.get_all_study_names(open_storage(None, tmp_path / "run")) if "fidelity" in s]
    assert len(study) == 1
    trials = optuna.load_study(study_name=study[0], storage=open_storage(None, tmp_path / "run")).get_trials()
    assert len(trials) == 4
    # running it again takes every candidate from the storage: no new trial
    again = run("fidelity", str(tmp_path / "run"), "--top", "2", "--random", "2", "--json")
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads(again.stdout)["candidates"] == cands
    assert (
        len(optuna.load_study(study_name=study[0], storage=open_storage(None, tmp_path / "run")).get_trials())
        == 4
    )
    few = cli("fidelity", tmp_path / "run", "--top", "1", "--random", "1")
    assert few.returncode == 2 and "at least 3 candidates" in few.stderr
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "seed": 3}))
    mismatch = cli("fidelity", tmp_path / "run", "--config", other)
    assert mismatch.returncode == 2 and "not this run's config (differs in seed)" in mismatch.stderr
    nowhere = cli("fidelity", tmp_path / "nothing")
    assert nowhere.returncode == 2 and "not a mapping-search run folder" in nowhere.stderr


@pytest.mark.slow  # the GA under Ray Tune stays in the fast suite (test_strategies)
def test_search_mapping_runs_the_ga_where_the_space_exceeds_the_budget(
    teacher4: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    """6 mappings, a budget of 2 x 2 evaluations (no random search): the GA, and it resumes exactly."""
    small = "population: 2, generations: 2, tournament: 2, hall_of_fame: 1, random_baseline: false"
    cfg = config(tmp_path, teacher4, glue_dir, corpus_dir, mapping=small)
    proc = run("search", "mapping", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout)
    assert results["mode"] == "ga" and results["budget"] == 4 and "random" not in results
    assert results["best"] == results["ga"]["best"]
    assert results["ga"]["best"]["fitness"] == max(f["fitness"] for f in results["ga"]["hall_of_fame"])
    assert len(results["ga"]["logbook"]) == 2
    assert "GA convergence" in (tmp_path / "run" / "search-mapping" / "report.html").read_text()
    resumed = run("search", "mapping", str(cfg), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert json.loads(resumed.stdout)["ga"] == results["ga"]


@pytest.mark.slow
def test_search_mapping_with_rungs_and_fidelity_per_rung(
    teacher4: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    """6 mappings at rung 0 (a third of the steps), the best 2 at rung 1 with the baselines; fidelity
    ranks each rung against the full setting."""
    cfg = config(tmp_path, teacher4, glue_dir, corpus_dir)
    data = yaml.safe_load(cfg.read_text())
    data["proxy"] |= {"rungs": 2, "eta": 3, "general_steps": 3, "task_steps": 3}
    cfg.write_text(yaml.safe_dump(data))
    proc = run("search", "mapping", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout)
    study = optuna.load_study(study_name="distilnas-mapping", storage=open_storage(None, tmp_path / "run"))
    texts = sorted(t.user_attrs["mapping"] for t in study.trials)
    assert sum(t.endswith("@r0") for t in texts) == 6
    top = {t.removesuffix("@r1") for t in texts if t.endswith("@r1")}
    assert {"2,4/4", "3,4/4"} <= top and len(top) <= 2 + 2  # the baselines, and ceil(6 / 3) promoted
    assert results["best"]["mapping"] in top  # chosen among full-proxy scores only
    assert [r["task_steps"] for r in results["signal"]["rungs"]] == [1, 3]
    fid = run("fidelity", str(tmp_path / "run"), "--top", "2", "--random", "1", "--json")
    assert fid.returncode == 0, fid.stderr[-4000:]
    rungs = json.loads(fid.stdout)["rungs"]
    assert [r["rung"] for r in rungs] == [0, 1] and rungs[1]["candidates"] == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"search": {"mapping": {"population": 2, "tournament": 3}}}, "smaller than the tournament (3)"),
        ({"proxy": {"tasks": ["rte", "sst3"]}}, "proxy.tasks[1]: unknown GLUE task 'sst3'"),
        ({"distill": {"student": {"layers": 6}}}, "a 6-layer student is deeper than its 4-layer teacher"),
        ({"ray": {"address": "127.0.0.1:1"}}, "ray.address '127.0.0.1:1': cannot connect"),
        ({"storage": {"url": "nosuchdb://x"}}, "storage.url 'nosuchdb://x': cannot open"),
    ],
)
def test_search_mapping_bad_input(
    teacher4: Path, glue_dir: Path, corpus_dir: Path, tmp_path: Path, change: dict, message: str, cli: Cli
) -> None:
    data = yaml.safe_load(config(tmp_path, teacher4, glue_dir, corpus_dir).read_text())
    for section, values in change.items():
        merged = data.get(section, {})
        for k, v in values.items():
            merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
        data[section] = merged
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    proc = cli("search", "mapping", bad)  # every one fails before Ray starts: in this process
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert not list((tmp_path / "run").glob("search-mapping/ray/*"))  # no trial started
