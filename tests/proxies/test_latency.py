"""The latency table of deployed NAS-BERT students: a path's prediction is the sum of its parts and the
bridges between its blocks plus the model's overhead, every part is measured, and the table round-trips
through JSON."""

from __future__ import annotations

import json

import pytest

from distilnas.proxies.latency import LatencyTable, mape, measure_table
from distilnas.spaces.nas_space import BlockPath, NasSpace


def test_latency_prediction_is_the_sum_of_parts() -> None:
    space = NasSpace(2, 96, 2, (32, 64), vocab_size=500, max_positions=40)
    entries = {"embed@32": 0.5, "mha@32": 1.0, "ffn@32": 2.0, "ffn@64": 3.0, "bridge@32-64": 0.2}
    table = LatencyTable(1, 16, 1, "cpu", entries)
    one = [BlockPath(32, ("mha", "ffn")), BlockPath(64, ("ffn", "id"))]
    assert table.predict(one) == pytest.approx(0.5 + 1.0 + 2.0 + 0.2 + 3.0)  # nothing at the teacher's width
    table.entries["overhead"] = 0.25  # a model's own cost beyond its parts, once per model
    assert table.predict(one) == pytest.approx(0.25 + 0.5 + 1.0 + 2.0 + 0.2 + 3.0)
    assert table.block(1, BlockPath(64, ("ffn", "id"))) == pytest.approx(3.0)  # the bridge is the path's
    assert mape([1.1, 0.8], [1.0, 1.0]) == pytest.approx(15.0)
    measured = measure_table(space, seq_len=16, repeats=3, warmup=1)
    parts = {f"{p}@{h}" for p in ("embed", *space.operations) for h in (32, 64)}
    parts |= {f"bridge@{a}-{b}" for a in (32, 64) for b in (32, 64)}
    assert set(measured.entries) == parts | {"overhead"} and measured.entries["overhead"] >= 0
    assert all(measured.entries[p] > 0 for p in parts)
    again = LatencyTable.from_json(json.loads(json.dumps(measured.to_json())))
    assert again == measured
