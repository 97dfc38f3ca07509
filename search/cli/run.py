"""``distilnas run`` (the whole job), ``export`` and ``report`` of a finished run, and ``dashboard``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from distilnas.distill.errors import UserError
from distilnas.results.dashboard import serve
from distilnas.search.cli import render
from distilnas.search.cli.app import (
    AddressOpt,
    JsonOpt,
    ResumeOpt,
    RunOpt,
    app,
    emit,
    err,
    setup_logging,
    stdout_to_stderr,
)
from distilnas.search.config import load_config
from distilnas.search.mirror import mirrored
from distilnas.search.pipeline import finish, run_pipeline
from distilnas.search.preflight import check_run
from distilnas.search.rundir import RunFolder


def show_run(out: dict[str, Any], as_json: bool, title: str) -> None:
    emit(out, as_json, render.run_table(out, title))
    if not as_json:
        err.print(f"report: {out['report']}")
        for e in out["exports"]:
            err.print(f"export: {e}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    address: AddressOpt = None,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The whole job: fine-tune the teacher, search the layer mapping on proxies, distil the chosen
    students fully and score them on GLUE, then the results table, the Pareto-front exports and the
    report. Each stage is skipped when its outputs exist; `--resume` continues a stopped run."""
    cfg = load_config(config)
    with stdout_to_stderr():
        check_run(cfg, resume, address)  # before anything is written, a log included
    setup_logging(RunFolder.of(cfg).log)
    with stdout_to_stderr(), mirrored(cfg):
        out = run_pipeline(cfg, resume=resume, address=address)
    show_run(out, as_json, f"distilnas run {cfg.output_dir}: dev scores")


@app.command()
def export(
    run_dir: RunOpt,
    to: Annotated[Path | None, typer.Option(help="Export folder (default RUN/exports).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export the run's Pareto-front students as model folders named with their figures."""
    setup_logging()
    cfg = RunFolder(run_dir).recorded_config().model_copy(update={"output_dir": run_dir, "run_storage": None})
    run = RunFolder.of(cfg)
    if not run.final.finished:
        raise UserError(f"{run_dir}: the final stage has not finished (no final/results.json)")
    search = run.mapping.results() if run.mapping.finished else None
    with stdout_to_stderr():
        out = finish(cfg, run, search, to or run.exports)
    show_run(out, as_json, f"{run_dir}: exported")


@app.command()
def report(run_dir: RunOpt, as_json: JsonOpt = False) -> None:
    """Rebuild the run's results table and HTML report (and any missing exports)."""
    export(run_dir, None, as_json)


@app.command()
def dashboard(
    run: RunOpt,
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
) -> None:
    """Start optuna-dashboard on the run's Optuna storage (every trial of its searches)."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: not a port (1..65535)")
    setup_logging()
    storage = RunFolder.existing(run).recorded_storage()
    err.print(f"optuna-dashboard for {run} on http://{host}:{port}/ (Ctrl-C to stop)")
    serve(storage, host, port)
