"""Reference retrieval: the nearest other example by TF-IDF cosine, never the query itself, a saved
index that refuses another pool, and a missing index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distilnas.distill.errors import UserError
from distilnas.proxies.references import ReferenceIndex

POOL = [
    "the cat sat on the mat",
    "a cat sat on a mat today",
    "stock prices fell sharply on monday",
    "the cat sat on the mat",  # a duplicate of row 0
    "markets and stock prices rallied",
]


def test_nearest_other_example_never_the_query_itself() -> None:
    index = ReferenceIndex.build(POOL)
    # training inputs: each query is its own pool row, and its duplicate text is skipped too
    got = index.nearest(POOL, rows=list(range(len(POOL))))
    assert got.tolist() == [1, 0, 4, 1, 2]
    assert all(g != i and POOL[g] != POOL[i] for i, g in enumerate(got))
    # a dev input equal to a pool text does not get that text back either
    assert index.nearest(["the cat sat on the mat"]).tolist() == [1]
    assert index.nearest(["stock prices on monday"]).tolist() == [2]


def test_cosine_matches_a_hand_computation() -> None:
    index = ReferenceIndex.build(POOL)
    q = index.vectorizer.transform(["cat on a mat"]).toarray()[0]
    dense = index.matrix.toarray()
    cos = dense @ q / (np.linalg.norm(dense, axis=1) * np.linalg.norm(q))
    assert index.nearest(["cat on a mat"]).tolist() == [int(np.argmax(cos))]


def test_saved_index_round_trips_and_refuses_another_pool(tmp_path: Path) -> None:
    index = ReferenceIndex.build(POOL)
    index.save(tmp_path / "refs")
    loaded = ReferenceIndex.load(tmp_path / "refs", POOL)
    queries = ["cat on a mat", "prices rallied", "monday"]
    assert loaded.nearest(queries).tolist() == index.nearest(queries).tolist()
    with pytest.raises(UserError, match="for another dataset"):
        ReferenceIndex.load(tmp_path / "refs", [*POOL, "one more"])
    with pytest.raises(UserError, match="no reference index here"):
        ReferenceIndex.load(tmp_path / "missing", POOL)
    with pytest.raises(UserError, match="at least 2 texts"):
        ReferenceIndex.build(["alone"])
