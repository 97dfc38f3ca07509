"""A search driver killed with SIGKILL mid-generation resumes: no finished trial runs again, and it ends
with the same best mapping and hall of fame as an uninterrupted run with the same seed; an exhaustive
search ends with every mapping evaluated exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from distilnas.results.storage import open_storage
from distilnas.search.strategies import GeneticSearch
from distilnas.spaces.mapping import LayerMapping
from distilnas.spaces.mapping_space import MappingSpace

DRIVER = """
import json, sys, time
from pathlib import Path
from distilnas.results.storage import open_storage
from distilnas.search.strategies import GeneticSearch, exhaustive
from distilnas.search.stages.mapping import search_with
from distilnas.search.tune import Recorder, init_ray
from distilnas.spaces.mapping import LayerMapping
from distilnas.spaces.mapping_space import MappingSpace

def fitness(mapping):
    time.sleep(0.5)
    genome = [t or 0 for t in LayerMapping.from_string(mapping).targets]
    return {"fitness": -float(sum(abs(a - b) for a, b in zip(genome, [2, 5, 8])))}

run_dir = Path(sys.argv[1])
space = MappingSpace.build(3, 8, ["monotone", "no_repeats", "supervised"])
if sys.argv[2] == "ga":
    ga = GeneticSearch(space, population=6, generations=4, mutation=0.5, seed=0)
else:
    ga = exhaustive(space, budget=56)
recorder = Recorder(open_storage(None, run_dir), "mapping")
init_ray(None, num_cpus=2)
search_with({sys.argv[2]: ga}, recorder, fitness, run_dir, run_dir / "state.json")
(run_dir / "out.json").write_text(json.dumps({"best": ga.memo.ranked()[0], "hof": ga.memo.ranked()[:3]}))
"""


def uninterrupted() -> GeneticSearch:
    space = MappingSpace.build(3, 8, ["monotone", "no_repeats", "supervised"])
    ga = GeneticSearch(space, population=6, generations=4, mutation=0.5, seed=0)
    while not ga.finished:
        for g in ga.ask():
            ga.tell(g, -float(sum(abs(a - b) for a, b in zip(g, [2, 5, 8], strict=True))))
        ga.advance()
    return ga


def finished(run_dir: Path) -> list[str]:
    if not (run_dir / "optuna.journal").is_file():
        return []
    try:
        study = optuna.load_study(study_name="mapping", storage=open_storage(None, run_dir))
    except KeyError:
        return []
    return [t.user_attrs["mapping"] for t in study.get_trials(deepcopy=False)]


@pytest.mark.slow  # 87 s here: make test stays under 10 minutes on a 2-core AVX2 machine (`make test-slow`)
@pytest.mark.parametrize("strategy", ["ga", "exhaustive"])
def test_killed_driver_resumes_without_rerunning(tmp_path: Path, strategy: str) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run_dir = tmp_path / "run"
    env = dict(os.environ, RAY_ADDRESS="")  # the driver starts its own Ray
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(run_dir), strategy],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(finished(run_dir)) < 9:  # generation 0 done, generation 1 under way
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    before = finished(run_dir)
    assert 9 <= len(before) < 20, before

    resumed = subprocess.run(
        [sys.executable, str(driver), str(run_dir), strategy], env=env, timeout=600, capture_output=True
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    after = finished(run_dir)
    assert after[: len(before)] == before
    assert len(after) == len(set(after))  # no mapping was evaluated twice
    out = json.loads((run_dir / "out.json").read_text())
    if strategy == "exhaustive":
        space = MappingSpace.build(3, 8, ["monotone", "no_repeats", "supervised"])
        assert sorted(after) == sorted(space.describe(g) for g in space.all())  # every one, once
        assert out["best"] == [[2, 5, 8], 0.0]
        return
    ref = uninterrupted()
    assert out["best"] == [ref.best()[0], ref.best()[1]]  # type: ignore[index]
    assert out["hof"] == [[g, f] for g, f in ref.hall_of_fame()[:3]]
    assert sorted(after) == sorted(str(LayerMapping(tuple(map(int, k.split(","))), 8)) for k in ref.memo)
