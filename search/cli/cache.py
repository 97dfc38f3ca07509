"""``distilnas cache``: what the cache folder holds, and pruning it by age."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from distilnas.distill.caches import KINDS, entries, prune
from distilnas.distill.errors import UserError
from distilnas.distill.utils import default_cache_dir
from distilnas.search.cli import render
from distilnas.search.cli.app import JsonOpt, cache_app, emit, setup_logging
from distilnas.search.config import load_config

CacheDirOpt = Annotated[
    Path | None,
    typer.Option(help="The cache folder (default: the config's data.cache_dir, else $DISTILNAS_CACHE)."),
]
ConfigOpt = Annotated[Path | None, typer.Option(help="Take the cache folder from this run config.")]


def cache_folder(cache_dir: Path | None, config: Path | None) -> Path:
    if cache_dir is not None and config is not None:
        raise UserError("--cache-dir and --config: give one")
    root = load_config(config).cache_dir if config is not None else cache_dir or default_cache_dir()
    if not root.is_dir():
        raise UserError(f"{root}: no cache folder here")
    return root


@cache_app.command("list")
def cache_list(cache_dir: CacheDirOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Every entry of the cache folder: kind, size, last use and what it is (oldest use first)."""
    setup_logging()
    root = cache_folder(cache_dir, config)
    found = entries(root)
    out = {
        "cache_dir": str(root),
        "bytes": sum(e.bytes for e in found),
        "entries": [e.to_json() for e in found],
    }
    emit(out, as_json, render.cache_entries(str(root), found, time.time()))


@cache_app.command("prune")
def cache_prune(
    older_than: Annotated[float, typer.Option(help="Remove entries last used more than this many days ago.")],
    kind: Annotated[
        list[str] | None, typer.Option(help=f"Only entries of this kind ({', '.join(KINDS)}).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Say what would be removed; remove nothing.")] = False,
    cache_dir: CacheDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove cache entries not used for a while (each is made again when a run needs it); an entry in use
    is kept."""
    unknown = [k for k in kind or [] if k not in KINDS]
    if unknown:
        raise UserError(f"--kind {unknown[0]!r}: choose from {', '.join(KINDS)}")
    if older_than < 0:
        raise UserError(f"--older-than {older_than}: must not be negative")
    setup_logging()
    root = cache_folder(cache_dir, config)
    removed = prune(root, older_than, kind, dry_run)
    out = {"cache_dir": str(root), "dry_run": dry_run, "removed": [e.to_json() for e in removed]}
    title = f"{'would remove' if dry_run else 'removed'} {len(removed)} entries"
    emit(out, as_json, render.cache_entries(title, removed, time.time()))
