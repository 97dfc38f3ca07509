"""The ``distilnas`` command line: the Typer apps every command group registers on, the options they
share, logging, and how a result is printed (one JSON object with ``--json``, else a table)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import datasets
import transformers
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from distilnas.search.mirror import local_run

app = typer.Typer(
    name="distilnas",
    help="Compress BERT-family models: search layer mappings and architectures on proxies, then distil.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect the datasets distilnas reads.", no_args_is_help=True)
search_app = typer.Typer(help="Search layer mappings or architectures on proxies, as Ray Tune trials.")
space_app = typer.Typer(help="Inspect the architecture space (NAS-BERT).", no_args_is_help=True)
cache_app = typer.Typer(help="What the cache folder holds, and pruning it.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")
app.add_typer(search_app, name="search")
app.add_typer(space_app, name="space")

out = Console()  # results (tables) on stdout
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (logs go to stderr).")]
ResumeOpt = Annotated[
    bool, typer.Option(help="Continue the run in output_dir: what finished (stages, trials) is kept.")
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster address (auto, or host:port); default: the config's ray.address, else Ray here."
    ),
]
GlueDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--glue-dir", help="Local GLUE folder (glue_data layout). Default: $GLUE_DIR, else the HF hub."
    ),
]
RunOpt = Annotated[
    Path,
    typer.Argument(
        metavar="RUN",
        parser=local_run,
        help="A run folder (the config's output_dir); a URI is copied into the cache first.",
    ),
]


def setup_logging(log_file: Path | None = None, verbose: bool = False) -> None:
    """Logs to stderr (rich), and to ``log_file`` when given; quiet third-party chatter."""
    level = logging.DEBUG if verbose else logging.INFO
    handlers: list[logging.Handler] = [RichHandler(console=err, show_path=False, rich_tracebacks=False)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(fh)
    logging.basicConfig(level=level, handlers=handlers, format="%(message)s", force=True)
    for chatty in ("choreographer", "kaleido", "logistro"):  # the report's PNG export
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # choreographer logs a garbled message from Chrome, which it then ignores, as an ERROR with a
    # traceback; an export that fails raises, and the report says so
    logging.getLogger("choreographer.channels").setLevel(logging.CRITICAL)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def emit(obj: dict[str, Any], as_json: bool, table: Table | None = None) -> None:
    """Report a result: JSON on stdout, or a table for people."""
    if as_json:
        sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    elif table is not None:
        out.print(table)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (file descriptor 1, so Ray's and its workers' prints too) to
    stderr for the block, keeping stdout for the one JSON result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def glue_dir_or_env(glue_dir: Path | None) -> Path | None:
    if glue_dir is not None:
        return glue_dir
    env = os.environ.get("GLUE_DIR")
    return Path(env) if env else None
