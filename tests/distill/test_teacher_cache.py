"""The teacher-output cache: equal to the live teacher, never stale, rebuilt when damaged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertModel

from distilnas.distill.bert import BertShape, build_student
from distilnas.distill.config import DistillSettings
from distilnas.distill.data import collate
from distilnas.distill.distiller import CachedTeacher, Distiller, LiveTeacher
from distilnas.distill.errors import UserError
from distilnas.distill.teacher_cache import TeacherCache, teacher_cache

FIELDS = ["hidden", "qkv"]


class Counting:
    """Counts the teacher's forward passes."""

    def __init__(self, model: BertModel) -> None:
        self.calls = 0
        model.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def counter(tiny_teacher: BertModel) -> Counting:
    return Counting(tiny_teacher)


def test_cache_matches_live_teacher_and_loss(tiny_teacher, sentences, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cache = teacher_cache(tiny_teacher, "tiny", sentences, 32, FIELDS, tmp_path)
    assert cache.examples == len(sentences)
    tokens = int(np.sum(sentences["length"]))
    expected = tokens * (5 * 64 + 4 * 3 * 64) * 2 + (len(sentences) + 1) * 8
    assert cache.bytes_per_example == pytest.approx(expected / len(sentences))
    spec = BertShape(2, 32, 2, 64)
    student = build_student(spec, tiny_teacher, "extract", layer_sources=[2, 4]).eval()
    settings = DistillSettings(
        losses={"embedding_mse": 1, "hidden_mse": 1, "minilm_relation": 1, "hidden_cosine": 1},
        relation_heads=4,
        precision="fp32",  # a live teacher in bf16 is a precision's difference (test_step_speed.py)
    )
    pairs = [(0, 0), (1, 2), (2, 4)]
    live = Distiller(student, LiveTeacher(tiny_teacher), pairs, settings)
    cached = Distiller(student, CachedTeacher(cache), pairs, settings, projections=live.projections)
    for rows in ([0, 5, 9, 40], list(range(60, 92))):
        batch = collate([sentences[i] for i in rows])
        lv, lparts = live.loss(rows, batch)
        cv, cparts = cached.loss(rows, batch)
        assert cv.item() == pytest.approx(lv.item(), rel=2e-3)
        assert cparts == pytest.approx(lparts, rel=5e-3)
    # fixed-length padding gives the same loss as dynamic padding
    rows = [3, 4]
    padded = collate([sentences[i] for i in rows], pad_to=32)
    assert cached.loss(rows, padded)[0].item() == pytest.approx(
        cached.loss(rows, collate([sentences[i] for i in rows]))[0].item(), rel=1e-5
    )


def test_warm_cache_never_runs_the_teacher(
    tiny_teacher, counter: Counting, sentences, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    teacher_cache(tiny_teacher, "tiny", sentences, 32, FIELDS, tmp_path)
    before = counter.calls
    cache = teacher_cache(tiny_teacher, "tiny", sentences, 32, FIELDS, tmp_path)
    student = build_student(BertShape(2, 32, 2, 64), tiny_teacher)
    d = Distiller(student, CachedTeacher(cache), [(0, 0), (2, 4)], DistillSettings(steps=3, batch_size=16))
    d.fit(sentences)
    assert counter.calls == before


@pytest.mark.parametrize("damage", ["truncate", "flip", "index"])
def test_damaged_cache_is_rebuilt(
    tiny_teacher, counter: Counting, sentences, tmp_path: Path, damage: str
) -> None:  # type: ignore[no-untyped-def]
    first = teacher_cache(tiny_teacher, "tiny", sentences, 32, ["hidden"], tmp_path)
    reference = np.array(first.hidden)
    f = first.path / "hidden.f16"
    if damage == "truncate":
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size - 100)
    elif damage == "flip":
        data = bytearray(f.read_bytes())
        data[1234] ^= 0xFF
        f.write_bytes(bytes(data))
    else:
        (first.path / "index.json").write_text("{broken")
    before = counter.calls
    again = teacher_cache(tiny_teacher, "tiny", sentences, 32, ["hidden"], tmp_path)
    assert counter.calls > before  # the teacher ran again
    assert np.array_equal(np.array(again.hidden), reference)


def test_cache_of_other_settings_is_refused(tiny_teacher, sentences, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = teacher_cache(tiny_teacher, "tiny", sentences, 32, ["hidden"], tmp_path)
    b = teacher_cache(tiny_teacher, "other-teacher", sentences, 32, ["hidden"], tmp_path)
    assert a.path != b.path  # another teacher never reads this cache
    with pytest.raises(UserError, match="another teacher, data or settings"):
        TeacherCache(a.path, expected_fingerprint=b.fingerprint)
    with pytest.raises(UserError, match="unknown fields"):
        teacher_cache(tiny_teacher, "tiny", sentences, 32, ["attention"], tmp_path)


def test_views_are_unpadded_copies(tiny_teacher, sentences, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cache = teacher_cache(tiny_teacher, "tiny", sentences, 32, ["hidden"], tmp_path)
    rows = [7, 2]
    batch = collate([sentences[i] for i in rows])
    with torch.no_grad():
        ref = tiny_teacher(**batch, output_hidden_states=True).hidden_states
    v = cache.views(rows, batch["input_ids"].shape[1], hidden_layers=[0, 3])
    mask = batch["attention_mask"].bool()
    for layer in (0, 3):
        assert torch.allclose(v.hidden[layer][mask], ref[layer][mask], atol=1e-2, rtol=1e-2)
        assert (v.hidden[layer][~mask] == 0).all()
