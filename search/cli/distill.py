"""``distilnas distill``: one student, general distillation then task distillation, with dev scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distilnas.search.cli import render
from distilnas.search.cli.app import JsonOpt, app, emit, setup_logging
from distilnas.search.config import load_config
from distilnas.search.mirror import mirrored
from distilnas.search.preflight import check_distill
from distilnas.search.stages.distill import distill_student, with_overrides


@app.command()
def distill(
    config: Annotated[Path, typer.Argument(help="Run config (YAML); its `distill` section says how.")],
    task: Annotated[list[str], typer.Option("--task", "-t", help="GLUE task; repeat for several.")],
    student: Annotated[
        str | None, typer.Option(help="Student shape, e.g. 4L-256 (overrides the config).")
    ] = None,
    mapping: Annotated[
        str | None,
        typer.Option(help="uniform, last, or a mapping string like 2,4,6/6 (overrides the config)."),
    ] = None,
    baseline: Annotated[
        bool, typer.Option(help="Also fine-tune the same student on labels alone, for comparison.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Distil one student: general distillation on the corpus, then task distillation and dev scores.

    The teacher is fine-tuned per task first (cached). Every stage reads the teacher's outputs from the
    cache and checkpoints, so a killed run picks up where it stopped; a finished stage is read back."""
    cfg = with_overrides(load_config(config), student, mapping)
    check_distill(cfg, task)  # before anything is written, a log included
    setup_logging(cfg.output_dir / "logs" / "distill.log")
    with mirrored(cfg):
        out = distill_student(cfg, task, baseline)
    title = f"student {out.spec.name} ({out.folder.name}), dev"
    emit(out.to_json(), as_json, render.distilled(title, out.tasks, baseline))
