"""The final stage's students, its plan and its searcher: dependencies, interleaving, skipping, resuming."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import save_tiny_bert

from distilnas.distill.errors import UserError
from distilnas.distill.students import StudentRecord, StudentSpec
from distilnas.search.config import parse_config
from distilnas.search.rundir import RunFolder
from distilnas.search.stages.final import chosen_students, plan, spread
from distilnas.search.tune import JobSearcher


def students(*names: str) -> list[StudentRecord]:
    return [StudentRecord(n, StudentSpec(2, 32, 2, 64), "copy", "1,2/4", [n]) for n in names]


def test_plan_puts_general_first_and_interleaves_students() -> None:
    jobs = plan(students("a", "b"), ["rte", "mrpc"])
    assert [j.id for j in jobs] == ["a/general", "b/general", "a/rte", "b/rte", "a/mrpc", "b/mrpc"]
    assert all(j.after == (f"{j.config['student']}/general",) for j in jobs[2:])
    assert [j.config for j in jobs[:2]] == [{"student": "a"}, {"student": "b"}]  # no task: general


def test_searcher_waits_for_dependencies_skips_after_failures_and_resumes() -> None:
    recorded: list[tuple[str, bool]] = []
    jobs = plan(students("a", "b"), ["rte"])
    searcher = JobSearcher(jobs, {}, lambda job, out, why: recorded.append((job.id, out is not None)))
    assert searcher.suggest("t1")["job"] == "a/general"
    assert searcher.suggest("t2")["job"] == "b/general"
    assert searcher.suggest("t3") is None  # both task jobs wait for their general job
    searcher.on_trial_complete("t1", {"outcome": '{"loss": 0.5}', "seconds": 2.0})
    assert searcher.suggest("t3") == {"job": "a/rte", "student": "a", "task": "rte"}
    searcher.on_trial_complete("t2", error=True)  # b's general failed: b/rte can never run
    assert searcher.suggest("t4") is None  # a/rte still in flight
    searcher.on_trial_complete("t3", {"outcome": '{"score": 61.0}', "seconds": 3.0})
    assert searcher.suggest("t5") == "FINISHED"
    assert searcher.results["b/rte"] is None and searcher.results["a/rte"] == {"score": 61.0, "seconds": 3.0}
    assert recorded == [("a/general", True), ("b/general", False), ("a/rte", True)]
    # a new searcher given what the storage holds runs only what is missing
    again = JobSearcher(jobs, {"a/general": {"loss": 0.5}, "a/rte": {"score": 61.0}}, lambda j, o, w: None)
    assert again.suggest("u1")["job"] == "b/general"
    assert again.suggest("u2") is None


def test_a_failed_job_is_tried_again_then_counts_as_failed() -> None:
    reasons: list[str | None] = []
    jobs = plan(students("a"), ["rte"])
    searcher = JobSearcher(jobs, {}, lambda job, out, why: reasons.append(why), retries=1)
    assert searcher.suggest("t1")["job"] == "a/general"
    searcher.on_trial_complete("t1", {"error": "RuntimeError: disk full", "seconds": 1.0})
    assert searcher.suggest("t2")["job"] == "a/general"  # tried again: one retry
    searcher.on_trial_complete("t2", error=True)  # its process died
    assert searcher.suggest("t3") == "FINISHED" and searcher.results == {"a/general": None, "a/rte": None}
    assert reasons[0] == "RuntimeError: disk full" and "process ended" in str(reasons[1])
    # after a resume, a job that failed fewer times than it may is tried again, one that used them up not
    resumed = JobSearcher(jobs, {}, lambda j, o, w: None, failures={"a/general": 1}, retries=1)
    assert resumed.suggest("u1")["job"] == "a/general"
    spent = JobSearcher(jobs, {}, lambda j, o, w: None, failures={"a/general": 2}, retries=1)
    assert spent.suggest("v1") == "FINISHED"


def test_spread_keeps_the_ends_and_spaces_the_rest() -> None:
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread([1, 2], 4) == [1, 2] and spread([5, 6, 7], 1) == [5]


def test_joint_students_come_from_the_front_of_this_configs_search(tmp_path: Path) -> None:
    teacher = save_tiny_bert(tmp_path / "teacher", layers=4)
    cfg = parse_config(
        {
            "teacher": {"name": str(teacher)},
            "distill": {"student": {"layers": 2, "init": "extract", "importance_batches": 3}},
            "final": {"students": ["uniform", "joint"], "joint_front": 2},
            "output_dir": str(tmp_path / "run"),
        }
    )
    run = RunFolder.of(cfg)
    with pytest.raises(UserError, match="'joint' needs a finished joint search"):
        chosen_students(cfg, run, None)
    front = ["1L-16-1h-32f-extract:4/4", "2L-16-1h-64f-extract:2,4/4", "2L-32-2h-64f-e8-random:1,4/4"]
    run.joint.record(cfg)
    run.joint.write_results({"front": [{"student": s, "params": 10 * i} for i, s in enumerate(front)]})
    chosen = chosen_students(cfg, run, None)
    assert [s.name for s in chosen] == ["2L-32_uniform", "1L-16-32f_joint", "2L-32-64f-e8_joint"]
    small, large = chosen[1], chosen[2]
    assert (small.spec.layers, small.spec.hidden, small.spec.heads, small.spec.intermediate) == (1, 16, 1, 32)
    assert (small.init, small.mapping, small.origin) == ("extract", "4/4", ["joint"])
    assert (large.init, large.mapping, large.spec.hidden) == ("random", "1,4/4", 32)
    assert (large.spec.embedding, large.kind.name, small.kind.name) == (8, "factorised", "plain")
    other = parse_config({**cfg.model_dump(mode="json"), "seed": 5})
    with pytest.raises(UserError, match="search-joint was made with seed=0; this config has 5"):
        chosen_students(other, run, None)


def test_hand_designed_and_random_search_students(tmp_path: Path) -> None:
    """``hand`` builds each shape as ``distill.student`` says, uniform-mapped; ``random`` is random search's
    best (the searched one when the search was exhaustive); a mapping chosen twice is one student."""
    teacher = save_tiny_bert(tmp_path / "teacher", layers=4)  # hidden 32, 2 heads, FFN 64
    cfg = parse_config(
        {
            "teacher": {"name": str(teacher)},
            "distill": {"student": {"layers": 2, "init": "extract"}},
            "final": {
                "students": ["searched", "uniform", "random", "hand"],
                "hand_designed": [{"layers": 1, "hidden": 16}, {"layers": 3, "heads": 1}],
            },
            "output_dir": str(tmp_path / "run"),
        }
    )
    run = RunFolder.of(cfg)
    with pytest.raises(UserError, match="'searched' needs a finished mapping search"):
        chosen_students(cfg, run, None)
    ga = {"mode": "ga", "best": {"mapping": "3,4/4"}, "random": {"best": {"mapping": "1,3/4"}}}
    chosen = chosen_students(cfg, run, ga)
    names = ["2L-32_searched", "2L-32_uniform", "2L-32_random", "1L-16_hand", "3L-32_hand"]
    assert [s.name for s in chosen] == names
    assert [s.mapping for s in chosen] == [
        "3,4/4",
        "2,4/4",
        "1,3/4",
        "4/4",
        "1,2,4/4",
    ]  # g(m) = floor(m N / M)
    one, three = chosen[3], chosen[4]
    assert (one.spec.layers, one.spec.hidden, one.spec.heads, one.spec.intermediate) == (1, 16, 1, 32)
    assert (three.spec.hidden, three.spec.heads, three.init, three.origin) == (32, 1, "extract", ["hand"])
    # an exhaustive search has no random lane: random search at its budget finds the same best
    exhaustive = {"mode": "exhaustive", "best": {"mapping": "2,4/4"}}
    chosen = chosen_students(cfg, run, exhaustive)
    assert chosen[0].origin == ["searched", "uniform", "random"] and len(chosen) == 3
    with pytest.raises(UserError, match="'random' needs a finished mapping search"):  # a GA without it
        chosen_students(cfg, run, {"mode": "ga", "best": {"mapping": "3,4/4"}})
    # a hand-designed shape that is distill.student's, uniform-mapped, is the uniform student: once
    same = parse_config(
        cfg.model_dump(mode="json")
        | {"final": {"students": ["uniform", "hand"], "hand_designed": [{"layers": 2}]}}
    )
    [student] = chosen_students(same, run, None)
    assert (student.name, student.mapping, student.origin) == ("2L-32_uniform", "2,4/4", ["uniform", "hand"])
