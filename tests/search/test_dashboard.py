"""`distilnas dashboard RUN` serves the run's Optuna study over HTTP (checked with real requests)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import Cli

from distilnas.results.storage import open_storage
from distilnas.search.tune import Recorder
from distilnas.spaces.mapping_space import MappingSpace

SPACE = MappingSpace.build(2, 6, [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_run(tmp_path: Path) -> Path:
    recorder = Recorder(open_storage(None, tmp_path / "run"), "distilnas-mapping")
    for i, genome in enumerate([[2, 4], [3, 6], [1, 5]]):
        recorder.candidate(SPACE, genome, float(i), {"source": "ga", "generation": 0}, "mapping")
    recorder.candidate(SPACE, [1, 2], None, {"source": "ga", "generation": 0}, "mapping")
    return tmp_path / "run"


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


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
        studies = None
        for _ in range(120):
            try:
                studies = get(f"http://127.0.0.1:{port}/api/studies")
                break
            except OSError:
                time.sleep(0.25)
        assert studies is not None, "the dashboard did not answer"
        [study] = studies["study_summaries"]
        assert study["study_name"] == "distilnas-mapping"
        detail = get(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}")
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


def chromium() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


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
        for _ in range(120):
            try:
                get(f"http://127.0.0.1:{port}/api/studies")
                break
            except OSError:
                time.sleep(0.25)
        page = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
             "--dump-dom", f"http://127.0.0.1:{port}/dashboard"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert page.returncode == 0, page.stderr[-2000:]
        # the page's script has run and listed both studies of the run
        assert "distilnas-mapping" in page.stdout and "distilnas-final" in page.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
