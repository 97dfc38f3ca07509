"""The reports: self-contained HTML pages (plotly.js inlined once).

- the run's report (``report.html``): the Pareto front (parameters and latency against the GLUE
  average), the mapping search's convergence, and the GLUE table of every student beside the teacher
  with speed-ups. PNG copies of the figures are written when kaleido finds a Chrome; the page says when
  it did not;
- the mapping search's report (``search-mapping/report.html``): its convergence per generation and a
  heatmap of the mappings it tried.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from distilnas.distill.utils import atomic_write_text
from distilnas.spaces.mapping import LayerMapping

log = logging.getLogger(__name__)


def front_figure(table: pd.DataFrame, x: str, title: str, log_x: bool) -> go.Figure:
    fig = go.Figure()
    for label, rows, symbol in (
        ("teacher", table[table["kind"] == "teacher"], "star"),
        ("Pareto front", table[(table["kind"] == "student") & table["pareto"]], "circle"),
        ("dominated", table[(table["kind"] == "student") & ~table["pareto"]], "x"),
    ):
        if len(rows):
            fig.add_trace(
                go.Scatter(
                    x=rows[x],
                    y=rows["glue"],
                    mode="markers+text",
                    name=label,
                    text=rows["model"],
                    textposition="top right",
                    marker={"symbol": symbol, "size": 12},
                    cliponaxis=False,
                )
            )
    fig.update_layout(title=title, yaxis_title="GLUE average (dev)", height=450, width=900)
    fig.update_xaxes(title_text=x.replace("_", " "), type="log" if log_x else "linear")
    return fig


def fitness_traces(search: dict[str, Any]) -> tuple[list[go.BaseTraceType], str]:
    """The GA's best and mean proxy fitness per generation; for an exhaustive search, every mapping's
    fitness, ranked. With the x axis' title."""
    if search["mode"] == "exhaustive":
        ranked = search["exhaustive"]["ranked"]
        return [
            go.Bar(x=[r["mapping"] for r in ranked], y=[r["fitness"] for r in ranked], name="fitness")
        ], "mapping"
    book = search["ga"]["logbook"]
    gens = [b["generation"] for b in book]
    return [
        go.Scatter(x=gens, y=[b["best"] for b in book], name="GA best", mode="lines+markers"),
        go.Scatter(x=gens, y=[b["mean"] for b in book], name="GA mean", mode="lines+markers"),
    ], "generation"


def add_yardsticks(fig: go.Figure, search: dict[str, Any], **where: int) -> None:
    """The baselines' fitness (and random search's best) as horizontal lines."""
    for name, value in search["baselines"].items():
        if value is not None:
            fig.add_hline(y=value, line_dash="dot", annotation_text=name, **where)
    if (search.get("random") or {}).get("best"):
        fig.add_hline(
            y=search["random"]["best"]["fitness"], line_dash="dash", annotation_text="random best", **where
        )


def convergence_figure(search: dict[str, Any]) -> go.Figure:
    traces, x_title = fitness_traces(search)
    fig = go.Figure(traces)
    add_yardsticks(fig, search)
    what = "every valid mapping" if search["mode"] == "exhaustive" else "proxy fitness per generation"
    fig.update_layout(
        title=f"layer-mapping search: {what} (best {search['best']['mapping']})",
        xaxis_title=x_title,
        yaxis_title="proxy fitness",
        height=400,
    )
    return fig


def table_figure(table: pd.DataFrame, tasks: list[str]) -> go.Figure:
    cols = ["model", "origin", "mapping", "params", "latency_ms", "speedup", *tasks, "glue", "pareto"]
    cells = []
    for c in cols:
        v = table[c]
        if c == "params":
            cells.append([f"{x / 1e6:.2f} M" for x in v])
        elif c == "speedup":
            cells.append([f"{x:.2f}x" for x in v])
        elif v.dtype.kind == "f":
            cells.append([f"{x:.2f}" for x in v])
        else:
            cells.append([str(x) for x in v])
    header = [c.replace("_ms", " (ms)").replace("glue", "GLUE avg") for c in cols]
    fig = go.Figure(go.Table(header={"values": header}, cells={"values": cells}))
    fig.update_layout(
        title="GLUE dev scores, every student beside the teacher", height=260 + 40 * len(table), width=1200
    )
    return fig


