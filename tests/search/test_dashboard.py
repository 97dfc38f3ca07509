"""`distilnas dashboard RUN` serves the run's Optuna study over HTTP (checked with real requests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Cli, chromium, dump_dom, free_port, get_json, wait_for_json

from distilnas.results.storage import open_storage
from distilnas.search.tune import Recorder
from distilnas.spaces.mapping_space import MappingSpace

SPACE = MappingSpace.build(2, 6, [])


def make_run(tmp_path: Path) -> Path:
    recorder = Recorder(open_storage(None, tmp_path / "run"), "distilnas-mapping")
    for i, genome in enumerate([[2, 4], [3, 6], [1, 5]]):
        recorder.candidate(SPACE, genome, float(i), {"source": "ga", "generation": 0}, "mapping")
    recorder.candidate(SPACE, [1, 2], None, {"source": "ga", "generation": 0}, "mapping")
    return tmp_path / "run"


def test_dashboard_serves_the_study(tmp_path: Path, cli: Cli) -> None:
    run = make_run(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distilnas", "dashboard", str(run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        studies = wait_for_json(f"http://127.0.0.1:{port}/api/studies")
        assert studies is not None, "the dashboard did not answer"
        [study] = studies["study_summaries"]
        assert study["study_name"] == "distilnas-mapping"
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}")
        states = sorted(t["state"] for t in detail["trials"])
        assert states == ["Complete", "Complete", "Complete", "Fail"]
        mappings = {a["value"] for t in detail["trials"] for a in t["user_attrs"] if a["key"] == "mapping"}
        assert mappings == {"2,4/6", "3,6/6", "1,5/6", "1,2/6"}
        # a second dashboard on the same port is refused with one line and exit code 2
        busy = cli("dashboard", run, "--port", port)
        assert busy.returncode == 2 and f"--port {port}: already in use" in busy.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_needs_a_run_with_storage(tmp_path: Path, cli: Cli) -> None:
    proc = cli("dashboard", tmp_path)
    assert proc.returncode == 2 and "no Optuna storage in this run folder" in proc.stderr


@pytest.mark.skipif(chromium() is None, reason="no Chromium: `.ci/run` installs Debian's chromium package")
def test_dashboard_in_headless_chromium_shows_the_run_studies(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    storage = open_storage(None, run)
    Recorder(storage, "distilnas-final").candidate(SPACE, [2, 4], 70.0, {"source": "x"}, "mapping")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distilnas", "dashboard", str(run), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_json(f"http://127.0.0.1:{port}/api/studies") is not None, (
            "the dashboard did not answer"
        )
        dom = dump_dom(f"http://127.0.0.1:{port}/dashboard")
        # the page's script has run and listed both studies of the run
        assert "distilnas-mapping" in dom and "distilnas-final" in dom
    finally:
        proc.terminate()
        proc.wait(timeout=30)
