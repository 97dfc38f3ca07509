"""A latency table for plain BERT students, measured on this device at ``final.latency``'s setting.

For each (width, heads, FFN size) a student can have, the encoder the final stage times (transformers'
``BertModel``, SDPA attention, random weights) is timed at one and at three layers, alternately: a layer
costs half the difference, and what one layer leaves is the width's base (embeddings, pooler, the
model's own overhead). A student's predicted latency is its base plus its depth times its layer. The
table reports its own error against whole students measured afterwards (:func:`~distilnas.proxies.
latency.mape`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import BertModel, PretrainedConfig

from distilnas.distill.bert import BertShape, bert_config
from distilnas.distill.config import LatencyConfig
from distilnas.distill.measure import device_name, measure_latency
from distilnas.distill.utils import default_device

Width = tuple[int, int, int]
"""(hidden, heads, intermediate)"""


def plain_encoder(shape: BertShape, teacher: PretrainedConfig) -> BertModel:
    """The encoder of ``shape`` as the final stage times it: SDPA attention, eval mode."""
    config = bert_config(shape, teacher)
    config._attn_implementation = "sdpa"
    return BertModel(config).eval()


@dataclass
class BertLatencyTable:
    """Milliseconds of a layer and of the base, keyed ``"<hidden>-<heads>-<intermediate>"``."""

    batch_size: int
    seq_len: int
    threads: int
    device: str
    entries: dict[str, dict[str, float]] = field(default_factory=dict)

    @staticmethod
    def key(width: Width) -> str:
        return "-".join(map(str, width))

    def predict(self, shape: BertShape) -> float:
        entry = self.entries[self.key((shape.hidden, shape.heads, shape.intermediate))]
        return entry["base"] + shape.layers * entry["layer"]

    def matches(self, latency: LatencyConfig, device: torch.device | None = None) -> bool:
        """Whether the table was timed at this setting on this kind of device."""
        threads = latency.threads or torch.get_num_threads()
        here = device_name(device or default_device())
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
) -> BertLatencyTable:
    """Time every width at one and three layers (alternately, five times ``latency.repeats`` each)."""
    device = device or default_device()
    before = torch.get_num_threads()
    if latency.threads:
        torch.set_num_threads(latency.threads)
    table = BertLatencyTable(
        latency.batch_size, latency.seq_len, torch.get_num_threads(), device_name(device)
    )
    try:
        for h, heads, ffn in tqdm(sorted(set(widths)), desc="latency table", unit="width"):
            shallow = plain_encoder(BertShape(1, h, heads, ffn), teacher)
            deep = plain_encoder(BertShape(3, h, heads, ffn), teacher)
            one, three = [], []
            for _ in range(5):  # alternate, so drifts of a shared machine fall on both
                one.append(
                    measure_latency(shallow, latency.batch_size, latency.seq_len, repeats=latency.repeats).ms
                )
                three.append(
                    measure_latency(deep, latency.batch_size, latency.seq_len, repeats=latency.repeats).ms
                )
            t1, t3 = sorted(one)[2], sorted(three)[2]  # medians of five
            layer = max(0.0, (t3 - t1) / 2)
            table.entries[table.key((h, heads, ffn))] = {"base": max(0.0, t1 - layer), "layer": layer}
    finally:
        torch.set_num_threads(before)
    return table
