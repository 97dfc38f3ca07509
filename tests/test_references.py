"""Reference students (RefBERT): retrieval of the nearest other example, the store of the teacher's
representations, the student's first layer attending to it, and the errors on a foreign store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distilnas.distill.errors import UserError
from distilnas.distill.references import ReferenceIndex

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

TEXTS = [
    "the film was a delight from start to finish",
    "a dull and lifeless film",
    "the cast is wonderful and the story moves",
    "i could not wait for it to end",
    "stock prices fell sharply on monday",
    "the market rallied after the report",
    "a warm , funny and moving picture",
    "the plot makes no sense at all",
]


@pytest.fixture()
def pool(tiny_teacher, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The tiny teacher's output cache on TEXTS, and its reference store (last layer, 5 tokens)."""
    from conftest import VOCAB

    from distilnas.distill.data import tokenize_texts
    from distilnas.distill.references import task_store
    from distilnas.distill.teacher import wordpiece_tokenizer
    from distilnas.distill.teacher_cache import teacher_cache

    data = tokenize_texts(TEXTS, wordpiece_tokenizer(VOCAB), 32)
    cache = teacher_cache(tiny_teacher, "tiny", data, 32, ["hidden"], tmp_path)
    return cache, task_store(cache, TEXTS, "tiny", 4, 5, tmp_path)


def referenced_student(width: int = 64):  # type: ignore[no-untyped-def]
    from transformers import BertConfig, BertForSequenceClassification

    from distilnas.distill.references import referenced

    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(3)
    model = referenced(BertForSequenceClassification(cfg), width, layer=4, tokens=5).eval()
    with torch.no_grad():  # a visible reference: the projection's BERT initialisation is small
        model.bert.reference_projection.weight.normal_(0, 0.5)
    return model


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

    from distilnas.distill.references import ReferenceStore, task_store

    cache, store = pool
    model = referenced_student().attach(store)
    other_teacher = task_store(cache, TEXTS, "another-teacher", 4, 5, tmp_path / "b")
    with pytest.raises(UserError, match="from another teacher"):
        model.attach(other_teacher)
    other_pool = [*TEXTS[:-1], "a different last example"]
    with pytest.raises(UserError, match="for another dataset"):
        model.attach(task_store(cache, other_pool, "tiny", 4, 5, tmp_path / "c"))
    from conftest import VOCAB

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


def test_inspect_a_saved_referenced_student_counts_its_store_and_retrieval(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from distilnas.search.inspect_student import inspect

    _, store = pool
    referenced_student().attach(store).save_pretrained(tmp_path / "student")
    out = inspect(tmp_path / "student", measure=True, seq_len=16, repeats=5)
    assert out["student"].startswith("referenced 2L-32")
    assert out["parameters"] == count_bert(32, 64, 2) + 64 * 32 + 32  # the encoder and its projection
    refs = out["reference_store"]
    assert refs["examples"] == len(TEXTS) and refs["bytes"] == store.bytes
    assert refs["values"] == int(store.offsets[-1]) * 64
    assert out["retrieval"]["queries"] == len(TEXTS) and out["retrieval"]["ms"] > 0
    assert out["latency_with_retrieval_ms"] == pytest.approx(out["latency"]["ms"] + out["retrieval"]["ms"])


def count_bert(h: int, f: int, layers: int, vocab: int = 30522, positions: int = 512) -> int:
    layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
    return (vocab + positions + 2) * h + 2 * h + layers * layer + h * h + h


def test_a_saved_student_with_a_foreign_or_broken_store_is_one_line_and_exit_2(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import os
    import shutil
    import subprocess
    import sys

    from distilnas.distill.references import task_store

    cache, store = pool
    folder = tmp_path / "student"
    referenced_student().attach(store).save_pretrained(folder)
    other = task_store(cache, TEXTS, "another-teacher", 4, 5, tmp_path / "other")

    def inspect() -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        cmd = [sys.executable, "-m", "distilnas", "inspect", str(folder), "--seq-len", "8"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

    shutil.rmtree(folder / "references")
    shutil.copytree(other.folder, folder / "references")  # another teacher's store beside the weights
    proc = inspect()
    assert proc.returncode == 2 and "from another teacher" in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1
    shutil.rmtree(folder / "references" / "index")
    proc = inspect()
    assert proc.returncode == 2 and "retrieval index (index/) is missing" in proc.stderr, proc.stderr[-2000:]


def test_a_checkpoint_is_of_one_store(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A referenced student's distillation checkpoint is not resumed by a plain student of the same
    shape, nor by one with another store."""
    from transformers import BertForSequenceClassification

    from distilnas.distill.config import DistillSettings
    from distilnas.distill.distiller import Distiller, LiveTeacher
    from distilnas.distill.references import task_store

    cache, store = pool
    data = [0] * 8
    teacher = LiveTeacher(BertForSequenceClassification(referenced_student().config))
    settings = DistillSettings(losses={"prediction_ce": 1.0}, steps=1)

    def key(model) -> str:  # type: ignore[no-untyped-def]
        return Distiller(model, teacher, [(2, 2)], settings).run_key(data)  # type: ignore[arg-type]

    plain = BertForSequenceClassification(referenced_student().config)
    other = task_store(cache, TEXTS, "tiny", 4, 7, tmp_path / "other")
    keys = {key(plain), key(referenced_student().attach(store)), key(referenced_student().attach(other))}
    assert len(keys) == 3
    assert key(referenced_student().attach(store)) == key(referenced_student().attach(store))
