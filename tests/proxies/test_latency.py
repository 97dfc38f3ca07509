"""The latency table of NAS-BERT students: a path's prediction is the sum of its parts plus the model's
overhead, every part is measured, and the table round-trips through JSON."""

from __future__ import annotations

import json

import pytest

from distilnas.proxies.latency import LatencyTable, mape, measure_table
from distilnas.spaces.nas_space import BlockPath, NasSpace


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
