"""A latency table for plain BERT students, measured on this device at ``final.latency``'s setting.

For each (width, heads, FFN size) a student can have, the encoder the final stage times (transformers'
``BertModel``, SDPA attention, random weights) is timed at one and at three layers, every model in each
of five rounds (a shared machine's bursts and drift fall on all of them alike; medians): a layer
costs half the difference, and what one layer leaves is the width's base (embeddings, pooler, the
model's own overhead). A factorised word-embedding table (width E) is timed as a one-layer student
beside the same student with the dense table: the difference is what it adds (or saves). A student's
predicted latency is its base plus its depth times its layer, plus its table's difference.

The table reports its own error against whole students measured afterwards
(:func:`~distilnas.proxies.latency.mape`), timed in rounds beside the table's reference students: their
median ratio to their times in the table is the machine's drift in between, which a prediction is
corrected by when it is compared (the search itself needs no correction: drift scales every student).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import BertModel, PretrainedConfig

from distilnas.distill.bert import BertShape, bert_config
from distilnas.distill.config import LatencyConfig
from distilnas.distill.factorised import factorised
from distilnas.distill.measure import device_name, round_robin, serving_device

Width = tuple[int, int, int]
"""(hidden, heads, intermediate)"""


def plain_encoder(shape: BertShape, teacher: PretrainedConfig) -> BertModel:
    """The encoder of ``shape`` as the final stage times it: SDPA attention, eval mode (its word
    embeddings factorised when the shape says so)."""
    config = bert_config(shape, teacher)
    config._attn_implementation = "sdpa"
    model = BertModel(config)
    return (model if shape.embedding is None else factorised(model, shape.embedding)).eval()


@dataclass
class BertLatencyTable:
    """Milliseconds of a layer and of the base, keyed ``"<hidden>-<heads>-<intermediate>"``, and what a
    factorised table adds, keyed ``"<hidden>-e<E>"``."""

    batch_size: int
    seq_len: int
    threads: int
    device: str
    entries: dict[str, dict[str, float]] = field(default_factory=dict)
    tables: dict[str, float] = field(default_factory=dict)
    references: list[dict[str, Any]] = field(default_factory=list)
    """Students timed with the table (``student``: its width's key, ``layers``, ``ms``), to be timed again
    beside measured students: the machine's drift in between (:meth:`drift`)."""

    @staticmethod
    def key(width: Width) -> str:
        return "-".join(map(str, width))

    @staticmethod
    def table_key(hidden: int, size: int) -> str:
        return f"{hidden}-e{size}"

    def predict(self, shape: BertShape) -> float:
        entry = self.entries[self.key((shape.hidden, shape.heads, shape.intermediate))]
        table = 0.0 if shape.embedding is None else self.tables[self.table_key(shape.hidden, shape.embedding)]
        return entry["base"] + shape.layers * entry["layer"] + table

    def drift(self, times: Sequence[float]) -> float:
        """The machine's speed now against when the table was timed: the median of the references' times
        (timed again, in order) over their times in the table (1.0: unchanged; 1.2: 20% slower now; a
        table without references: 1.0)."""
        if not self.references:
            return 1.0
        return float(
            statistics.median(t / float(r["ms"]) for t, r in zip(times, self.references, strict=True))
        )

    def matches(self, latency: LatencyConfig, device: torch.device | None = None) -> bool:
        """Whether the table was timed at this setting on this kind of device."""
        threads = latency.threads or torch.get_num_threads()
        here = device_name(device or serving_device(latency))
        return (self.batch_size, self.seq_len, self.threads, self.device) == (
            latency.batch_size,
            latency.seq_len,
            threads,
            here,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BertLatencyTable:
        return cls(**data)


def measure_bert_table(
    widths: Iterable[Width],
    teacher: PretrainedConfig,
    latency: LatencyConfig,
    device: torch.device | None = None,
    tables: Iterable[tuple[int, int]] = (),
) -> BertLatencyTable:
    """Time every width at one and three layers, and every factorised (hidden, E) table as a one-layer
    student beside the dense one, all in the same rounds (:func:`~distilnas.distill.measure.
    round_robin`); the three-layer students of up to four widths spread over them are its references."""
    device = device or serving_device(latency)
    widths, tables = sorted(set(widths)), sorted(set(tables))
    chosen = {h: min(w for w in widths if w[0] == h) for h, _ in tables}  # one width per hidden size
    shapes = [BertShape(d, *w) for w in widths for d in (1, 3)]
    shapes += [BertShape(1, *chosen[h], embedding=e) for h, e in tables]
    models = [plain_encoder(shape, teacher).to(device) for shape in shapes]  # type: ignore[arg-type]
    ms = round_robin(models, latency, desc="latency table")
    threads = latency.threads or torch.get_num_threads()
    table = BertLatencyTable(latency.batch_size, latency.seq_len, threads, device_name(device))
    for i, w in enumerate(widths):
        t1, t3 = ms[2 * i], ms[2 * i + 1]
        layer = max(0.0, (t3 - t1) / 2)
        table.entries[table.key(w)] = {"base": max(0.0, t1 - layer), "layer": layer}
    for (h, e), t in zip(tables, ms[2 * len(widths) :], strict=True):
        table.tables[table.table_key(h, e)] = t - ms[2 * widths.index(chosen[h])]
    k = min(REFERENCES, len(widths))
    picked = sorted({round(i * (len(widths) - 1) / max(1, k - 1)) for i in range(k)})
    table.references = [{"student": table.key(widths[i]), "layers": 3, "ms": ms[2 * i + 1]} for i in picked]
    return table


REFERENCES = 4
"""How many of the table's students are its references (one alone, small and fast, drifts with its
own noise: one run's single 1-layer reference drifted 0.82x while the 13 students it stood for kept
within 5% of their predictions)."""


def reference_encoders(table: BertLatencyTable, teacher: PretrainedConfig) -> list[BertModel]:
    """The table's reference students, to be timed again beside measured students (:meth:`BertLatencyTable.
    drift`)."""
    out = []
    for ref in table.references:
        h, heads, ffn = map(int, str(ref["student"]).split("-"))
        out.append(plain_encoder(BertShape(int(ref["layers"]), h, heads, ffn), teacher))
    return out
