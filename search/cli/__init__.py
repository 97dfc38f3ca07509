"""The ``distilnas`` command: one Typer app, its commands in one module per group (work in ``stages/``,
tables in ``render``), and one error boundary (:func:`main`)."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from distilnas.distill.config import describe
from distilnas.distill.errors import UserError
from distilnas.search.cli import data, distill, models, run, search  # noqa: F401  (register the commands)
from distilnas.search.cli.app import app, err

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app (on ``argv``, default the command line); a UserError becomes one line on
    stderr and exit code 2."""
    try:
        app(args=argv, prog_name="distilnas")
    except (UserError, ValidationError) as exc:
        message = describe(exc) if isinstance(exc, ValidationError) else str(exc)
        err.print(f"distilnas: error: {message}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
