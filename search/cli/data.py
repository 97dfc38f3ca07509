"""``distilnas data``: the datasets distilnas reads."""

from __future__ import annotations

from distilnas.distill.errors import UserError
from distilnas.distill.glue import count_rows
from distilnas.search.cli import render
from distilnas.search.cli.app import GlueDirOpt, JsonOpt, data_app, emit, glue_dir_or_env, setup_logging


@data_app.command("check")
def data_check(glue_dir: GlueDirOpt = None, as_json: JsonOpt = False) -> None:
    """Parse every GLUE file in the folder and print rows per task and split."""
    setup_logging()
    folder = glue_dir_or_env(glue_dir)
    if folder is None:
        raise UserError("--glue-dir: no GLUE folder given and GLUE_DIR is not set")
    counts = count_rows(folder)
    if not counts:
        raise UserError(f"{folder}: no GLUE task folders found (expected CoLA/, SST-2/, ...)")
    emit({"glue_dir": str(folder), "rows": counts}, as_json, render.glue_rows(str(folder), counts))
