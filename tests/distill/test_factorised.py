"""The factorised word embedding: its truncated SVD reproduces the table it replaces within the SVD's
error (the norm of the singular values it leaves out, and no other rank-E factorisation does better), the
model it makes equals a dense BERT with that table, its parameters are counted exactly, it round-trips
through save_pretrained/from_pretrained, and sizes that cannot be are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertModel

from distilnas.distill.bert import BertShape, bert_config
from distilnas.distill.errors import UserError
from distilnas.distill.factorised import FactorisedBertModel, FactorisedEmbedding, factorised
from distilnas.distill.measure import count_parameters
from distilnas.distill.students import StudentSpec, kind_of_model


def test_truncated_svd_reproduces_the_table_within_its_error() -> None:
    torch.manual_seed(0)
    dense = torch.nn.Embedding(500, 48)
    singular = torch.linalg.svdvals(dense.weight.detach().double())
    for size in (1, 8, 24, 47):
        emb = FactorisedEmbedding.from_embedding(dense, size)
        error = torch.linalg.norm(dense.weight.double() - emb.weight.detach().double())
        assert error.item() == pytest.approx(singular[size:].square().sum().sqrt().item(), rel=1e-5)
        assert emb.table.weight.shape == (500, size) and emb.projection.weight.shape == (48, size)
        # Eckart-Young: keeping the table's own first columns through the best projection does worse
        cols = dense.weight.detach().double()[:, :size]
        lstsq = cols @ torch.linalg.lstsq(cols, dense.weight.detach().double()).solution
        assert error <= torch.linalg.norm(dense.weight.double() - lstsq) + 1e-9
    # a table of rank E is reproduced exactly
    low = torch.nn.Embedding(500, 48)
    with torch.no_grad():
        low.weight.copy_(torch.randn(500, 6) @ torch.randn(6, 48))
    assert torch.allclose(FactorisedEmbedding.from_embedding(low, 6).weight, low.weight, atol=1e-4)
    ids = torch.tensor([[3, 7, 499]])
    assert torch.allclose(FactorisedEmbedding.from_embedding(low, 6)(ids), low(ids), atol=1e-4)


def test_the_factorised_bert_equals_a_dense_one_with_its_table(tiny_teacher: BertModel) -> None:
    torch.manual_seed(0)
    dense = BertModel(bert_config(BertShape(2, 64, 4, 128), tiny_teacher.config)).eval()
    model = factorised(dense, 16).eval()
    assert isinstance(model, FactorisedBertModel) and kind_of_model(model).name == "factorised"
    same = BertModel(dense.config).eval()
    state = {k: v for k, v in model.state_dict().items() if "word_embeddings" not in k}
    same.load_state_dict(state, strict=False)
    with torch.no_grad():
        same.embeddings.word_embeddings.weight.copy_(model.embeddings.word_embeddings.weight)
    ids = torch.randint(0, 30522, (2, 9))
    assert torch.allclose(
        model(input_ids=ids).last_hidden_state, same(input_ids=ids).last_hidden_state, atol=1e-5
    )


def test_parameters_are_counted_exactly(tiny_teacher: BertModel) -> None:
    for shape in (BertShape(2, 64, 4, 128, embedding=16), BertShape(1, 32, 2, 64, embedding=4)):
        built = StudentSpec(
            shape.layers, shape.hidden, shape.heads, shape.intermediate, embedding=shape.embedding
        )
        model = built.kind.random_encoder(built, tiny_teacher.config)
        assert count_parameters(model) == shape.parameters(tiny_teacher.config)
        v, h, e = 30522, shape.hidden, shape.embedding
        dense = BertShape(shape.layers, shape.hidden, shape.heads, shape.intermediate)
        assert (
            dense.parameters(tiny_teacher.config) - shape.parameters(tiny_teacher.config)
            == v * h - (v + h) * e
        )


def test_an_extracted_student_factorises_its_extracted_table(tiny_teacher: BertModel, tmp_path: Path) -> None:
    spec = StudentSpec(2, 32, 2, 64, embedding=8)
    model = spec.kind.build(spec, tiny_teacher, "extract", [2, 4], seed=0)
    plain = StudentSpec(2, 32, 2, 64)
    dense = plain.kind.build(plain, tiny_teacher, "extract", [2, 4], seed=0)
    table = dense.embeddings.word_embeddings.weight.detach().double()
    error = torch.linalg.norm(table - model.embeddings.word_embeddings.weight.detach().double())
    assert error.item() == pytest.approx(
        torch.linalg.svdvals(table)[8:].square().sum().sqrt().item(), rel=1e-5
    )
    # the encoder layers are the extracted ones
    assert torch.equal(model.encoder.layer[1].output.dense.weight, dense.encoder.layer[1].output.dense.weight)

    model.save_pretrained(tmp_path / "encoder")
    loaded = AutoModel.from_pretrained(tmp_path / "encoder")
    assert isinstance(loaded, FactorisedBertModel) and loaded.config.embedding_size == 8
    ids = torch.randint(0, 30522, (1, 5))
    assert torch.allclose(
        loaded.eval()(input_ids=ids).last_hidden_state, model.eval()(input_ids=ids).last_hidden_state
    )
    head = kind_of_model(model).with_head(model, BertConfig(id2label={0: "no", 1: "yes"}))
    head.save_pretrained(tmp_path / "task")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "task").eval()
    assert torch.allclose(again(input_ids=ids).logits, head.eval()(input_ids=ids).logits)


def test_sizes_that_cannot_be_are_refused() -> None:
    with pytest.raises(UserError, match="embedding size: 64 is not between 0 and the hidden size 64"):
        BertShape(2, 64, 4, 128, embedding=64)
    with pytest.raises(UserError, match="embedding: 0 is not between"):
        FactorisedEmbedding(100, 0, 64)
