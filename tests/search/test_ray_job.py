"""`distilnas search mapping` submitted with `ray job submit` to a cluster started with `ray start --head`
on this machine (slow; and `ray stop` ends every Ray process of this user, so run it alone)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_search_cli import MAPPING, config

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_search_mapping_as_a_ray_job(glue_dir: Path, corpus_dir: Path, tmp_path: Path) -> None:
    from helpers import save_tiny_bert

    teacher = save_tiny_bert(tmp_path / "teacher", layers=4)
    cfg = config(tmp_path, teacher, glue_dir, corpus_dir, mapping=f"{MAPPING}, strategy: ga")
    port, dash = free_port(), free_port()
    temp = Path(tempfile.mkdtemp(prefix="rayjob", dir="/tmp"))  # short: Ray's socket paths have a limit
    # Ray >= 2.59 starts clusters with token auth; the job CLI sends ~/.ray/auth_token only in token mode
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_ADDRESS="", RAY_AUTH_MODE="token")
    env["PATH"] = f"{BIN}:{env['PATH']}"
    ray_cli = str(BIN / "ray")
    start = subprocess.run(
        [ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        address = f"http://127.0.0.1:{dash}"
        for _ in range(60):  # the job server comes up a little after `ray start` returns
            if subprocess.run([ray_cli, "job", "list", "--address", address], env=env,
                              capture_output=True).returncode == 0:  # fmt: skip
                break
            time.sleep(1)
        entry = [sys.executable, "-m", "distilnas", "search", "mapping", str(cfg), "--address", "auto"]
        job = subprocess.run(
            [ray_cli, "job", "submit", "--address", address, "--", *entry],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
        assert "succeeded" in (job.stdout + job.stderr).lower()
        results = json.loads((tmp_path / "run" / "search-mapping" / "results.json").read_text())
        assert results["ga"]["best"] is not None and results["random"]["evaluations"] >= 1
        assert results["ray"]["slots"] == 2  # the trials ran on the cluster's 2 CPUs
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
