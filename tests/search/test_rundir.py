"""The run folder: where stages live, whose config a folder is (refused otherwise), the study names, and
which storage a finished run wrote to."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from distilnas.distill.errors import UserError
from distilnas.search.config import parse_config
from distilnas.search.rundir import RunFolder, Studies


def test_layout_and_study_names(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, "exp")
    assert (
        run.mapping.path == tmp_path / "search-mapping" and run.supernet.path == tmp_path / "search-supernet"
    )
    assert run.final.path == tmp_path / "final" and run.exports == tmp_path / "exports"
    assert (run.report, run.log, run.results_dir) == (
        tmp_path / "report.html", tmp_path / "run.log", tmp_path / "results"
    )  # fmt: skip
    s = Studies("exp")
    names = [s.mapping, s.final, s.final_general, s.supernet, s.supernet_blocks, s.supernet_inherited]
    assert names == [
        "exp-mapping", "exp-final", "exp-final-general", "exp-supernet", "exp-supernet-blocks",
        "exp-supernet-inherited",
    ]  # fmt: skip
    assert s.supernet_fidelity == "exp-supernet-fidelity" and s.fidelity("ab12") == "exp-fidelity-ab12"
    assert RunFolder.of(parse_config({"storage": {"study_prefix": "p"}})).studies.final == "p-final"


def test_a_folder_belongs_to_its_config(tmp_path: Path) -> None:
    cfg = parse_config({"output_dir": str(tmp_path), "seed": 1})
    other = parse_config({"output_dir": str(tmp_path), "seed": 2})
    stage = RunFolder.of(cfg).mapping
    with pytest.raises(UserError, match="nothing to resume"):
        stage.check(cfg, resume=True)
    stage.check(cfg, resume=False)
    stage.record(cfg)
    assert stage.recorded_config() == cfg and stage.recorded_hash() == cfg.config_hash()
    with pytest.raises(UserError, match="pass --resume"):
        stage.check(cfg, resume=False)
    with pytest.raises(UserError, match="--resume with another config"):
        stage.check(other, resume=True)
    stage.check(cfg, resume=True)
    assert not stage.finished
    stage.write_results({"best": 1})
    assert stage.finished and stage.results() == {"best": 1}


def test_a_stage_is_judged_by_its_inputs_and_by_what_their_names_stand_for(
    tmp_path: Path, tiny_bert: Path
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a first line of text\n")
    base = {"teacher": {"name": str(tiny_bert)}, "data": {"corpus": {"files": [str(corpus)]}}}
    cfg = parse_config({**base, "output_dir": str(tmp_path / "run")})
    supernet = RunFolder.of(cfg).supernet
    supernet.record(cfg)
    # outside its inputs (the teacher's fine-tuning, the cache folder): the folder is still this config's
    other = parse_config(
        {**base, "teacher": {**base["teacher"], "train": {"epochs": 9}}, "output_dir": str(tmp_path / "run")}
    )
    supernet.check_inputs(
        other.model_copy(update={"data": cfg.data.model_copy(update={"cache_dir": tmp_path})})
    )
    with pytest.raises(UserError, match=r"was made with search\.supernet\.bins=10; this config has 3"):
        supernet.check_inputs(parse_config({**base, "search": {"supernet": {"bins": 3}}}))
    corpus.write_text("the same file, other text\n")  # changed in place, under the same name
    with pytest.raises(UserError, match=f"made with corpus file {corpus} [0-9a-f]{{16}}; now [0-9a-f]{{16}}"):
        supernet.check_inputs(cfg)


def test_a_damaged_record_is_one_clear_error(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    with pytest.raises(UserError, match="not a distilnas run folder"):
        run.recorded_config()
    run.config_file.write_bytes(b"\xff{not json")
    with pytest.raises(UserError, match=r"config\.json: unreadable"):
        run.recorded_config()
    run.config_file.write_text(json.dumps({"hash": "x", "config": {"seed": "many"}}))
    with pytest.raises(UserError, match=r"config.json: seed: Input should be a valid integer"):
        run.recorded_config()


def test_the_storage_a_run_wrote_to(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run folder not found"):
        RunFolder.existing(tmp_path / "nowhere")
    empty = RunFolder.existing(tmp_path)
    with pytest.raises(UserError, match="no Optuna storage in this run folder"):
        empty.recorded_storage()
    journal = RunFolder(tmp_path / "journal")
    optuna.create_study(study_name="distilnas-mapping", storage=journal.storage(None))
    names = [s.study_name for s in journal.recorded_storage().get_all_studies()]
    assert names == ["distilnas-mapping"]
    # a database named by the run's own config (not only a stage's) is where its trials are
    url = f"sqlite:///{tmp_path / 'trials.db'}"
    cfg = parse_config({"output_dir": str(tmp_path / "db"), "storage": {"url": url, "study_prefix": "db"}})
    run = RunFolder.of(cfg)
    run.record(cfg)
    optuna.create_study(study_name=run.studies.final, storage=run.storage(url))
    found = RunFolder.existing(tmp_path / "db")
    assert found.studies.prefix == "db"
    assert [s.study_name for s in found.recorded_storage().get_all_studies()] == ["db-final"]
