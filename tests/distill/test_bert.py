"""BERT students: shapes, copy and extract initialisation, importance."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification, BertModel

from distilnas.distill.bert import BertShape, build_student, importance
from distilnas.distill.data import collate
from distilnas.distill.errors import UserError


def test_spec_like_teacher(tiny_teacher: BertModel) -> None:
    spec = BertShape.like(tiny_teacher.config, layers=2, hidden=32)
    assert spec == BertShape(2, 32, 2, 64)  # head size 16 and FFN ratio 2 kept
    with pytest.raises(UserError, match="not a multiple"):
        BertShape(2, 30, 4, 64)


def test_random_student_is_a_real_bert(tiny_teacher: BertModel) -> None:
    s = build_student(BertShape(2, 32, 2, 64), tiny_teacher, num_labels=3)
    assert isinstance(s, BertForSequenceClassification)
    assert s.config.num_labels == 3 and s.config.vocab_size == 30522
    out = s(input_ids=torch.tensor([[101, 2000, 102]]))
    assert out.logits.shape == (1, 3)


def test_copy_takes_the_mapped_teacher_layers(tiny_teacher: BertModel) -> None:
    s = build_student(BertShape.like(tiny_teacher.config, 2), tiny_teacher, "copy", layer_sources=[2, 4])
    t_sd, s_sd = tiny_teacher.state_dict(), s.state_dict()
    for k, v in s_sd.items():
        if k.startswith("encoder.layer.0."):
            assert torch.equal(v, t_sd[k.replace("layer.0.", "layer.1.")]), k
        elif k.startswith("encoder.layer.1."):
            assert torch.equal(v, t_sd[k.replace("layer.1.", "layer.3.")]), k
        else:
            assert torch.equal(v, t_sd[k]), k  # embeddings and pooler
    uniform = build_student(BertShape.like(tiny_teacher.config, 2), tiny_teacher, "copy")
    assert torch.equal(
        uniform.encoder.layer[0].output.dense.weight, tiny_teacher.encoder.layer[1].output.dense.weight
    )


def test_copy_and_extract_refuse_wider_students(tiny_teacher: BertModel) -> None:
    with pytest.raises(UserError, match="wider than its teacher"):
        build_student(BertShape(2, 128, 8, 256), tiny_teacher, "copy")
    with pytest.raises(UserError, match="use 'extract'"):
        build_student(BertShape(2, 32, 2, 64), tiny_teacher, "copy")
    with pytest.raises(UserError, match="head size"):
        build_student(BertShape(2, 32, 4, 64), tiny_teacher, "extract")


def test_extract_slices_the_most_important_units(tiny_teacher: BertModel, sentences) -> None:  # type: ignore[no-untyped-def]
    batches = [collate([sentences[i] for i in range(b, b + 16)]) for b in (0, 16)]
    implementation = tiny_teacher.config._attn_implementation
    heads, neurons = importance(tiny_teacher, batches)
    assert heads.shape == (4, 4) and neurons.shape == (4, 128) and (heads >= 0).all() and heads.sum() > 0
    spec = BertShape(2, 32, 2, 64)
    s = build_student(spec, tiny_teacher, "extract", layer_sources=[1, 4], importance_batches=batches)
    hid = torch.sort(
        torch.topk(tiny_teacher.embeddings.word_embeddings.weight.norm(dim=0), 32).indices
    ).values
    assert torch.equal(
        s.embeddings.word_embeddings.weight, tiny_teacher.embeddings.word_embeddings.weight[:, hid]
    )
    kept_heads = torch.sort(torch.topk(heads[3], 2).indices).values
    units = (kept_heads[:, None] * 16 + torch.arange(16)).reshape(-1)
    t_q = tiny_teacher.encoder.layer[3].attention.self.query.weight
    assert torch.equal(s.encoder.layer[1].attention.self.query.weight, t_q[units][:, hid])
    kept = torch.sort(torch.topk(neurons[0], 64).indices).values
    t_in = tiny_teacher.encoder.layer[0].intermediate.dense
    assert torch.equal(s.encoder.layer[0].intermediate.dense.weight, t_in.weight[kept][:, hid])
    assert torch.equal(s.encoder.layer[0].intermediate.dense.bias, t_in.bias[kept])
    # the teacher is left as it was
    assert tiny_teacher.config._attn_implementation == implementation
