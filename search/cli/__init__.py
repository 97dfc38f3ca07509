"""The ``distilnas`` command: one Typer app, its commands in one module per group (work in ``stages/``,
tables in ``render``), and one error boundary (:func:`main`)."""

from __future__ import annotations

import logging
import sys
import tempfile
import traceback
from pathlib import Path

import typer
from pydantic import ValidationError
from typer.exceptions import TyperException

from distilnas.distill.config import describe
from distilnas.distill.errors import UserError
from distilnas.search.cli import cache, data, distill, models, run, search  # noqa: F401  (the commands)
from distilnas.search.cli.app import app, err

__all__ = ["app", "main"]


def expected(exc: BaseException) -> str | None:
    """The one line for a failure a user can act on (bad input, a file that cannot be read or written);
    None for anything else."""
    if isinstance(exc, ValidationError):
        return describe(exc)
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, TyperException):  # a usage error: an unknown command or option, a bad value
        return str(exc.format_message())
    if isinstance(exc, OSError) and (exc.filename or exc.strerror):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start}: {exc.reason})"
    return None


def traceback_file() -> Path:
    """Where an unexpected failure's traceback goes: the command's log file (the run's), else a file of
    its own."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return Path(tempfile.mkstemp(prefix="distilnas-", suffix=".log")[1])


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app (on ``argv``, default the command line). Bad input is one line on stderr
    and exit code 2; an unexpected failure is one line pointing to its traceback, and exit code 1."""
    try:
        code = app(args=argv, prog_name="distilnas", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("distilnas: interrupted", markup=False, highlight=False)
        sys.exit(130)
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed
            sys.exit(2)
        message = expected(exc)
        if message is not None:
            err.print(f"distilnas: error: {message}", markup=False, highlight=False, soft_wrap=True)
            sys.exit(2)
        log = traceback_file()
        with open(log, "a", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(exc)))
        first = str(exc).splitlines()[0] if str(exc) else ""
        err.print(
            f"distilnas: unexpected error: {type(exc).__name__}: {first} (traceback in {log})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
