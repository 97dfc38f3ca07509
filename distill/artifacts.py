"""Artifacts travel, caches are per node.

On a cluster, trials run on machines that do not see the driver's disk. What the driver prepared in its
cache and a trial reads — fine-tuned teachers, the tokenized corpus sample, reference stores — is
published once to the run storage (``<output_dir>/artifacts``, which every node reaches: the start-up
probe checks it), and each node copies what it lacks into its own cache, at the same path, under a file
lock: one copy per node, whatever the number of trials there. What is cheap to remake from inputs every
node reads (GLUE's tokenized splits, the teachers' outputs) is built in each node's cache instead, once.

Cache folders are named by fingerprints of what made them and written atomically, so a folder that exists
is complete and the one wanted. Every folder a process adds to its cache (built or copied) is counted in
:data:`ADDED`; trials report the count so a run records how often each node built each cache.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from distilnas.distill.errors import UserError
from distilnas.distill.remote import Remote, is_uri, shown
from distilnas.distill.utils import atomic_dir

COMPLETE = ".distilnas-complete"
"""Written last into a folder published at a URI."""

ADDED: Counter[str] = Counter()
"""Cache folders this process has added (``kind/name``, e.g. ``teacher-outputs/<fingerprint>``): built
or copied from the run storage."""


def added(folder: Path) -> None:
    """Count a cache folder this process made."""
    ADDED[f"{folder.parent.name}/{folder.name}"] += 1


def drain() -> dict[str, int]:
    """The folders added since the last call (a trial reports them with its result)."""
    out = dict(ADDED)
    ADDED.clear()
    return out


def copy_tree(src: Path, dst: Path) -> None:
    """``src`` copied to ``dst`` (a new folder), as hard links where both are on one filesystem (the
    files are never modified in place: caches are replaced whole)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


@dataclass(frozen=True)
class Shelf:
    """The run storage's copies of the driver's cache folders that trials read."""

    root: str
    """``<output_dir>/artifacts``: every node reaches it (a shared folder, or a URI)."""
    cache_dir: str
    """The driver's cache root; each node's own cache is at the same path, on its own disk."""

    def place(self, folder: str | Path) -> str:
        """Where ``folder`` (in the cache) is kept on the shelf."""
        try:
            rel = Path(folder).resolve().relative_to(Path(self.cache_dir).resolve())
        except ValueError:
            raise UserError(
                f"{folder}: not in the cache {self.cache_dir} (only its folders travel)"
            ) from None
        return (
            Remote(self.root).child(rel.as_posix()).uri if is_uri(self.root) else str(Path(self.root) / rel)
        )

    def on_shelf(self, place: str) -> bool:
        """Whether ``place`` holds a whole folder (at a URI, its marker is written last)."""
        return Remote(place).child(COMPLETE).is_file() if is_uri(place) else Path(place).is_dir()

    def publish(self, folder: str | Path) -> None:
        """Put a cache folder on the shelf (once: a folder already there is the same, by its name)."""
        place = self.place(folder)
        if self.on_shelf(place):
            return
        if is_uri(place):  # no atomic rename there: the marker says the copy is whole
            Remote(place).upload(Path(folder))
            Remote(place).child(COMPLETE).write_text("")
            return
        with atomic_dir(Path(place)) as tmp:
            copy_tree(Path(folder), tmp)

    def fetch(self, folder: str | Path) -> str:
        """``folder`` in this node's cache: copied from the shelf when this node lacks it (one process
        copies, the others wait for it). Returns the path, for chaining."""
        path = Path(folder)
        if path.is_dir():
            return str(folder)
        place = self.place(path)
        if not self.on_shelf(place):
            raise UserError(
                f"{shown(place)}: the run storage lacks {path.name}, which trials read (published?)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.is_dir():
                with atomic_dir(path) as tmp:
                    if is_uri(place):
                        Remote(place).download(tmp)
                        (tmp / COMPLETE).unlink()
                    else:
                        copy_tree(Path(place), tmp)
                added(path)
        return str(folder)
