"""A run kept at a URI (``output_dir: s3://...``), worked on in a local copy.

Only the driver writes the run folder (trials report to it), so the driver keeps the whole run in a local
copy under its cache and mirrors it: the copy is made equal to the run storage before a command checks
anything (``pull``), and the run storage is brought up to date after each stage and when the command
ends, also by an error (``push``). What every node needs of the run goes to the URI directly: Ray Tune's
trial records (each stage's ``ray/``) and, on a cluster, the artifacts trials read
(:mod:`distilnas.distill.artifacts`).

``.distilnas-synced.json`` in the copy records each file as last seen on both sides (size and
modification time; S3 keeps whole seconds), so a pull or push moves only what changed, and a file that
was synced once and is gone from one side is removed from the other (Ray Tune's records, written to the
URI alone, are never removed by a push).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distilnas.distill.errors import UserError
from distilnas.distill.remote import Remote, is_uri
from distilnas.distill.utils import atomic_write_json, default_cache_dir
from distilnas.search.config import RunConfig, local_copy
from distilnas.search.tune import RunStorage

log = logging.getLogger(__name__)

SYNCED = ".distilnas-synced.json"
Seen = dict[str, list[int]]
"""Relative path -> [size, the run storage's modification time, the local copy's (ns)] at the last sync."""


class Mirror:
    """The local copy ``local`` of the run kept at ``uri``."""

    def __init__(self, local: Path, uri: str) -> None:
        self.local = local
        self.remote = Remote(uri)

    def _seen(self) -> Seen:
        path = self.local / SYNCED
        return dict(json.loads(path.read_text())) if path.is_file() else {}

    def _local_files(self) -> dict[str, tuple[int, int]]:
        out = {}
        for p in self.local.rglob("*"):
            if p.is_file() and p.name != SYNCED and not p.name.endswith(".lock"):
                st = p.stat()
                out[p.relative_to(self.local).as_posix()] = (st.st_size, st.st_mtime_ns)
        return out

    def _remote_files(self) -> dict[str, tuple[int, int]]:
        try:
            return self.remote.files()
        except OSError as exc:
            raise UserError(f"output_dir {self.remote.base}: cannot list the run storage ({exc})") from None

    def pull(self) -> int:
        """Make the copy what the run storage holds; returns how many files came down."""
        seen, there = self._seen(), self._remote_files()
        here = self._local_files() if self.local.is_dir() else {}
        moved = 0
        for rel, (size, mtime) in sorted(there.items()):
            was = seen.get(rel)
            if rel in here and was and (was[0], was[1]) == (size, mtime):
                continue  # unchanged there since the last sync: the copy's file (maybe newer) stays
            target = self.local / rel
            self.remote.child(rel).download(target)
            seen[rel] = [size, mtime, target.stat().st_mtime_ns]
            moved += 1
        for rel in [r for r in seen if r not in there]:  # synced once, gone from the run storage
            (self.local / rel).unlink(missing_ok=True)
            del seen[rel]
        self.local.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.local / SYNCED, seen)
        return moved

    def push(self) -> int:
        """Bring the run storage up to date with the copy; returns how many files went up. A failure
        says where the run's changes are; the next push sends what was not recorded as sent."""
        if not self.local.is_dir():
            return 0
        seen, here = self._seen(), self._local_files()
        sent: list[str] = []
        try:
            for rel, (size, mtime) in sorted(here.items()):
                was = seen.get(rel)
                if not (was and (was[0], was[2]) == (size, mtime)):
                    self.remote.child(rel).upload(self.local / rel)
                    sent.append(rel)
            there = self.remote.files() if sent else {}  # one listing gives what was sent its time there
            for rel in sent:
                seen[rel] = [here[rel][0], there[rel][1], here[rel][1]]
            for rel in [r for r in seen if r not in here]:  # removed here (a replaced checkpoint, say)
                self.remote.child(rel).unlink(missing_ok=True)
                del seen[rel]
        except OSError as exc:
            raise UserError(
                f"output_dir {self.remote.base}: the run's changes could not be copied there "
                f"({str(exc).splitlines()[0]}); they are in {self.local}: --resume copies them"
            ) from None
        finally:
            atomic_write_json(self.local / SYNCED, seen)
        return len(sent)


def pull_run(cfg: RunConfig) -> None:
    """A run kept at a URI: its local copy made equal to it (before the command checks the folder)."""
    if cfg.run_storage:
        moved = Mirror(cfg.output_dir, cfg.run_storage).pull()
        if moved:
            log.info("%d files of %s copied to %s", moved, Remote(cfg.run_storage).base, cfg.output_dir)


def push_run(cfg: RunConfig) -> None:
    """A run kept at a URI: what changed in its local copy copied there (after each stage)."""
    if cfg.run_storage:
        Mirror(cfg.output_dir, cfg.run_storage).push()


@contextmanager
def mirrored(cfg: RunConfig) -> Iterator[None]:
    """The command's work on a run kept at a URI: Ray Tune and the artifacts go to the URI, and the
    local copy is pushed when the work ends, also by an error."""
    if not cfg.run_storage:
        yield
        return
    RunStorage.local, RunStorage.uri = cfg.output_dir.resolve(), cfg.run_storage
    try:
        yield
    except BaseException:
        try:  # what finished before the error is kept there too; the error itself is what is reported
            push_run(cfg)
        except UserError as exc:
            log.warning("%s", exc)
        raise
    else:
        push_run(cfg)
        log.info("run kept at %s", Remote(cfg.run_storage).base)
    finally:
        RunStorage.local = RunStorage.uri = None


def local_run(run: str) -> Path:
    """A RUN argument: a folder, or a URI whose run is copied into the cache first (for the commands
    that read a run)."""
    if not is_uri(run):
        return Path(run)
    local = local_copy(run, default_cache_dir())
    Mirror(local, run).pull()
    return local
