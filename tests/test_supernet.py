"""The NAS-BERT supernet: extraction (exact parameter counts, identical outputs, save/load round trips, a
student that distils), progressive shrinking, the latency table, and block training that resumes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
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
)
from distilnas.proxies.latency import LatencyTable, mape, measure_table
from distilnas.search.supernet_blocks import Bins
from distilnas.spaces.nas_space import BlockPath, NasSpace
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
    first = (500 + 40 + 2) * 32 + 2 * 32 + FeedForward.parameters_at(32) + 32 * 96 + 96
    second = (
        96 * 64 + 64 + MultiHeadAttention.parameters_at(64) + SeparableConv5.parameters_at(64) + 64 * 96 + 96
    )
    assert SPACE.params(path) == first + second


def test_extracted_students_have_the_predicted_size_and_the_supernets_outputs() -> None:
    blocks = trained_like_blocks(SPACE)
    states = [b.state_dict() for b in blocks]
    rng = random.Random(0)
    ids = torch.randint(0, 500, (3, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[2, 7:] = False
    for _ in range(25):
        path = SPACE.sample(rng)
        student = extract(SPACE, path, states)
        assert count_parameters(student) == SPACE.params(path)
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
    from distilnas.distill.recipes import with_head

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
    model = with_head(student, teacher_config)
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


def test_bins_halve_by_score_down_to_keep() -> None:
    params = np.arange(12)
    latency = np.arange(12)[::-1].copy()
    bins = Bins.draw(params, latency, bins=2, per_bin=6, rng=random.Random(0))
    assert bins.pools["params0"] == [0, 1, 2, 3, 4, 5] and bins.pools["latency0"] == [6, 7, 8, 9, 10, 11]
    scores = {i: float((i * 7) % 12) for i in range(12)}  # 0:0 1:7 2:2 3:9 4:4 5:11 ...
    bins.shrink(scores, keep=2)
    assert bins.pools["params0"] == [0, 2, 4]  # the better half: ceil(6 / 2)
    bins.shrink(scores, keep=2)
    assert bins.pools["params0"] == [0, 2] and bins.settled(2)
    assert set(bins.members()) == set(bins.pools["params0"]) | set(bins.pools["params1"]) | set(
        bins.pools["latency0"]
    ) | set(bins.pools["latency1"])


def test_latency_prediction_is_the_sum_of_parts() -> None:
    space = NasSpace(2, 96, 1, (32,), vocab_size=500, max_positions=40)
    table = LatencyTable(
        1, 16, 1, "cpu", {"embed@32": 0.5, "in@32": 0.2, "out@32": 0.3, "mha@32": 1.0, "ffn@32": 2.0}
    )
    assert table.predict([BlockPath(32, ("mha", "ffn", "id", "id"))]) == pytest.approx(0.5 + 1.0 + 2.0 + 0.3)
    table.entries["overhead"] = 0.25  # a model's own cost beyond its parts, once per model
    assert table.predict([BlockPath(32, ("mha", "id", "id", "id"))]) == pytest.approx(0.25 + 0.5 + 1.0 + 0.3)
    assert table.block(1, BlockPath(32, ("ffn", "id", "id", "id"))) == pytest.approx(0.2 + 2.0 + 0.3)
    assert mape([1.1, 0.8], [1.0, 1.0]) == pytest.approx(15.0)
    measured = measure_table(space, seq_len=16, repeats=3, warmup=1)
    parts = {f"{p}@32" for p in ("embed", "in", "out", *space.operations)}
    assert set(measured.entries) == parts | {"overhead"} and measured.entries["overhead"] >= 0
    assert all(measured.entries[p] > 0 for p in parts)
    again = LatencyTable.from_json(json.loads(json.dumps(measured.to_json())))
    assert again == measured


# ---------------------------------------------------------------------- block training


@pytest.fixture(scope="module")
def block_setup(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path):  # type: ignore[no-untyped-def]
    from conftest import save_tiny_bert

    from distilnas.distill.config import TeacherConfig
    from distilnas.proxies.block_proxy import prepare_block_proxy
    from distilnas.search.config import SupernetSearchConfig

    tmp = tmp_path_factory.mktemp("blocks")
    teacher = save_tiny_bert(tmp / "teacher", layers=4, hidden=64, heads=2)
    lines = (corpus_dir / "wikisplit" / "tune.tsv").read_text(encoding="utf-8").splitlines()[:160]
    texts = [line.split("\t")[0] for line in lines]
    proxy = prepare_block_proxy(TeacherConfig(name=str(teacher)), texts, 1.0, 32, 32, tmp / "cache", tmp, 0)
    space = NasSpace(4, 64, 2, (32, 64), ("mha", "ffn", "conv3"), vocab_size=30522, max_positions=128)
    settings = SupernetSearchConfig(
        blocks=2,
        hidden_sizes=[32, 64],
        operations=["mha", "ffn", "conv3"],
        batch_size=16,
        lr=1e-3,
        warmup_epochs=1,
        bins=2,
        paths_per_bin=8,
        keep_per_bin=2,
        score_batches=2,
    )
    table = measure_table(space, seq_len=32, repeats=3, warmup=1)
    return proxy, space, settings, table, tmp


def test_block_training_shrinks_and_resumes_where_it_stopped(block_setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from distilnas.search.supernet_blocks import BlockTrainer, BlockWork

    proxy, space, settings, table, tmp = block_setup
    whole = BlockWork(proxy, space, settings, table, str(tmp / "whole"))({"block": 1})
    # the warm-up epoch draws 8 paths per bin; each later epoch scores the bins and halves them (to 4, 2)
    history = whole["history"]
    assert whole["epochs"] == 3 and "drawn" in history[0] and history[1]["scored"] == history[0]["drawn"]
    assert history[2]["scored"] == history[1]["remaining"] >= history[2]["remaining"]
    assert 1 <= len(whole["candidates"]) <= 2 * 2 * settings.bins
    for c in whole["candidates"]:
        assert c["params"] == space.block_params(1, space.block_at(c["index"]))
        assert c["latency_ms"] == pytest.approx(table.block(1, space.block_at(c["index"])))
    assert whole["history"][-1]["train_loss"] < whole["history"][0]["train_loss"]

    real_save = BlockTrainer.save
    work = BlockWork(proxy, space, settings, table, str(tmp / "killed"))
    for kill_at in (1, 2):  # killed after the warm-up epoch (bins just drawn), then after a shrink
        saves = []

        def save_then_die(self, *args, kill_at=kill_at, saves=saves):  # type: ignore[no-untyped-def]
            real_save(self, *args)
            saves.append(1)
            if len(saves) == kill_at:
                raise KeyboardInterrupt  # as if killed right after this epoch's checkpoint

        monkeypatch.setattr(BlockTrainer, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            work({"block": 1})
        assert not (tmp / "killed" / "block2" / "result.json").exists()
    monkeypatch.setattr(BlockTrainer, "save", real_save)
    resumed = work({"block": 1})
    assert resumed["steps"] == whole["steps"] and resumed["epochs"] == 3
    assert [c["index"] for c in resumed["candidates"]] == [c["index"] for c in whole["candidates"]]
    np.testing.assert_allclose(
        [c["loss"] for c in resumed["candidates"]], [c["loss"] for c in whole["candidates"]], rtol=1e-4
    )
    assert work({"block": 1}) == resumed  # finished: read back, never trained again


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