def write_png(figures: dict[str, go.Figure], folder: Path) -> str:
    """PNG copies through kaleido when it and a Chrome are present; returns what happened, in words."""
    try:
        for name, fig in figures.items():
            fig.write_image(folder / f"{name}.png")
    except Exception as exc:  # kaleido missing, or no Chrome for it to drive
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.info("PNG copies skipped: %s", reason)
        return f"PNG copies were not written: {reason}"
    return f"PNG copies: {', '.join(f'{n}.png' for n in figures)} beside this page."


def write_run_report(
    path: Path,
    table: pd.DataFrame,
    tasks: list[str],
    search: dict[str, Any] | None,
    exports: list[Path],
    notes: dict[str, Any],
) -> Path:
    """Write the page (atomically) and, when possible, PNG copies of its figures beside it."""
    figures = {
        "front_params": front_figure(table, "params", "Pareto front: parameters vs GLUE average", True),
        "front_latency": front_figure(table, "latency_ms", "Pareto front: latency vs GLUE average", False),
    }
    if search:
        figures["mapping_convergence"] = convergence_figure(search)
    figures["glue_table"] = table_figure(table, tasks)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = write_png(figures, path.parent)
    parts = []
    for i, fig in enumerate(figures.values()):
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    teacher = table[table["kind"] == "teacher"].iloc[0]
    summary = [
        f"Teacher: {teacher['model']} ({teacher['params'] / 1e6:.2f} M parameters, "
        f"{teacher['latency_ms']:.2f} ms), GLUE average {teacher['glue']:.2f} over {', '.join(tasks)}.",
        f"Latency: {html.escape(json.dumps(notes.get('latency', {})))}.",
        f"Pareto-front hypervolume {notes.get('hypervolume', float('nan')):.4f} "
        "(normalised: GLUE/100, parameters and latency as fractions of the teacher's; "
        "reference point GLUE 0 at the teacher's size and latency).",
        "Supernet search: " + ("see below." if notes.get("supernet") else "not part of this run."),
        "Exports: " + (", ".join(html.escape(str(e)) for e in exports) or "none"),
        png,
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>distilnas report</title>"
        "<style>body{font-family:sans-serif;margin:2em} li{margin:.3em 0}</style></head><body>"
        "<h1>distilnas run report</h1><ul>"
        + "".join(f"<li>{s}</li>" for s in summary)
        + "</ul>"
        + "".join(parts)
        + "</body></html>"
    )
    atomic_write_text(path, page)
    return path


@dataclass(frozen=True)
class SearchTrial:
    """One evaluated mapping, as the search report shows it."""

    mapping: str
    rung: int | None  # of successive halving (None: the proxy has no rungs)
    fitness: float
    source: str | None


def write_search_report(path: Path, results: dict[str, Any], trials: list[SearchTrial]) -> Path:
    """The mapping search's page: convergence per generation (or every mapping, when exhaustive) and a
    heatmap of the mappings tried."""
    traces, x_title = fitness_traces(results)
    title = "every valid mapping" if results["mode"] == "exhaustive" else "GA convergence"
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"{title} (proxy fitness)", "mappings tried"))
    for trace in traces:
        fig.add_trace(trace, 1, 1)
    add_yardsticks(fig, results, row=1, col=1)
    trials = sorted(trials, key=lambda t: t.fitness)
    layers = results["space"]["student_layers"]
    z = [[g or 0 for g in LayerMapping.from_string(t.mapping).targets] for t in trials]
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=[f"student layer {i + 1}" for i in range(layers)],
            y=[
                f"{t.mapping} ({t.fitness:.2f}, {t.source}{'' if t.rung is None else f', rung {t.rung}'})"
                for t in trials
            ],
            colorscale="Viridis",
            colorbar={"title": "teacher layer"},
        ),
        1,
        2,
    )
    fig.update_xaxes(title_text=x_title, row=1, col=1)
    fig.update_layout(title="distilnas layer-mapping search", height=max(500, 18 * len(trials)))
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path
