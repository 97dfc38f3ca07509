"""A run's Optuna storage: a journal file in the run folder, or an RDB URL (the single record of trials)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from distilnas.distill.errors import UserError

JOURNAL = "optuna.journal"


def open_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    """The run's Optuna storage: a journal file in ``run_dir`` (the run's ``output_dir``), or the
    configured RDB URL."""
    if url is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(run_dir / JOURNAL)))
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:
        raise UserError(f"storage.url {url!r}: cannot open ({type(exc).__name__}: {exc})") from None
