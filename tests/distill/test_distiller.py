"""The distiller: it learns, it resumes exactly, task distillation runs both stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertModel

from distilnas.distill.bert import BertShape, build_student
from distilnas.distill.config import DistillSettings, TaskDistillConfig
from distilnas.distill.distiller import CachedTeacher, Distiller, LiveTeacher, distill_task
from distilnas.distill.errors import UserError
from distilnas.distill.teacher_cache import teacher_cache

PAIRS = [(0, 0), (1, 2), (2, 4)]
SETTINGS = DistillSettings(
    losses={"embedding_mse": 1, "hidden_mse": 1, "minilm_relation": 1},
    steps=12,
    batch_size=16,
    lr=1e-3,
    relation_heads=4,
    checkpoint_every=4,
    seed=5,
)


def student(teacher: BertModel) -> torch.nn.Module:
    return build_student(BertShape(2, 32, 2, 64), teacher, "random", seed=2)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_distillation_lowers_the_loss(tiny_teacher, sentences) -> None:  # type: ignore[no-untyped-def]
    s = student(tiny_teacher)
    d = Distiller(s, LiveTeacher(tiny_teacher), PAIRS, SETTINGS.model_copy(update={"steps": 30}))
    rows = list(range(32))
    from distilnas.distill.data import collate

    batch = collate([sentences[i] for i in rows])
    before = d.loss(rows, batch)[0].item()
    result = d.fit(sentences)
    assert result.steps == 30 and result.resumed_from == 0
    s.eval()
    assert d.loss(rows, batch)[0].item() < 0.8 * before


@pytest.mark.parametrize("updates", ["dense", "rows"])
def test_resume_equals_uninterrupted(tiny_teacher, sentences, tmp_path: Path, updates: str) -> None:  # type: ignore[no-untyped-def]
    settings = SETTINGS.model_copy(update={"embedding_updates": updates})
    cache = teacher_cache(tiny_teacher, "tiny", sentences, 32, ["hidden", "qkv"], tmp_path / "cache")
    teacher = CachedTeacher(cache)
    full = student(tiny_teacher)
    Distiller(full, teacher, PAIRS, settings).fit(sentences, tmp_path / "a")

    killed = student(tiny_teacher)
    first = Distiller(killed, teacher, PAIRS, settings).fit(sentences, tmp_path / "b", stop_after=6)
    assert first.steps == 6  # stopped between checkpoints: steps 5 and 6 are lost, as in a kill
    resumed = student(tiny_teacher)  # a fresh process: new student, new optimizer
    result = Distiller(resumed, teacher, PAIRS, settings).fit(sentences, tmp_path / "b")
    assert result.resumed_from == 4 and result.steps == 12
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # spanning an epoch boundary (96 rows / 16 = 6 batches per epoch) changed nothing either
    again = student(tiny_teacher)
    done = Distiller(again, teacher, PAIRS, settings).fit(sentences, tmp_path / "b")
    assert done.resumed_from == 12 and all(torch.equal(a[k], v) for k, v in weights(again).items())


def test_checkpoint_of_another_run_is_refused(tiny_teacher, sentences, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    Distiller(
        student(tiny_teacher), LiveTeacher(tiny_teacher), PAIRS, SETTINGS.model_copy(update={"steps": 4})
    ).fit(sentences, tmp_path)
    other = Distiller(
        student(tiny_teacher), LiveTeacher(tiny_teacher), PAIRS, SETTINGS.model_copy(update={"lr": 1e-4})
    )
    with pytest.raises(UserError, match="checkpoint of another run"):
        other.fit(sentences, tmp_path)


def test_bad_settings_are_refused(tiny_teacher) -> None:  # type: ignore[no-untyped-def]
    s = student(tiny_teacher)
    with pytest.raises(UserError, match="relation_heads 3 must divide"):
        Distiller(s, LiveTeacher(tiny_teacher), PAIRS, SETTINGS.model_copy(update={"relation_heads": 3}))
    with pytest.raises(UserError, match="equal head counts"):
        Distiller(s, LiveTeacher(tiny_teacher), PAIRS, DistillSettings(losses={"attention_mse": 1}))
    with pytest.raises(ValueError, match="unknown loss 'hidden_mae'"):
        DistillSettings(losses={"hidden_mae": 1})


def test_task_distillation_two_stages(tiny_teacher, glue_dir: Path, vocab: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import BertForSequenceClassification

    from distilnas.distill.data import tokenize_split
    from distilnas.distill.glue import get_task
    from distilnas.distill.teacher import wordpiece_tokenizer

    task = get_task("rte")
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_teacher.config)
    teacher.bert.load_state_dict(tiny_teacher.state_dict())
    data = tokenize_split(task, "train", wordpiece_tokenizer(vocab), 32, glue_dir, tmp_path, limit=48).dataset
    cache = teacher_cache(teacher, "tiny-rte", data, 32, ["hidden", "qkv", "logits"], tmp_path)
    assert cache.logits is not None and cache.logits.shape == (48, 2)
    s = build_student(BertShape(2, 64, 4, 128), teacher, "copy", layer_sources=[2, 4], num_labels=2)
    config = TaskDistillConfig(
        intermediate=DistillSettings(
            losses={"embedding_mse": 1, "hidden_mse": 1, "attention_mse": 1}, steps=3, batch_size=16
        ),
        prediction=DistillSettings(losses={"prediction_ce": 1}, steps=3, batch_size=16),
    )
    results = distill_task(s, CachedTeacher(cache), data, PAIRS, config, checkpoint_dir=tmp_path / "ck")
    assert results["intermediate"].steps == 3 and results["prediction"].steps == 3
    assert set(results["intermediate"].parts) == {"embedding_mse", "hidden_mse", "attention_mse"}
    assert (tmp_path / "ck" / "prediction" / "weights.safetensors").is_file()
