"""The reports: one self-contained page per run (front, convergence, GLUE table) and per mapping search
(convergence and the mappings tried), from typed inputs."""

from __future__ import annotations

from pathlib import Path

from test_table import TASKS, student, teacher

from distilnas.results.report import SearchTrial, write_run_report, write_search_report
from distilnas.results.table import results_table

SEARCH = {
    "mode": "ga",
    "best": {"mapping": "3,4/4", "fitness": 63.0},
    "space": {"student_layers": 2},
    "baselines": {"uniform": 61.0, "last": None},
    "ga": {
        "best": {"mapping": "3,4/4", "fitness": 63.0},
        "logbook": [
            {"generation": 0, "best": 62.0, "mean": 60.0},
            {"generation": 1, "best": 63.0, "mean": 61.5},
        ],
    },
    "random": {"best": {"mapping": "1,4/4", "fitness": 62.5}},
}


def test_run_report_holds_every_figure_once(tmp_path: Path) -> None:
    table = results_table(teacher(), [student("a", 100, 2.0, (60.0, 70.0), 55.0)], TASKS)
    page = write_run_report(
        tmp_path / "report.html", table, TASKS, SEARCH, [tmp_path / "x"], {"hypervolume": 0.4}
    )
    html = page.read_text()
    assert html.count("<script") >= 1 and html.count("plotly.js v") <= 1  # plotly.js inlined once
    for text in ("Pareto front", "layer-mapping search", "GLUE dev scores", "0.4000", "teacher"):
        assert text in html, text
    assert "PNG copies" in html  # written, or the page says why not


def test_search_report_shows_every_mapping_tried(tmp_path: Path) -> None:
    trials = [SearchTrial("3,4/4", None, 63.0, "ga"), SearchTrial("1,-/4", 1, 58.0, "random")]
    html = write_search_report(tmp_path / "s.html", SEARCH, trials).read_text()
    shown = html.replace("\\u002f", "/")  # plotly escapes the slash in its JSON
    assert "3,4/4 (63.00, ga)" in shown and "1,-/4 (58.00, random, rung 1)" in shown
    assert "GA convergence" in html


def test_exhaustive_search_report_ranks_every_mapping(tmp_path: Path) -> None:
    ranked = [{"mapping": "3,4/4", "fitness": 63.0}, {"mapping": "2,4/4", "fitness": 60.0}]
    search = {
        "mode": "exhaustive",
        "best": ranked[0],
        "space": {"student_layers": 2},
        "baselines": {"uniform": 60.0, "last": 63.0},
        "exhaustive": {"best": ranked[0], "ranked": ranked, "evaluations": 2},
    }
    trials = [SearchTrial(r["mapping"], None, r["fitness"], "exhaustive") for r in ranked]
    html = write_search_report(tmp_path / "s.html", search, trials).read_text()
    assert "every valid mapping" in html and "GA convergence" not in html
    assert "2,4/4 (60.00, exhaustive)" in html.replace("\\u002f", "/")
