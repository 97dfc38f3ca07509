"""The BERT latency table: with a timer whose milliseconds are a model's parameters (exactly linear in
depth, as the table assumes), every prediction — dense or factorised, at any depth — equals the student's
figure; the real timer times every model in every round and puts the threads back; the table
round-trips through JSON and names its reference student."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import BertConfig

from distilnas.distill.bert import BertShape
from distilnas.distill.config import LatencyConfig
from distilnas.distill.measure import count_parameters, round_robin
from distilnas.proxies import bert_latency
from distilnas.proxies.bert_latency import (
    BertLatencyTable,
    measure_bert_table,
    plain_encoder,
    reference_encoders,
)

TEACHER = BertConfig(
    vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
    max_position_embeddings=64,
)  # fmt: skip
WIDTHS = [(32, 2, 64), (64, 4, 128), (64, 4, 64)]
TABLES = [(64, 8), (64, 16), (32, 8)]


def test_predictions_are_exact_for_a_timer_linear_in_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def params_as_ms(
        models: list[nn.Module], latency: LatencyConfig, rounds: int = 5, desc: str = ""
    ) -> list:
        seen.append(len(models))
        return [count_parameters(m) / 1e3 for m in models]

    monkeypatch.setattr(bert_latency, "round_robin", params_as_ms)
    table = measure_bert_table(WIDTHS, TEACHER, LatencyConfig(), tables=TABLES)
    assert seen == [2 * len(WIDTHS) + len(TABLES)]  # every model in one set of rounds
    for h, k, f in WIDTHS:
        for layers in (1, 2, 5):
            for e in (None, *[e for w, e in TABLES if w == h]):
                shape = BertShape(layers, h, k, f, embedding=e)
                assert table.predict(shape) == pytest.approx(shape.parameters(TEACHER) / 1e3)
    # a factorised table saves what it saves in parameters: (vocab x h) - (vocab + h) x E
    assert table.tables["64-e8"] == pytest.approx(-(1000 * 64 - (1000 + 64) * 8) / 1e3)
    again = BertLatencyTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again == table
    # references: the three-layer students of widths spread over the table (all three of three here)
    assert [r["student"] for r in table.references] == ["32-2-64", "64-4-64", "64-4-128"]
    references = reference_encoders(table, TEACHER)
    assert [count_parameters(m) / 1e3 for m in references] == [r["ms"] for r in table.references]
    then = [r["ms"] for r in table.references]
    assert table.drift(then) == 1.0 and table.drift([1.2 * t for t in then]) == pytest.approx(1.2)
    assert table.drift([then[0] * 5, then[1] * 1.1, then[2]]) == pytest.approx(1.1)  # the median: one burst


def test_round_robin_times_every_model_and_restores_the_threads() -> None:
    before = torch.get_num_threads()
    models = [
        plain_encoder(BertShape(1, 32, 2, 64), TEACHER),
        plain_encoder(BertShape(2, 64, 4, 128), TEACHER),
    ]
    ms = round_robin(models, LatencyConfig(seq_len=16, repeats=3, threads=1), rounds=2)
    assert len(ms) == 2 and all(t > 0 for t in ms)
    assert torch.get_num_threads() == before
