"""Reference retrieval for RefBERT-style students: for each input, the most similar *other* example of a
pool (a task's training set), by TF-IDF cosine similarity.

The index is built once per pool and saved beside its fingerprint (the pool's texts, in order); opening
it for another pool is an error, never a silent mismatch. A query never gets itself back: the caller
names the pool row a query comes from (training inputs), and a pool text identical to the query is
skipped as well (dev and test inputs that repeat a training sentence).

This is the first part of #6's reference students; the references' teacher representations and the
student's extra keys and values build on it.
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


def pool_fingerprint(texts: Sequence[str]) -> str:
    return fingerprint("reference-pool-v1", list(texts))


class ReferenceIndex:
    """TF-IDF vectors of a pool of texts (rows L2-normalised, so a dot product is the cosine)."""

    def __init__(self, vectorizer: TfidfVectorizer, matrix: sp.csr_matrix, texts: Sequence[str]) -> None:
        self.vectorizer, self.matrix, self.texts = vectorizer, matrix, list(texts)
        self.fingerprint = pool_fingerprint(self.texts)

    @classmethod
    def build(cls, texts: Sequence[str]) -> ReferenceIndex:
        if len(texts) < 2:
            raise UserError("references: a pool needs at least 2 texts (a query never gets itself back)")
        vectorizer = TfidfVectorizer(sublinear_tf=True, lowercase=True)
        matrix = vectorizer.fit_transform(texts).tocsr()
        return cls(vectorizer, matrix, texts)

    def nearest(self, queries: Sequence[str], rows: Sequence[int | None] | None = None) -> np.ndarray:
        """The pool row most similar to each query, never the query's own ``rows[i]`` nor a pool text
        equal to it. Ties go to the lower row."""
        rows = rows if rows is not None else [None] * len(queries)
        scores = (self.vectorizer.transform(queries) @ self.matrix.T).toarray()
        by_text: dict[str, list[int]] = {}
        for i, t in enumerate(self.texts):
            by_text.setdefault(t, []).append(i)
        for q, (text, row) in enumerate(zip(queries, rows, strict=True)):
            banned = set(by_text.get(text, []))
            if row is not None:
                banned.add(int(row))
            if len(banned) >= len(self.texts):
                raise UserError("references: every pool text equals the query; no other example to use")
            scores[q, list(banned)] = -np.inf
        return np.argmax(scores, axis=1)

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
    def load(cls, folder: Path, texts: Sequence[str]) -> ReferenceIndex:
        """The index saved in ``folder``, for the pool ``texts``; another pool's index is refused."""
        meta_file = folder / "index.json"
        if not meta_file.is_file() or not (folder / "matrix.npz").is_file():
            raise UserError(f"{folder}: no reference index here (build it first)")
        meta = json.loads(meta_file.read_text())
        if meta["fingerprint"] != pool_fingerprint(texts):
            raise UserError(f"{folder}: the reference index is for another dataset (fingerprint differs)")
        vectorizer = TfidfVectorizer(sublinear_tf=True, lowercase=True, vocabulary=meta["vocabulary"])
        vectorizer.idf_ = np.asarray(meta["idf"])
        return cls(vectorizer, sp.load_npz(folder / "matrix.npz").tocsr(), meta["texts"])
