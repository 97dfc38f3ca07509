"""`distilnas inspect STUDENT.yaml`: parameters, FLOPs and latency of a plain, a Kronecker, a referenced and
a supernet student, built from a short file; bad files are one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def inspect(tmp: Path, body: str, *extra: str) -> subprocess.CompletedProcess[str]:
    from conftest import save_tiny_bert

    teacher = tmp / "teacher"
    if not teacher.is_dir():
        save_tiny_bert(teacher, layers=4, hidden=64, heads=2)
    f = tmp / "student.yaml"
    f.write_text(f"teacher: {teacher}\n{body}\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "distilnas", "inspect", str(f), "--seq-len", "16", "--json", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_plain_kronecker_and_supernet_students(tmp_path: Path) -> None:
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
def test_bad_student_files(tmp_path: Path, body: str, message: str) -> None:
    proc = inspect(tmp_path, body)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
