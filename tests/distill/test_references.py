"""Reference students (RefBERT): retrieval of the nearest other example, the store of the teacher's
representations, the student's first layer attending to it, and the errors on a foreign store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TEXTS, reference_pool, referenced_student

from distilnas.distill.errors import UserError
from distilnas.distill.retrieval import ReferenceIndex

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


# ---------------------------------------------------------------------- the store and the student


@pytest.fixture()
def pool(tiny_teacher, tmp_path: Path):  # type: ignore[no-untyped-def]
    return reference_pool(tiny_teacher, tmp_path)


def test_store_holds_the_teachers_layer_for_the_first_tokens(pool) -> None:  # type: ignore[no-untyped-def]
    cache, store = pool
    assert store.examples == len(TEXTS) and store.hidden_size == 64
    states, mask = store.states([2, 0])
    for i, row in enumerate([2, 0]):
        start, end = cache.offsets[row], cache.offsets[row + 1]
        n = min(5, end - start)
        assert mask[i].sum() == n and not mask[i, n:].any()
        expected = torch.from_numpy(np.asarray(cache.hidden[start : start + n, 4], dtype=np.float32))
        assert torch.equal(states[i, :n], expected)
        assert not states[i, n:].any()
    # retrieval over the pool never hands a training row its own example
    got = store.retrieve(TEXTS, rows=range(len(TEXTS)))
    assert all(g != i for i, g in enumerate(got))


def test_a_referenced_students_output_changes_when_its_reference_changes(pool) -> None:  # type: ignore[no-untyped-def]
    from transformers import BertForSequenceClassification

    _, store = pool
    model = referenced_student().attach(store)
    ids = torch.randint(1000, 30000, (2, 9), generator=torch.Generator().manual_seed(0))

    def run(**refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True, **refs)
        return out.hidden_states[-1], out.logits

    a, a_logits = run(reference_ids=torch.tensor([1, 1]))
    b, b_logits = run(reference_ids=torch.tensor([1, 6]))
    assert torch.equal(a, run(reference_ids=torch.tensor([1, 1]))[0])  # deterministic
    assert torch.equal(a[0], b[0])  # the first input kept its reference
    assert (a[1] - b[1]).abs().max() > 1e-2 and not torch.equal(a_logits[1], b_logits[1])
    plain, plain_logits = run()
    assert (a - plain).abs().max() > 1e-2
    # without a reference it is exactly the BERT it was made from
    dense = BertForSequenceClassification(model.config).eval()
    dense.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.allclose(dense(input_ids=ids).logits, plain_logits, atol=1e-6)
    # states given directly equal the stored ones; a masked reference token counts for nothing
    states, mask = store.states([1, 6])
    padded = torch.cat([states, torch.full((2, 1, 64), 100.0)], dim=1)  # one more, masked, token
    direct, _ = run(
        reference_states=padded, reference_mask=torch.cat([mask, torch.zeros(2, 1, dtype=torch.bool)], 1)
    )
    assert torch.allclose(direct, b, atol=1e-5)


def test_the_store_travels_with_the_saved_student(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForSequenceClassification

    _, store = pool
    model = referenced_student().attach(store)
    model.save_pretrained(tmp_path / "student")
    assert (tmp_path / "student" / "references" / "store.json").is_file()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    assert type(loaded).__name__ == "ReferencedBertForSequenceClassification"
    assert loaded.reference_store is not None and loaded.config.reference_store["teacher"] == "tiny"
    ids = torch.randint(1000, 30000, (3, 7), generator=torch.Generator().manual_seed(1))
    refs = torch.tensor(store.retrieve(["a dull film", "prices fell", "funny picture"]))
    with torch.no_grad():
        assert torch.allclose(
            loaded(input_ids=ids, reference_ids=refs).logits,
            model(input_ids=ids, reference_ids=refs).logits,
            atol=1e-6,
        )


def test_a_store_from_another_teacher_or_dataset_is_refused(pool, tiny_teacher, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from distilnas.distill.reference_store import ReferenceStore, task_store

    cache, store = pool
    model = referenced_student().attach(store)
    other_teacher = task_store(cache, TEXTS, "another-teacher", 4, 5, tmp_path / "b")
    with pytest.raises(UserError, match="from another teacher"):
        model.attach(other_teacher)
    other_pool = [*TEXTS[:-1], "a different last example"]
    with pytest.raises(UserError, match="for another dataset"):
        model.attach(task_store(cache, other_pool, "tiny", 4, 5, tmp_path / "c"))
    from helpers import VOCAB

    from distilnas.distill.data import tokenize_texts
    from distilnas.distill.teacher import wordpiece_tokenizer
    from distilnas.distill.teacher_cache import teacher_cache

    short = tokenize_texts(TEXTS, wordpiece_tokenizer(VOCAB), 6)  # the same texts cut at 6 tokens
    short_cache = teacher_cache(tiny_teacher, "tiny", short, 6, ["hidden"], tmp_path / "short")
    with pytest.raises(UserError, match="tokenized otherwise"):
        model.attach(task_store(short_cache, TEXTS, "tiny", 4, 5, tmp_path / "short"))
    with pytest.raises(UserError, match="layer 3"):
        model.attach(task_store(cache, TEXTS, "tiny", 3, 5, tmp_path / "d"))
    with pytest.raises(UserError, match="reference_ids need a reference store"):
        referenced_student()(input_ids=torch.ones((1, 3), dtype=torch.long), reference_ids=torch.tensor([0]))
    copy = tmp_path / "copy"
    shutil.copytree(store.folder, copy)
    shutil.rmtree(copy / "index")
    with pytest.raises(UserError, match="retrieval index"):
        ReferenceStore(copy)
    with pytest.raises(UserError, match="not a teacher layer"):
        task_store(cache, TEXTS, "tiny", 7, 5, tmp_path / "e")


def test_a_checkpoint_is_of_one_store(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A referenced student's distillation checkpoint is not resumed by a plain student of the same
    shape, nor by one with another store."""
    from datasets import Dataset
    from transformers import BertForSequenceClassification

    from distilnas.distill.config import DistillSettings
    from distilnas.distill.distiller import Distiller, LiveTeacher
    from distilnas.distill.reference_store import task_store

    cache, store = pool
    data = Dataset.from_dict(
        {"input_ids": [[101, 102]] * 8, "token_type_ids": [[0, 0]] * 8, "length": [2] * 8}
    )
    teacher = LiveTeacher(BertForSequenceClassification(referenced_student().config))
    settings = DistillSettings(losses={"prediction_ce": 1.0}, steps=1)

    def key(model) -> str:  # type: ignore[no-untyped-def]
        return Distiller(model, teacher, [(2, 2)], settings).run_key(data)  # type: ignore[arg-type]

    plain = BertForSequenceClassification(referenced_student().config)
    other = task_store(cache, TEXTS, "tiny", 4, 7, tmp_path / "other")
    keys = {key(plain), key(referenced_student().attach(store)), key(referenced_student().attach(other))}
    assert len(keys) == 3
    assert key(referenced_student().attach(store)) == key(referenced_student().attach(store))


def test_retrieval_in_chunks_equals_the_dense_argmax(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunking the queries bounds memory and changes no answer (ties included)."""
    import distilnas.distill.retrieval as retrieval

    pool = [*POOL, *TEXTS, "the cat", "a mat", "stock", "the film was a delight"]
    index = ReferenceIndex.build(pool)
    queries = [*pool, "cats and mats", "a film about stock prices", "zzz unknown words"]
    rows = [*range(len(pool)), None, None, None]
    dense = (index.vectorizer.transform(queries) @ index.matrix.T).toarray()
    for q, (text, row) in enumerate(zip(queries, rows, strict=True)):
        banned = [i for i, t in enumerate(pool) if t == text] + ([row] if row is not None else [])
        dense[q, banned] = -np.inf
    expected = np.argmax(dense, axis=1)
    for values in (len(pool), 3 * len(pool), 1 << 23):  # one query a chunk, three, all at once
        monkeypatch.setattr(retrieval, "CHUNK_VALUES", values)
        assert index.nearest(queries, rows).tolist() == expected.tolist()
