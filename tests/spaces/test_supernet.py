"""The NAS-BERT supernet: extraction (exact parameter counts, identical outputs, save/load round trips, a
student that distils and the losses it refuses), its initialisation, and spaces that cannot be built."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from distilnas.distill.measure import count_parameters
from distilnas.distill.nas_bert import (
    FeedForward,
    MultiHeadAttention,
    NasBertForSequenceClassification,
    NasBertModel,
    NasBlock,
    SeparableConv5,
    deployed,
)
from distilnas.distill.students import serving_encoder
from distilnas.distill.teacher import ModelSource
from distilnas.spaces.nas_space import NasSpace
from distilnas.spaces.supernet import extract, principal_directions, supernet_block

SPACE = NasSpace(4, 96, 2, (32, 64, 96), vocab_size=500, max_positions=40)


def trained_like_blocks(space: NasSpace, seed: int = 0) -> list[NasBlock]:
    """Supernet blocks with every tensor random (biases and norms too), so no slice is trivially equal."""
    torch.manual_seed(seed)
    blocks = [supernet_block(space, i).eval() for i in range(space.blocks)]
    with torch.no_grad():
        for b in blocks:
            for p in b.parameters():
                p.normal_(0, 0.2)
    return blocks


def test_parameter_formulas_by_hand() -> None:
    assert MultiHeadAttention.parameters_at(64) == 4 * (64 * 64 + 64) + 2 * 64
    assert FeedForward.parameters_at(64) == 64 * 256 + 256 + 256 * 64 + 64 + 2 * 64
    assert SeparableConv5.parameters_at(64) == 5 * 64 + 64 + 64 * 64 + 64 + 2 * 64
    path = SPACE.parse("32:ffn,id,id,id|64:mha,conv5,id,id")
    # deployed: the embeddings and operations, and one 32 -> 64 bridge; nothing at the teacher's width (96)
    first = (500 + 40 + 2) * 32 + 2 * 32 + FeedForward.parameters_at(32)
    bridge = 32 * 64 + 64
    second = MultiHeadAttention.parameters_at(64) + SeparableConv5.parameters_at(64)
    assert SPACE.params(path) == first + bridge + second
    # the distillation form has each block's projections from and to the teacher's width instead
    extracted = extract(SPACE, path, [supernet_block(SPACE, i).state_dict() for i in range(2)])
    projections = (32 * 96 + 96) + (96 * 64 + 64) + (64 * 96 + 96)
    assert count_parameters(extracted) == first + second + projections
    assert count_parameters(deployed(extracted)) == SPACE.params(path)


def test_extracted_students_have_the_predicted_size_and_the_supernets_outputs() -> None:
    blocks = trained_like_blocks(SPACE)
    states = [b.state_dict() for b in blocks]
    rng = random.Random(0)
    ids = torch.randint(0, 500, (3, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[2, 7:] = False
    for _ in range(25):
        path = SPACE.sample_path(rng)
        student = extract(SPACE, path, states)
        assert count_parameters(deployed(student)) == SPACE.params(path)
        x: torch.Tensor = ids
        expected = []
        with torch.no_grad():
            for block, bp in zip(blocks, path, strict=True):
                x = block(x, mask, bp.hidden, bp.ops)
                expected.append(x)
            got = student(ids, mask.long(), output_hidden_states=True).hidden_states
        assert got[0].shape[-1] == path[0].hidden and len(got) == SPACE.blocks + 1
        for e, g in zip(expected, got[1:], strict=True):
            torch.testing.assert_close(g[mask], e[mask], rtol=1e-5, atol=1e-5)


def test_extraction_round_trips_through_save_and_load(tmp_path: Path) -> None:
    path = SPACE.parse("64:mha,ffn,conv3,id|32:conv7,id,id,id")
    student = extract(SPACE, path, [b.state_dict() for b in trained_like_blocks(SPACE)])
    student.save_pretrained(tmp_path / "s")
    loaded = AutoModel.from_pretrained(tmp_path / "s").eval()
    assert type(loaded) is NasBertModel and loaded.config.path == NasSpace.format(path)
    ids = torch.randint(0, 500, (2, 9))
    with torch.no_grad():
        assert torch.equal(student(ids).last_hidden_state, loaded(ids).last_hidden_state)
    head = AutoModelForSequenceClassification.from_pretrained(tmp_path / "s", num_labels=3)
    assert type(head) is NasBertForSequenceClassification
    for name, tensor in student.state_dict().items():
        assert torch.equal(head.nas_bert.state_dict()[name], tensor)
    assert head(ids).logits.shape == (2, 3)


def test_a_nas_student_distils_and_fine_tunes_like_any_student(tiny_teacher, sentences) -> None:  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    from distilnas.distill.config import DistillSettings
    from distilnas.distill.data import collate
    from distilnas.distill.distiller import Distiller, LiveTeacher
    from distilnas.distill.students import kind_of_model

    space = NasSpace(4, 64, 2, (32, 64), vocab_size=30522, max_positions=64)
    path = space.parse("32:ffn,mha,id,id|64:conv3,ffn,id,id")
    student = extract(space, path, [supernet_block(space, i).state_dict() for i in range(2)])
    pairs = list(enumerate(space.boundaries(), start=1))  # block b's output <-> teacher layer 2b
    settings = DistillSettings(losses={"hidden_mse": 1.0}, steps=30, batch_size=16, lr=3e-3)
    distiller = Distiller(student, LiveTeacher(tiny_teacher), pairs, settings)
    rows = list(range(16))
    batch = collate([sentences[i] for i in rows])
    before = float(distiller.loss(rows, batch)[0].detach())
    result = distiller.fit(sentences, desc="nas")
    after = float(distiller.loss(rows, batch)[0].detach())
    assert result.steps == 30 and after < 0.7 * before
    teacher_config = BertConfig(num_labels=2, id2label={0: "no", 1: "yes"})
    model = kind_of_model(student).with_head(student, teacher_config)
    assert type(model) is NasBertForSequenceClassification and model.config.id2label[1] == "yes"
    out = model(**batch, labels=torch.ones(16, dtype=torch.long))
    out.loss.backward()
    assert model.nas_bert.blocks[0].inp.word.weight.grad is not None


def test_principal_directions_recover_a_known_basis() -> None:
    torch.manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(6, 6))
    scales = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.1])
    x = (torch.randn(4000, 6) * scales) @ basis.T + 3.0
    mean, directions = principal_directions(x)
    torch.testing.assert_close(mean, torch.full((6,), 3.0), atol=0.5, rtol=0)
    for k in range(3):  # the leading directions, up to sign
        assert abs(float(directions[:, k] @ basis[:, k])) > 0.99


@pytest.mark.parametrize(
    ("sizes", "ops", "message"),
    [
        ((64, 64), ("mha",), "hidden_sizes: [64, 64] repeats a value"),
        ((64,), ("ffn", "ffn"), "operations: ['ffn', 'ffn'] repeats a value"),
        ((100, 200), ("mha", "ffn"), "hidden_sizes: [200] do not split into"),
    ],
)
def test_spaces_that_cannot_be_built_are_refused(sizes: tuple, ops: tuple, message: str) -> None:
    from distilnas.distill.errors import UserError

    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        NasSpace(6, 384, 3, sizes, ops)


def test_a_nas_student_refuses_losses_it_cannot_serve(tiny_teacher) -> None:  # type: ignore[no-untyped-def]
    from distilnas.distill.config import DistillSettings
    from distilnas.distill.distiller import Distiller, LiveTeacher
    from distilnas.distill.errors import UserError

    space = NasSpace(4, 64, 2, (32, 64), vocab_size=30522, max_positions=64)
    student = extract(
        space,
        space.parse("32:ffn,id,id,id|64:ffn,id,id,id"),
        [supernet_block(space, i).state_dict() for i in range(2)],
    )
    settings = DistillSettings(losses={"hidden_mse": 1.0, "attention_mse": 1.0})
    with pytest.raises(UserError, match="not \\['attention_mse'\\]"):
        Distiller(student, LiveTeacher(tiny_teacher), [(1, 2), (2, 4)], settings)


def test_the_deployed_student_computes_what_the_distilled_one_does(tmp_path: Path) -> None:
    """Fusing each block's output projection with the next one's input projection (and the last with the
    pooler) changes no logit beyond fp32 rounding; block states are the distilled ones before their
    projection; the deployed form round-trips through save_pretrained and the Auto classes."""
    path = SPACE.parse("64:mha,ffn,conv3,id|32:conv7,ffn,id,id")
    encoder = extract(SPACE, path, [b.state_dict() for b in trained_like_blocks(SPACE)])
    encoder.save_pretrained(tmp_path / "distilled")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "distilled", num_labels=3).eval()
    with torch.no_grad():
        for p in (model.pooler.weight, model.pooler.bias, model.classifier.weight):
            p.normal_(0, 0.2)
    fused = deployed(model)
    assert fused.config.form == "deployed" and model.config.form == "distillation"
    assert count_parameters(fused.nas_bert) == SPACE.params(path) < count_parameters(model.nas_bert)
    ids = torch.randint(0, 500, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        want = model(ids, mask, output_hidden_states=True)
        got = fused(ids, mask, output_hidden_states=True)
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-5)
        for b, block in enumerate(model.nas_bert.blocks, start=1):
            assert got.hidden_states[b].shape[-1] == path[b - 1].hidden
            torch.testing.assert_close(
                block.out(got.hidden_states[b]), want.hidden_states[b], atol=1e-5, rtol=0
            )
        fused.save_pretrained(tmp_path / "deployed")
        loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "deployed").eval()
        assert type(loaded) is NasBertForSequenceClassification and loaded.config.form == "deployed"
        assert torch.equal(loaded(ids, mask).logits, got.logits)
        encoder_only = AutoModel.from_pretrained(tmp_path / "deployed")
        assert type(encoder_only) is NasBertModel and encoder_only.blocks[1].out is None
    assert deployed(fused) is fused  # already deployed
    # `distilnas latency` and the final stage time a saved distillation-form folder as it is served
    saved = str(tmp_path / "distilled")
    served = serving_encoder(ModelSource(saved, saved, True, True))
    assert served.config.form == "deployed" and count_parameters(served) == SPACE.params(path)
    half = deployed(model.to(torch.bfloat16))  # the fused maps keep the model's dtype
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_a_hand_designed_bert_is_a_path_of_the_space() -> None:
    """A TinyBERT-style student (attention then feed-forward, one width) is found in the space, cut over
    the blocks, and its extracted deployed form has the plain BERT's parameters plus one bridge."""
    from transformers import BertConfig, BertModel

    from distilnas.distill.errors import UserError

    for layers, hidden in ((2, 64), (3, 96), (1, 32)):
        path = SPACE.parse(f"{layers}L-{hidden}")
        chain = [op for block in path for op in block.ops if op != "id"]
        assert chain == ["mha", "ffn"] * layers and {b.hidden for b in path} == {hidden}
        plain = BertModel(
            BertConfig(
                vocab_size=500, max_position_embeddings=40, type_vocab_size=2, hidden_size=hidden,
                num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                intermediate_size=4 * hidden,
            ),
            add_pooling_layer=False,
        )  # fmt: skip
        bridge = hidden * hidden + hidden  # between the two blocks, at the one width
        assert SPACE.params(path) == count_parameters(plain) + bridge
        student = extract(SPACE, path, [b.state_dict() for b in trained_like_blocks(SPACE)])
        assert count_parameters(deployed(student)) == SPACE.params(path)
    assert NasSpace.format(SPACE.parse("3L-96")) == "96:mha,ffn,mha,id|96:ffn,mha,ffn,id"
    for bad, why in (("5L-64", "do not fill 2 blocks"), ("2L-48", "hidden size 48 not in")):
        with pytest.raises(UserError, match=why):
            SPACE.parse(bad)
    with pytest.raises(UserError, match="lack mha"):
        NasSpace(4, 96, 2, (32,), operations=("ffn", "conv3")).bert_path(2, 32)
