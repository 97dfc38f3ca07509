"""A run's Optuna storage: a journal file in the run folder, or an RDB URL (the single record of trials).

A database (PostgreSQL for a team, SQLite for one machine) is written by the driver alone: Ray trials
report to the driver, which records them, so one connection pool serves a whole run."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError

from distilnas.distill.errors import UserError

JOURNAL = "optuna.journal"
SCHEMA_TRIES = 5


def shown(url: str) -> str:
    """The URL as messages show it: its password hidden (a URL that does not parse, as given)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    """The run's Optuna storage: a journal file in ``run_dir`` (the run's ``output_dir``), or the
    configured RDB URL."""
    if url is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(run_dir / JOURNAL)))
    try:
        server = make_url(url).get_backend_name() != "sqlite"
    except Exception as exc:
        raise UserError(f"storage.url {shown(url)!r}: cannot open ({type(exc).__name__}: {exc})") from None
    for attempt in range(SCHEMA_TRIES):
        try:
            # a server may close a connection a long stage left idle: test each before use
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if server else None)
        except (IntegrityError, ProgrammingError) as exc:
            # Optuna creates the schema when it is missing; processes opening a new database at once
            # race to create it, and the losers fail on "already exists". Once the winner has committed,
            # opening again finds the schema and creates nothing.
            error: Exception = exc
            time.sleep(0.2 * (attempt + 1))
        except Exception as exc:
            error = exc
            break
    raise UserError(f"storage.url {shown(url)!r}: cannot open ({type(error).__name__}: {error})") from None
