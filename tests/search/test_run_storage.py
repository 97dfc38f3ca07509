"""A run kept at a URI (``output_dir: s3://...``) on a real S3 server (moto's, started by the test): the
local copy and the run storage are kept equal file by file, and a mapping search writes its run, its
trials' Ray Tune records and its Optuna journal there, and resumes from there alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import run_process
from test_search_cli import config

from distilnas.distill.errors import UserError
from distilnas.distill.remote import Remote
from distilnas.search.config import RunConfig, local_copy
from distilnas.search.mirror import SYNCED, Mirror, local_run


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != SYNCED
    }


def test_a_uri_output_dir_is_the_run_storage_and_the_run_is_worked_on_in_the_cache(tmp_path: Path) -> None:
    uri = "s3://bucket/runs/demo?endpoint_override=127.0.0.1:9000&scheme=http"
    cfg = RunConfig.model_validate({"output_dir": uri, "data": {"cache_dir": str(tmp_path / "cache")}})
    assert cfg.run_storage == uri
    assert (
        cfg.output_dir == local_copy(uri, tmp_path / "cache")
        and cfg.output_dir.parent == tmp_path / "cache" / "runs"
    )
    assert cfg.output_dir.name.startswith("s3-demo-")
    again = RunConfig.model_validate(cfg.model_dump(mode="json"))  # as a run folder records it
    assert (again.output_dir, again.run_storage) == (cfg.output_dir, uri)
    assert RunConfig().run_storage is None and "run_storage" not in RunConfig().model_dump(exclude_none=True)


def test_push_and_pull_move_what_changed_and_mirror_removals(s3_folder: str, tmp_path: Path) -> None:
    local = tmp_path / "copy"
    (local / "final").mkdir(parents=True)
    (local / "config.json").write_text('{"hash": "a"}')
    (local / "final" / "results.json").write_text("{}")
    (local / "final" / "old.ckpt").write_bytes(b"x" * 100)
    mirror = Mirror(local, s3_folder)
    assert mirror.push() == 3 and mirror.push() == 0  # nothing changed since
    remote = Remote(s3_folder)
    (remote / "final" / "ray" / "trial.json").write_text("{}")  # Ray Tune writes the URI alone
    (local / "final" / "results.json").write_text('{"done": true}')
    (local / "final" / "old.ckpt").unlink()
    assert mirror.push() == 1
    assert set(remote.files()) == {"config.json", "final/results.json", "final/ray/trial.json"}
    # another machine's copy: all of it comes down, then only what changed
    other = Mirror(tmp_path / "other", s3_folder)
    assert other.pull() == 3 and other.pull() == 0
    assert tree(tmp_path / "other") == {
        "config.json": b'{"hash": "a"}',
        "final/results.json": b'{"done": true}',
        "final/ray/trial.json": b"{}",
    }
    (remote / "config.json").write_text('{"hash": "bc"}')  # told by size and time (S3 keeps seconds)
    (remote / "final" / "ray" / "trial.json").unlink()
    assert other.pull() == 1
    assert tree(tmp_path / "other") == {
        "config.json": b'{"hash": "bc"}',
        "final/results.json": b'{"done": true}',
    }
    # a change the copy has not pushed yet (the driver stopped) survives a pull, and goes up next
    (local / "final" / "results.json").write_text('{"done": "again"}')
    assert mirror.pull() == 1  # config.json changed there: it comes down
    assert (local / "final" / "results.json").read_text() == '{"done": "again"}'
    assert (local / "config.json").read_text() == '{"hash": "bc"}'
    assert mirror.push() == 1
    assert (remote / "final" / "results.json").read_text() == '{"done": "again"}'


def test_a_run_argument_may_be_a_uri(s3_folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``distilnas report s3://...`` and the other readers: the run is copied into the cache first."""
    monkeypatch.setenv("DISTILNAS_CACHE", str(tmp_path / "cache"))
    (Remote(s3_folder) / "final" / "results.json").write_text('{"students": []}')
    local = local_run(s3_folder)
    assert local == local_copy(s3_folder, tmp_path / "cache")
    assert (local / "final" / "results.json").read_text() == '{"students": []}'
    assert local_run(str(tmp_path / "run")) == tmp_path / "run"  # a folder is itself


def test_a_push_that_fails_says_where_the_changes_are(tmp_path: Path) -> None:
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "results.json").write_text("{}")
    uri = "s3://b/run?endpoint_override=127.0.0.1:1&scheme=http&connect_timeout=1&request_timeout=1"
    with pytest.raises(UserError, match=r"output_dir s3://b/run: the run's changes could not be copied"):
        Mirror(tmp_path / "copy", uri).push()


def test_a_mapping_search_kept_at_a_uri_resumes_from_it_alone(
    s3_folder: str, tmp_path: Path, glue_dir: Path, corpus_dir: Path, tiny_bert4: Path
) -> None:
    cfg = config(tmp_path, tiny_bert4, glue_dir, corpus_dir)
    cfg.write_text(cfg.read_text().replace(f"output_dir: {tmp_path / 'run'}", f"output_dir: '{s3_folder}'"))
    proc = run_process("search", "mapping", str(cfg), "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout)
    remote = Remote(s3_folder)
    files = remote.files()
    assert {"optuna.journal", "search-mapping/config.json", "search-mapping/results.json"} <= set(files)
    assert any(f.startswith("search-mapping/ray/search/") for f in files)  # Ray Tune's own records
    assert json.loads((remote / "search-mapping" / "results.json").read_text()) == results
    local = local_copy(s3_folder, tmp_path / "cache")
    assert (local / "search-mapping" / "results.json").is_file() and not (tmp_path / "run").exists()

    shutil.rmtree(local)  # another machine, or a lost disk: the run storage is the run
    again = run_process("search", "mapping", str(cfg), "--json", "--resume", timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads(again.stdout)["best"] == results["best"]
    assert "finished trials taken from the storage" in again.stderr or "finished earlier" in again.stderr
    rerun = run_process("search", "mapping", str(cfg), timeout=300)  # the same again, without --resume
    assert rerun.returncode == 2 and "a run is already here; pass --resume" in rerun.stderr


def test_an_unwritable_run_storage_is_refused_before_any_work(
    tmp_path: Path, glue_dir: Path, corpus_dir: Path, tiny_bert4: Path
) -> None:
    cfg = config(tmp_path, tiny_bert4, glue_dir, corpus_dir)
    uri = "s3://nobucket/run?endpoint_override=127.0.0.1:1&scheme=http&connect_timeout=1&request_timeout=1"
    cfg.write_text(cfg.read_text().replace(f"output_dir: {tmp_path / 'run'}", f"output_dir: '{uri}'"))
    proc = run_process("search", "mapping", str(cfg), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("distilnas: error: output_dir s3://nobucket/run: cannot write there (")
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def tiny_bert4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("teacher4"), layers=4)
