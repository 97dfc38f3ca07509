"""The reference store of a pool (a task's training set): the fine-tuned teacher's representations of each
example (one teacher layer, the first ``tokens`` tokens, fp16), taken once from the teacher-output cache,
beside the retrieval index over the pool's texts; and the dataset transform that gives each row of a
split its reference.

A store records which teacher and which pool it was made from; a store of another teacher or dataset,
tokenized otherwise, or of another layer or length is refused, never silently used.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from distilnas.distill.artifacts import added
from distilnas.distill.caches import USED, touch
from distilnas.distill.data import TokenizedSplit
from distilnas.distill.errors import UserError
from distilnas.distill.glue import GlueTask, load_split
from distilnas.distill.retrieval import ReferenceIndex, pool_fingerprint
from distilnas.distill.teacher_cache import TeacherCache
from distilnas.distill.utils import atomic_dir, fingerprint

STORE_FORMAT = "reference-store-v1"
STORE_CHUNK = 4096
"""Examples whose states are read and written at once when a store is built."""


@dataclass(frozen=True)
class StoreKey:
    """What a reference store is made of; a store is used only where all of it matches."""

    teacher: str
    """The (fine-tuned) teacher's identity, as its teacher-output cache names it."""
    pool: str
    """The pool's fingerprint (its texts, in order)."""
    data: str
    """The pool's tokenized rows (their digest, as the teacher-output cache keys them): the stored states
    depend on how the examples were cut (``max_length``) as well as on their texts."""
    layer: int
    """The teacher layer whose hidden states are stored (0: embeddings)."""
    tokens: int
    """At most this many tokens of each example (the first ones, [CLS] included)."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(STORE_FORMAT, self.teacher, self.pool, self.data, self.layer, self.tokens)


class ReferenceStore:
    """The pool's teacher representations and the retrieval index over its texts (one folder).

    Layout: ``states.f16`` (tokens, hidden), ``offsets.i64`` (examples + 1), ``index/`` (the
    :class:`ReferenceIndex`) and ``store.json``, written last: the key, sizes and file sizes.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        touch(self.folder)
        meta_file = self.folder / "store.json"
        if not meta_file.is_file():
            raise UserError(f"{self.folder}: no reference store here (store.json missing)")
        self.meta = json.loads(meta_file.read_text())
        if not (self.folder / "index" / "index.json").is_file():
            raise UserError(f"{self.folder}: the retrieval index (index/) is missing beside the store")
        for name, size in self.meta["files"].items():
            f = self.folder / name
            if not f.is_file() or f.stat().st_size != size:
                raise UserError(f"{f}: missing or truncated ({size} bytes expected); rebuild the store")
        self.key = StoreKey(**self.meta["key"])
        self.index = ReferenceIndex.load(self.folder / "index")
        if self.index.fingerprint != self.key.pool:
            raise UserError(f"{self.folder}: the retrieval index is for another dataset than the store")
        self.offsets = np.fromfile(self.folder / "offsets.i64", dtype=np.int64)
        self.hidden_size = int(self.meta["hidden_size"])
        self.states_map = np.memmap(
            self.folder / "states.f16", np.float16, "r", shape=(int(self.offsets[-1]), self.hidden_size)
        )

    @classmethod
    def build(cls, folder: Path, cache: TeacherCache, index: ReferenceIndex, key: StoreKey) -> ReferenceStore:
        """Write the store of ``index``'s pool from a teacher-output ``cache`` of the same rows (its
        ``hidden`` field), atomically, and open it."""
        if cache.hidden is None:
            raise UserError(f"{cache.path}: the teacher-output cache has no hidden states for references")
        if cache.examples != len(index.texts):
            raise UserError(
                f"references: the teacher cache has {cache.examples} examples, the pool {len(index.texts)}"
            )
        layers = int(cache.hidden.shape[1]) - 1
        if not 0 <= key.layer <= layers:
            raise UserError(f"references.teacher_layer: {key.layer} is not a teacher layer (0..{layers})")
        starts = cache.offsets[:-1]
        keep = np.minimum(cache.offsets[1:] - starts, key.tokens)
        offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
        with atomic_dir(folder) as tmp:
            with open(tmp / "states.f16", "wb") as f:  # streamed: a chunk of examples at a time
                for s in range(0, len(keep), STORE_CHUNK):
                    e = min(len(keep), s + STORE_CHUNK)
                    rows = np.concatenate(
                        [np.arange(a, a + k) for a, k in zip(starts[s:e], keep[s:e], strict=True)]
                    )
                    f.write(np.ascontiguousarray(cache.hidden[rows, key.layer], dtype=np.float16).tobytes())
                    cache.release()
            offsets.tofile(tmp / "offsets.i64")
            index.save(tmp / "index")
            files = ["states.f16", "offsets.i64", "index/index.json", "index/matrix.npz"]
            meta = {
                "format": STORE_FORMAT,
                "key": key.__dict__,
                "fingerprint": key.fingerprint,
                "examples": len(keep),
                "hidden_size": int(cache.hidden.shape[2]),
                "files": {f: (tmp / f).stat().st_size for f in files},
            }
            (tmp / "store.json").write_text(json.dumps(meta, indent=2))
        added(folder)
        return cls(folder)

    # ------------------------------------------------------------------ facts

    @property
    def examples(self) -> int:
        return len(self.offsets) - 1

    @property
    def bytes(self) -> int:
        """The store's size on disk: what travels with the student besides its weights."""
        return int(sum(self.meta["files"].values()))

    @property
    def values(self) -> int:
        """Stored numbers (tokens x hidden): the store's size counted as parameters are."""
        return int(self.offsets[-1]) * self.hidden_size

    def check(self, expected: StoreKey) -> None:
        """Refuse a store made from another teacher or dataset, or holding another layer or length."""
        teacher, pool, layer, tokens = expected.teacher, expected.pool, expected.layer, expected.tokens
        if self.key.teacher != teacher:
            raise UserError(
                f"{self.folder}: the reference store is from another teacher ({self.key.teacher})"
            )
        if self.key.pool != pool:
            raise UserError(f"{self.folder}: the reference store is for another dataset (its pool differs)")
        if self.key.data != expected.data:
            raise UserError(f"{self.folder}: the reference store's examples were tokenized otherwise")
        if (self.key.layer, self.key.tokens) != (layer, tokens):
            raise UserError(
                f"{self.folder}: the reference store holds teacher layer {self.key.layer}, "
                f"{self.key.tokens} tokens; the student reads layer {layer}, {tokens} tokens"
            )

    # ------------------------------------------------------------------ reading

    def retrieve(self, texts: Sequence[str], rows: Sequence[int | None] | None = None) -> np.ndarray:
        """The reference row of each text (see :meth:`ReferenceIndex.nearest`)."""
        return self.index.nearest(texts, rows)

    def states(
        self, rows: torch.Tensor | Sequence[int], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored states of pool ``rows``: (batch, tokens, hidden) float32, zero-padded, and the mask
        of real tokens (batch, tokens)."""
        r = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows, dtype=np.int64)
        if r.size and (r.min() < 0 or r.max() >= self.examples):
            bad = int(r[(r < 0) | (r >= self.examples)][0])
            raise UserError(f"reference row {bad} is outside the store's {self.examples} examples")
        starts, lengths = self.offsets[r], self.offsets[r + 1] - self.offsets[r]
        width = int(lengths.max(initial=1))
        mask = np.arange(width)[None, :] < lengths[:, None]
        src = (starts[:, None] + np.arange(width)[None, :])[mask]
        out = np.zeros((len(r), width, self.hidden_size), dtype=np.float32)
        out[mask] = self.states_map[src]
        return torch.from_numpy(out).to(device), torch.from_numpy(mask).to(device)

    def lookup(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One input's reference at inference: retrieval, then its stored states and mask."""
        return self.states(self.retrieve([text]).tolist())

    def copy_to(self, folder: Path) -> None:
        """The store's files under ``folder`` (beside a saved student)."""
        shutil.copytree(self.folder, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(USED))


def task_store(
    cache: TeacherCache, texts: Sequence[str], teacher: str, layer: int, tokens: int, root: Path
) -> ReferenceStore:
    """The reference store of a task's training ``texts`` (the pool), built once under ``root`` from the
    fine-tuned teacher's output cache of the same rows, and reused after."""
    key = StoreKey(teacher, pool_fingerprint(texts), str(cache.index["data"]), layer, tokens)
    folder = Path(root) / "references" / key.fingerprint
    if (folder / "store.json").is_file():
        store = ReferenceStore(folder)
        store.check(key)
        return store
    return ReferenceStore.build(folder, cache, ReferenceIndex.build(texts), key)


def example_texts(
    task: GlueTask, split: str, glue_dir: str | Path | None, limit: int | None = None
) -> list[str]:
    """A split's examples as retrieval sees them: the text fields joined by a space, in row order (the
    first ``limit`` rows, as :func:`~distilnas.distill.data.tokenize_split` keeps them)."""
    raw = load_split(task, split, glue_dir)
    if limit is not None and limit < len(raw):
        raw = raw.select(range(limit))
    columns = [raw[f] for f in task.text_fields]
    return [" ".join(parts) for parts in zip(*columns, strict=True)]


def with_references(dataset: Dataset, rows: np.ndarray) -> Dataset:
    """``dataset`` with a ``reference`` column (each example's reference row in the store)."""
    if "reference" in dataset.column_names:
        dataset = dataset.remove_columns("reference")
    return dataset.add_column("reference", [int(r) for r in rows])


def referenced_split(
    store: ReferenceStore, split: TokenizedSplit, glue_dir: str | Path | None, limit: int | None = None
) -> TokenizedSplit:
    """``split`` (its first ``limit`` rows, as tokenized) with a ``reference`` column. When the split is
    the store's pool (the training rows it was built from), each row gets another row of it; any other
    split's inputs get their nearest pool example."""
    texts = example_texts(split.task, split.split, glue_dir, limit)
    if len(texts) != len(split):
        raise UserError(
            f"references: {len(split)} rows of {split.task.name}/{split.split}, {len(texts)} texts"
        )
    own = pool_fingerprint(texts) == store.key.pool
    rows = store.retrieve(texts, rows=range(len(texts)) if own else None)
    return TokenizedSplit(split.task, split.split, with_references(split.dataset, rows))
