"""The supernet's proxy setting: a seeded corpus sample, tokenized, with the teacher's hidden states at
every layer cached once (block trials read its boundaries and never run the teacher).

The sample's last rows are held out: progressive shrinking and inherited-weight scoring rank paths on
them, and block training never sees them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, load_from_disk

from distilnas.distill.artifacts import Shelf
from distilnas.distill.config import TeacherConfig
from distilnas.distill.corpus import sample_fraction
from distilnas.distill.data import PackedRows, tokenized_texts
from distilnas.distill.errors import UserError
from distilnas.distill.teacher import load_encoder, load_tokenizer, resolve
from distilnas.distill.teacher_cache import TeacherCache, reopened, teacher_cache
from distilnas.distill.utils import atomic_write_json


@dataclass
class BlockProxy:
    """Paths and settings only (cheap to ship to Ray workers)."""

    teacher: str
    corpus_data: str
    corpus_cache: str
    corpus_fingerprint: str
    texts: int
    held_out: int
    """The last ``held_out`` rows: scoring only."""
    max_length: int
    pad_id: int
    seed: int
    shelf: str = ""
    """The run storage's copies of the cache folders trials read (a cluster run), or "" (one machine)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def cache_root(self) -> Path:
        return Path(self.corpus_cache).parent.parent  # <cache_dir>/teacher-outputs/<fingerprint>

    def corpus(self) -> Dataset:
        """The tokenized sample, from this node's cache (copied there from the shelf where it lacks it)."""
        if self.shelf:
            Shelf(self.shelf, str(self.cache_root)).fetch(self.corpus_data)
        return load_from_disk(self.corpus_data)

    def cache(self) -> TeacherCache:
        """The teacher's hidden states on the sample: built where this node lacks them, rebuilt when found
        damaged (once per node, under its lock)."""

        def rebuild() -> TeacherCache:
            source = resolve(self.teacher)
            encoder = load_encoder(source)
            return teacher_cache(
                encoder, source.identity(), self.corpus(), self.max_length, ["hidden"], self.cache_root
            )

        return reopened(self.corpus_cache, self.corpus_fingerprint, rebuild)

    def rows(self) -> PackedRows:
        return PackedRows(self.corpus())

    @property
    def train_rows(self) -> np.ndarray:
        return np.arange(self.texts - self.held_out)

    def score_batches(self, batch_size: int, n: int) -> list[list[int]]:
        """The held-out rows as ``n`` fixed batches (the same for every path and every epoch)."""
        rows = np.arange(self.texts - self.held_out, self.texts)
        return [rows[i : i + batch_size].tolist() for i in range(0, n * batch_size, batch_size)]


def prepare_block_proxy(
    teacher: TeacherConfig,
    texts: list[str],
    fraction: float,
    max_length: int,
    held_out: int,
    cache_dir: Path,
    out_dir: Path,
    seed: int,
    shelf: str | None = None,
) -> BlockProxy:
    """Sample and tokenize the corpus, cache the teacher's hidden states on it; paths are absolute.
    ``shelf``: a folder of the run storage to publish the sample to (a cluster run)."""
    cache_dir, out_dir = cache_dir.resolve(), out_dir.resolve()
    source = resolve(teacher.name)
    encoder, tok = load_encoder(source), load_tokenizer(source)
    sample = sample_fraction(texts, fraction, seed)
    if len(sample) <= 2 * held_out:
        raise UserError(
            f"search.supernet.corpus_fraction: {len(sample)} texts leave too few to train on beside the "
            f"{held_out} held out for scoring"
        )
    corpus, data = tokenized_texts(sample, tok, max_length, cache_dir)
    cache = teacher_cache(encoder, source.identity(), corpus, max_length, ["hidden"], cache_dir)
    proxy = BlockProxy(
        teacher=str(Path(source.location).resolve()) if Path(source.location).exists() else source.location,
        corpus_data=str(data),
        corpus_cache=str(cache.path),
        corpus_fingerprint=cache.fingerprint,
        texts=len(sample),
        held_out=held_out,
        max_length=max_length,
        pad_id=int(tok.pad_token_id or 0),
        seed=seed,
        shelf=shelf or "",
    )
    if shelf is not None:
        Shelf(shelf, str(cache_dir)).publish(data)
    atomic_write_json(out_dir / "proxy.json", proxy.to_json())
    return proxy
