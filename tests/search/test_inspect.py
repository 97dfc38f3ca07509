"""`distilnas inspect STUDENT.yaml`: parameters, FLOPs and latency of a plain, a Kronecker, a referenced and
a supernet student, built from a short file; bad files are one line and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import TEXTS, reference_pool, referenced_student, save_tiny_bert

from distilnas.search.inspect import inspect as inspect_student


@pytest.fixture()
def inspect(cli):  # type: ignore[no-untyped-def]
    def run(tmp: Path, body: str, *extra: str):  # type: ignore[no-untyped-def]
        teacher = tmp / "teacher"
        if not teacher.is_dir():
            save_tiny_bert(teacher, layers=4, hidden=64, heads=2)
        f = tmp / "student.yaml"
        f.write_text(f"teacher: {teacher}\n{body}\n")
        return cli("inspect", f, "--seq-len", "16", "--json", *extra)

    return run


def test_plain_kronecker_and_supernet_students(tmp_path: Path, inspect) -> None:  # type: ignore[no-untyped-def]
    plain = inspect(tmp_path, "student: {layers: 2, hidden: 64, heads: 2, intermediate: 128}", "--measure")
    assert plain.returncode == 0, plain.stderr[-2000:]
    p = json.loads(plain.stdout)
    h, f, v = 64, 128, 30522
    layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
    embeddings = (v + 128 + 2) * h + 2 * h
    assert p["embedding_parameters"] == v * h
    assert p["parameters"] == embeddings + 2 * layer + h * h + h  # and the pooler
    assert p["flops"] > 0 and p["latency"]["ms"] > 0 and p["student"] == "bert 2L-64"

    kron = inspect(
        tmp_path,
        "student: {layers: 2, hidden: 64, heads: 2, intermediate: 128, "
        "kronecker: {attention: {a: [8, 8], b: [8, 8]}, embedding: {b: [1, 4]}}}",
    )
    assert kron.returncode == 0, kron.stderr[-2000:]
    k = json.loads(kron.stdout)
    attention_saved = 2 * 4 * (h * h - 2 * 64)  # per map: 64x64 dense -> two 8x8 factors
    assert k["parameters"] == p["parameters"] - attention_saved - (v * h - (v * 16 + 4))
    assert k["student"] == "kronecker 2L-64-kron"

    fact = inspect(tmp_path, "student: {layers: 2, hidden: 64, heads: 2, intermediate: 128, embedding: 16}")
    assert fact.returncode == 0, fact.stderr[-2000:]
    e = json.loads(fact.stdout)
    assert e["embedding_parameters"] == v * 16 + 16 * h  # a vocab x 16 table and a 16 x 64 projection
    assert (
        e["parameters"] == p["parameters"] - v * h + (v + h) * 16 and e["student"] == "factorised 2L-64-e16"
    )

    ref = inspect(
        tmp_path, "student: {layers: 2, hidden: 64, heads: 2, intermediate: 128, references: {tokens: 8}}"
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    r = json.loads(ref.stdout)
    assert r["parameters"] == p["parameters"] + 64 * h + h  # the projection from the teacher's width
    assert r["reference_store"] == {
        "tokens": 8,
        "teacher_layer": 4,
        "values_per_example": 8 * 64,
        "bytes_per_example": 2 * 8 * 64,
    }
    assert r["flops"] > p["flops"]  # the first layer's keys and values cover 8 more tokens
    assert r["student"] == "referenced 2L-64-ref"

    nas = inspect(tmp_path, 'nas: {path: "32:mha,ffn,id,id|64:conv3,id,id,id"}')
    assert nas.returncode == 0, nas.stderr[-2000:]
    from distilnas.spaces.nas_space import NasSpace

    space = NasSpace(4, 64, 2, (32, 64), vocab_size=v, max_positions=128)
    assert json.loads(nas.stdout)["parameters"] == space.params(
        space.parse("32:mha,ffn,id,id|64:conv3,id,id,id")
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('nas: {path: "32:mha,id,ffn,id|64:conv3,id,id,id"}', "identity only ends a block"),
        (
            "student: {layers: 2}\nnas: {path: '32:ffn,id,id,id|32:ffn,id,id,id'}",
            "exactly one of `student`",
        ),
        (
            "student: {layers: 2, kronecker: {ffn_in: {a: [3, 2], b: [8, 8]}}}",
            "kronecker.ffn_in: factors 3x2",
        ),
        ("student: {layers: 2, references: {teacher_layer: 9}}", "references.teacher_layer: 9 is not"),
        (
            "student: {layers: 2, references: {}, kronecker: {attention: {a: [8, 8], b: [8, 8]}}}",
            "kronecker and references cannot be combined",
        ),
    ],
)
def test_bad_student_files(tmp_path: Path, body: str, message: str, inspect) -> None:  # type: ignore[no-untyped-def]
    proc = inspect(tmp_path, body)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


@pytest.fixture()
def pool(tiny_teacher, tmp_path: Path):  # type: ignore[no-untyped-def]
    return reference_pool(tiny_teacher, tmp_path)


def test_inspect_a_saved_referenced_student_counts_its_store_and_retrieval(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, store = pool
    referenced_student().attach(store).save_pretrained(tmp_path / "student")
    out = inspect_student(tmp_path / "student", measure=True, seq_len=16, repeats=5)
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


def test_a_saved_student_with_a_foreign_or_broken_store_is_one_line_and_exit_2(
    pool, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    from distilnas.distill.reference_store import task_store

    cache, store = pool
    folder = tmp_path / "student"
    referenced_student().attach(store).save_pretrained(folder)
    other = task_store(cache, TEXTS, "another-teacher", 4, 5, tmp_path / "other")

    def inspect():  # type: ignore[no-untyped-def]
        return cli("inspect", folder, "--seq-len", "8")

    shutil.rmtree(folder / "references")
    shutil.copytree(other.folder, folder / "references")  # another teacher's store beside the weights
    proc = inspect()
    assert proc.returncode == 2 and "from another teacher" in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1
    shutil.rmtree(folder / "references" / "index")
    proc = inspect()
    assert proc.returncode == 2 and "retrieval index (index/) is missing" in proc.stderr, proc.stderr[-2000:]
