"""Retrieval for reference students (RefBERT): the most similar *other* example of a pool by TF-IDF cosine.

The index never returns the query itself: the caller names the pool row a query comes from (training
inputs), and a pool text identical to the query is skipped as well (dev and test inputs that repeat a
training sentence). It is saved with its pool's fingerprint; an altered or foreign index is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from distilnas.distill.errors import UserError
from distilnas.distill.utils import atomic_dir, fingerprint

CHUNK_VALUES = 1 << 23
"""Scores held at once by :meth:`ReferenceIndex.nearest` (64 MB of float64)."""


def pool_fingerprint(texts: Sequence[str]) -> str:
    return fingerprint("reference-pool-v1", list(texts))


class ReferenceIndex:
    """TF-IDF vectors of a pool of texts (rows L2-normalised, so a dot product is the cosine)."""

    def __init__(self, vectorizer: TfidfVectorizer, matrix: sp.csr_matrix, texts: Sequence[str]) -> None:
        self.vectorizer, self.matrix, self.texts = vectorizer, matrix, list(texts)
        self.fingerprint = pool_fingerprint(self.texts)
        self.rows_of: dict[str, list[int]] = {}  # text -> its pool rows (duplicates are never returned)
        for i, t in enumerate(self.texts):
            self.rows_of.setdefault(t, []).append(i)

    @classmethod
    def build(cls, texts: Sequence[str]) -> ReferenceIndex:
        if len(texts) < 2:
            raise UserError("references: a pool needs at least 2 texts (a query never gets itself back)")
        vectorizer = TfidfVectorizer(sublinear_tf=True, lowercase=True)
        matrix = vectorizer.fit_transform(texts).tocsr()
        return cls(vectorizer, matrix, texts)

    def nearest(self, queries: Sequence[str], rows: Sequence[int | None] | None = None) -> np.ndarray:
        """The pool row most similar to each query, never the query's own ``rows[i]`` nor a pool text
        equal to it. Ties go to the lower row.

        Exact, in chunks of queries: a chunk's scores against the whole pool are at most ``CHUNK_VALUES``
        numbers, so memory stays bounded whatever the number of queries."""
        rows = list(rows) if rows is not None else [None] * len(queries)
        if len(rows) != len(queries):
            raise ValueError(f"{len(queries)} queries, {len(rows)} rows")
        out = np.empty(len(queries), dtype=np.int64)
        step = max(1, CHUNK_VALUES // max(len(self.texts), 1))
        for start in range(0, len(queries), step):
            chunk = list(queries[start : start + step])
            scores = (self.vectorizer.transform(chunk) @ self.matrix.T).toarray()
            for q, (text, row) in enumerate(zip(chunk, rows[start : start + step], strict=True)):
                banned = set(self.rows_of.get(text, []))
                if row is not None:
                    banned.add(int(row))
                if len(banned) >= len(self.texts):
                    raise UserError("references: every pool text equals the query; no other example to use")
                scores[q, list(banned)] = -np.inf
            out[start : start + len(chunk)] = np.argmax(scores, axis=1)
        return out

    # ------------------------------------------------------------------ storage

    def save(self, folder: Path) -> None:
        with atomic_dir(folder) as tmp:
            sp.save_npz(tmp / "matrix.npz", self.matrix)
            meta = {
                "fingerprint": self.fingerprint,
                "vocabulary": {k: int(v) for k, v in self.vectorizer.vocabulary_.items()},
                "idf": self.vectorizer.idf_.tolist(),
                "texts": self.texts,
            }
            (tmp / "index.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: Path, texts: Sequence[str] | None = None) -> ReferenceIndex:
        """The index saved in ``folder`` (for the pool ``texts`` when given: another pool's is refused)."""
        meta_file = folder / "index.json"
        if not meta_file.is_file() or not (folder / "matrix.npz").is_file():
            raise UserError(f"{folder}: no reference index here (build it first)")
        meta = json.loads(meta_file.read_text())
        if texts is not None and meta["fingerprint"] != pool_fingerprint(texts):
            raise UserError(f"{folder}: the reference index is for another dataset (fingerprint differs)")
        if pool_fingerprint(meta["texts"]) != meta["fingerprint"]:
            raise UserError(f"{folder}: the reference index's texts do not match its fingerprint (altered)")
        vectorizer = TfidfVectorizer(sublinear_tf=True, lowercase=True, vocabulary=meta["vocabulary"])
        vectorizer.idf_ = np.asarray(meta["idf"])
        return cls(vectorizer, sp.load_npz(folder / "matrix.npz").tocsr(), meta["texts"])
