"""The registry of student kinds: every kind is recognised from its spec and from its built model, builds,
gets a task head carrying its encoder's weights, names itself, keeps its checkpoints apart from a plain
student's, refuses what it cannot serve, and round-trips as a record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

from distilnas.distill.config import StudentConfig
from distilnas.distill.errors import UserError
from distilnas.distill.measure import count_parameters
from distilnas.distill.nas_bert import NasBertConfig, NasBertModel
from distilnas.distill.students import KINDS, StudentRecord, StudentSpec, kind_of, kind_of_model, student_spec

TEACHER = BertConfig(
    vocab_size=30522, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128
)


def nas_folder(tmp: Path) -> Path:
    """A saved NAS-BERT student (two blocks), as the supernet search saves its front."""
    torch.manual_seed(0)
    blocks = [{"hidden": 32, "ops": ["ffn", "mha"]}, {"hidden": 64, "ops": ["conv3"]}]
    config = NasBertConfig(
        blocks=blocks, hidden_size=64, vocab_size=30522, path="p", teacher_boundaries=[2, 4]
    )
    NasBertModel(config).save_pretrained(tmp / "nas")
    return tmp / "nas"


def spec_of(kind: str, tmp: Path) -> StudentSpec:
    return {
        "plain": StudentSpec(2, 32, 2, 64),
        "kronecker": StudentSpec(2, 32, 2, 64, kronecker={"attention": {"a": [4, 4], "b": [8, 8]}}),
        "referenced": StudentSpec(2, 32, 2, 64, references={"teacher_layer": 4, "tokens": 5}),
        "factorised": StudentSpec(2, 32, 2, 64, embedding=8),
        "nas-bert": StudentSpec(2, 64, 1, 256, nas={"path": "p", "folder": str(nas_folder(tmp))}),
    }[kind]


def test_every_kind_is_covered() -> None:
    assert set(KINDS) == {"plain", "kronecker", "referenced", "factorised", "nas-bert"}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_kind_builds_heads_and_names_itself(name: str, tiny_teacher: BertModel, tmp_path: Path) -> None:
    spec = spec_of(name, tmp_path)
    kind = kind_of(spec)
    assert kind is KINDS[name] and spec.kind is kind
    encoder = kind.build(spec, tiny_teacher, "random" if name != "nas-bert" else "supernet", seed=0)
    # a referenced student is a plain BERT until its task stages give it references
    assert kind_of_model(encoder) is (KINDS["plain"] if name == "referenced" else kind)
    head = kind_of_model(encoder).with_head(encoder, BertConfig(id2label={0: "no", 1: "yes", 2: "maybe"}))
    assert head.config.num_labels == 3 and head.config.id2label[2] == "maybe"
    assert all(torch.equal(v, head.base_model.state_dict()[k]) for k, v in encoder.state_dict().items())
    ids = torch.randint(1000, 2000, (2, 7))
    assert head(input_ids=ids).logits.shape == (2, 3)
    assert spec.name.startswith(f"{spec.layers}L-{spec.hidden}") and spec.name.endswith(kind.suffix)
    record = StudentRecord(f"{spec.name}_x", spec, "random", "2,4/4", ["uniform"])
    assert StudentRecord.from_json(record.to_json()) == record
    assert list(record.to_json()) == [
        "name", "layers", "hidden", "heads", "intermediate", "init", "mapping", "origin",
        "embedding", "kronecker", "references", "nas",
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(set(KINDS) - {"nas-bert"}))
def test_each_bert_kind_builds_its_deployed_form_from_the_config_alone(name: str, tmp_path: Path) -> None:
    spec = spec_of(name, tmp_path)
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    plain = count_parameters(BertModel(BertConfig(**{**TEACHER.to_dict(), **shape})))
    deployed = count_parameters(spec.kind.random_encoder(spec, TEACHER))
    expected = {
        "plain": plain,
        "kronecker": plain - 2 * 4 * (32 * 32 - (4 * 4 + 8 * 8)),  # four 32x32 maps per layer, factored
        "referenced": plain + 64 * 32 + 32,  # the projection from the teacher's width
        "factorised": plain - 30522 * 32 + (30522 + 32) * 8,  # a vocab x 8 table and an 8 x 32 projection
    }
    assert deployed == expected[name]


def test_checkpoints_and_timings_of_each_kind_are_their_own(tiny_teacher: BertModel, tmp_path: Path) -> None:
    from distilnas.distill.reference_store import ReferenceStore  # noqa: F401  (a referenced config's store key)

    keys, shapes = set(), set()
    for name in sorted(KINDS):
        spec = spec_of(name, tmp_path)
        model = spec.kind.build(spec, tiny_teacher, "random" if name != "nas-bert" else "supernet", seed=0)
        options = kind_of_model(model).checkpoint_options(model.config)
        keys.add(repr(sorted(options.items())))
        shapes.add(spec.kind.shape_key(StudentRecord(f"s-{name}", spec, "random", "2,4/4")))
    assert len(shapes) == len(KINDS)  # no two kinds share a timing
    assert "[]" in keys and len(keys) >= 3  # plain has no options; Kronecker and NAS students have theirs


def test_a_nas_student_refuses_what_it_cannot_serve_and_keeps_what_it_can(tmp_path: Path) -> None:
    kind = KINDS["nas-bert"]
    kind.check_losses({"hidden_mse": 1.0, "prediction_ce": 1.0}, [(1, 2), (2, 4)])
    with pytest.raises(UserError, match=r"not \['attention_mse'\]"):
        kind.check_losses({"hidden_mse": 1.0, "attention_mse": 1.0}, [(1, 2)])
    with pytest.raises(UserError, match="the embeddings"):
        kind.check_losses({"hidden_mse": 1.0}, [(0, 0), (1, 2)])
    assert kind.settings({"hidden_mse": 2.0, "minilm_relation": 1.0}) == {"hidden_mse": 2.0}
    assert kind.settings({"attention_mse": 1.0}) == {"hidden_mse": 1.0}  # nothing it can serve: block MSE
    for other in ("plain", "kronecker", "referenced", "factorised"):
        KINDS[other].check_losses({"attention_mse": 1.0, "minilm_relation": 1.0}, [(0, 0), (1, 2)])
    loaded = AutoModel.from_pretrained(nas_folder(tmp_path))
    assert kind_of_model(loaded) is kind


def test_student_spec_follows_the_teacher_and_checks_each_kinds_options() -> None:
    spec = student_spec(StudentConfig(layers=2, hidden=32), TEACHER)
    assert (spec.heads, spec.intermediate, spec.kind.name) == (2, 64, "plain")  # head size 16, FFN 2x
    refs = student_spec(StudentConfig(layers=2, references={"tokens": 4}), TEACHER)
    assert refs.references == {"teacher_layer": 4, "tokens": 4} and refs.name == "2L-64-ref"  # the last layer
    with pytest.raises(UserError, match=r"references\.teacher_layer: 9 is not a teacher layer"):
        student_spec(StudentConfig(layers=2, references={"teacher_layer": 9}), TEACHER)
    with pytest.raises(UserError, match=r"distill\.student\.kronecker\.attention: factors"):
        student_spec(StudentConfig(layers=2, kronecker={"attention": {"a": [3, 3], "b": [8, 8]}}), TEACHER)
    assert KINDS["referenced"].proxy_form(refs).kind.name == "plain"  # proxies distil the plain student
    factorised = student_spec(StudentConfig(layers=2, hidden=32, embedding=8), TEACHER)
    assert (factorised.embedding, factorised.name, factorised.kind.name) == (8, "2L-32-e8", "factorised")
    with pytest.raises(UserError, match=r"distill\.student\.embedding: 32 is not between 0 and the hidden"):
        student_spec(StudentConfig(layers=2, hidden=32, embedding=32), TEACHER)
    with pytest.raises(ValueError, match="kronecker and embedding cannot be combined"):
        StudentConfig(layers=2, embedding=8, kronecker={"attention": {"a": [4, 4], "b": [16, 16]}})
