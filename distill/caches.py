"""What the cache folder holds (``data.cache_dir``): fine-tuned teachers, tokenized data, teacher-output
caches and reference stores, with their sizes, their last use and what each one is, and pruning by age.

Every entry is keyed by what made it, so a removed one is simply made again when a run needs it; an entry
a process is building or reading under its lock is never removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

USED = ".last-used"
KINDS = ("teachers", "tokenized", "teacher-outputs", "references")


def touch(folder: Path) -> None:
    """Record that a cache entry was used now (``cache list`` shows it, ``cache prune`` goes by it)."""
    with contextlib.suppress(OSError):  # a read-only cache is used all the same
        (folder / USED).touch()


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    path: Path
    bytes: int
    last_used: float
    """Seconds since the epoch."""
    what: str

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def folder_bytes(folder: Path) -> int:
    return sum(
        (Path(root) / f).stat().st_size
        for root, _, files in os.walk(folder)
        for f in files
        if not os.path.islink(Path(root) / f)
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def describe(kind: str, folder: Path) -> str:
    if kind == "teachers":
        r = read_json(folder / "teacher.json")
        return f"{r.get('teacher', '?')} fine-tuned on {r.get('task', '?')}" if r else "a teacher (no record)"
    if kind == "teacher-outputs":
        r = read_json(folder / "index.json")
        fields = ", ".join(r.get("fields", []))
        return (
            f"{fields} of teacher {r.get('teacher', '?')} on {r.get('examples', '?')} examples"
            f" (max length {r.get('max_length', '?')})"
            if r
            else "incomplete"
        )
    if kind == "references":
        key = read_json(folder / "store.json").get("key", {})
        layer, tokens = key.get("layer", "?"), key.get("tokens", "?")
        return f"references of {key.get('teacher', '?')}, layer {layer}, {tokens} tokens"
    rows = arrow_rows(folder)
    return f"{folder.name.rsplit('-', 1)[0]} tokenized" + (f", {rows:,} rows" if rows is not None else "")


def arrow_rows(folder: Path) -> int | None:
    """How many rows a saved dataset holds (read from its Arrow files, memory-mapped); None if unreadable."""
    import pyarrow as pa

    try:
        total = 0
        for f in sorted(folder.glob("*.arrow")):
            with pa.memory_map(str(f)) as source:
                total += pa.ipc.open_stream(source).read_all().num_rows
        return total
    except (OSError, pa.ArrowException):
        return None


def entries(root: Path) -> list[CacheEntry]:
    """Every entry of the cache folder ``root``, oldest use first."""
    out = []
    for kind in KINDS:
        base = root / kind
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            used = folder / USED
            last = max(folder.stat().st_mtime, used.stat().st_mtime if used.is_file() else 0.0)
            out.append(CacheEntry(kind, folder, folder_bytes(folder), last, describe(kind, folder)))
    return sorted(out, key=lambda e: e.last_used)


def prune(
    root: Path, older_than_days: float, kinds: list[str] | None = None, dry_run: bool = False
) -> list[CacheEntry]:
    """Remove the entries (of ``kinds``) last used more than ``older_than_days`` ago; one in use (its lock
    held) is kept. Returns what was (or, with ``dry_run``, would be) removed."""
    cutoff = time.time() - older_than_days * 86400
    removed = []
    for entry in entries(root):
        if entry.last_used > cutoff or (kinds and entry.kind not in kinds):
            continue
        lock = FileLock(str(entry.path) + ".lock", timeout=0)
        try:
            with lock:
                if not dry_run:
                    shutil.rmtree(entry.path)
        except Timeout:
            continue  # being built or read now
        removed.append(entry)
    return removed
