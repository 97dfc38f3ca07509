"""PostgreSQL as the run's study database, on a real server the test starts (Debian's ``postgresql``
package, initdb into a temp folder, 127.0.0.1 and a free port): a whole ``distilnas run`` records every
stage's trials in it, writers in parallel processes lose nothing, and optuna-dashboard — distilnas' and the
plain one on the URL — serves the run's studies."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from helpers import (
    chromium,
    dump_dom,
    free_port,
    postgres_bin,
    postgres_server,
    run_process,
    save_tiny_bert,
    wait_for_json,
    write_run_config,
)

from distilnas.results.storage import open_storage
from distilnas.search.config import RunConfig
from distilnas.search.rundir import RunFolder
from distilnas.search.tune import Recorder
from distilnas.spaces.mapping_space import MappingSpace

pytestmark = [
    pytest.mark.skipif(
        postgres_bin() is None, reason="no PostgreSQL server: `.ci/run` installs Debian's postgresql package"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("psycopg") is None, reason="no psycopg: pip install 'distilnas[postgres]'"
    ),
]


@pytest.fixture()
def postgres() -> object:
    """A server and database of the test's own (2-3 seconds to start)."""
    with postgres_server() as url:
        yield url


def studies(url: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = open_storage(url, Path("unused"))
    return {
        name: optuna.load_study(study_name=name, storage=storage).get_trials()
        for name in optuna.get_all_study_names(storage)
    }


def served_names(command: list[str], port: int) -> list[str]:
    """The study names a dashboard started by ``command`` lists; its DOM in headless Chromium, when there
    is one, lists them too."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        listed = wait_for_json(f"http://127.0.0.1:{port}/api/studies")
        assert listed is not None, f"the dashboard did not answer: {proc.stderr and proc.stderr.read1()!r}"
        names = sorted(s["study_name"] for s in listed["study_summaries"])
        if chromium():
            dom = dump_dom(f"http://127.0.0.1:{port}/dashboard")
            assert all(name in dom for name in names)
        return names
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow  # a whole run (`make test-slow`); the dashboards on a database run stay in the fast suite
def test_a_whole_run_records_every_stage_in_postgres(
    tmp_path: Path, postgres: str, glue_dir: Path, corpus_dir: Path
) -> None:
    cfg = write_run_config(tmp_path, glue_dir, corpus_dir, f"storage: {{url: '{postgres}'}}\n")
    proc = run_process("run", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr[-5000:]
    out, run_dir = json.loads(proc.stdout), tmp_path / "out"
    assert not (run_dir / "optuna.journal").exists()  # the database is the one record

    trials = studies(postgres)
    assert set(trials) == {"distilnas-mapping", "distilnas-final", "distilnas-final-general"}
    mapping = json.loads((run_dir / "search-mapping" / "results.json").read_text())
    assert len(trials["distilnas-mapping"]) == mapping["trials"] > 0
    students = [r for r in out["table"] if r["kind"] == "student"]
    assert len(trials["distilnas-final-general"]) == len(students)
    assert len(trials["distilnas-final"]) == 2 * len(students)  # RTE and MRPC per student
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials["distilnas-final"])

    # `distilnas dashboard RUN` finds the database from the run's recorded config; plain optuna-dashboard
    # on the URL shows the same studies
    port = free_port()
    ours = served_names(
        [sys.executable, "-m", "distilnas", "dashboard", str(run_dir), "--port", str(port)], port
    )
    port = free_port()
    plain = Path(sys.executable).parent / "optuna-dashboard"
    theirs = served_names([str(plain), postgres, "--host", "127.0.0.1", "--port", str(port)], port)
    assert ours == theirs == sorted(trials)


SPACE = MappingSpace.build(2, 6, [])


def test_the_dashboards_serve_a_database_run(postgres: str, tmp_path: Path) -> None:
    """A run folder whose recorded config names the database: `distilnas dashboard RUN` finds it there
    (the folder holds no journal), and plain optuna-dashboard on the URL shows the same studies."""
    cfg = RunConfig(
        teacher={"name": str(save_tiny_bert(tmp_path / "teacher", layers=2))},
        storage={"url": postgres},
        output_dir=tmp_path / "run",
    )
    run = RunFolder.of(cfg)
    run.path.mkdir()
    run.record(cfg)
    mapping = Recorder(run.storage(postgres), run.studies.mapping)
    for i, genome in enumerate([[2, 4], [3, 6], [1, 5]]):
        mapping.candidate(SPACE, genome, float(i), {"source": "ga"}, "mapping")
    Recorder(run.storage(postgres), run.studies.final).add(70.0, attrs={"job": "s/rte"})
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json"]
    port = free_port()
    ours = served_names(
        [sys.executable, "-m", "distilnas", "dashboard", str(run.path), "--port", str(port)], port
    )
    port = free_port()
    plain = Path(sys.executable).parent / "optuna-dashboard"
    theirs = served_names([str(plain), postgres, "--host", "127.0.0.1", "--port", str(port)], port)
    assert ours == theirs == ["distilnas-final", "distilnas-mapping"]


def write_trials(url: str, writer: int, count: int, start: threading.Barrier) -> None:
    start.wait()  # all open the new database at once: they race to create its schema
    recorder = Recorder(open_storage(url, Path("unused")), "distilnas-parallel")
    for i in range(count):
        recorder.candidate(
            SPACE, [1 + i % 5, 6], float(writer * 100 + i), {"writer": writer, "i": i}, "mapping"
        )


def test_parallel_writers_lose_no_trial(postgres: str) -> None:
    """Four processes open a new database at the same moment (each finding no schema and creating it),
    create the same study and add 15 trials each: all 60 land, numbered 0..59."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        start = manager.Barrier(4)
        pool.starmap(write_trials, [(postgres, w, 15, start) for w in range(4)])
    trials = studies(postgres)["distilnas-parallel"]
    assert sorted(t.number for t in trials) == list(range(60))
    assert sorted((t.user_attrs["writer"], t.user_attrs["i"]) for t in trials) == [
        (w, i) for w in range(4) for i in range(15)
    ]
    assert all(t.value == t.user_attrs["writer"] * 100 + t.user_attrs["i"] for t in trials)
