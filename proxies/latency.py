"""A per-operation latency table for NAS-BERT students, measured on this device.

Every part a deployed student can have (distill/nas_bert.py) is timed alone at the table's setting
(batch 1, sequence 128 by default): the embeddings and each operation at each hidden size and the bridge
between each pair of sizes, round robin beside a whole (smallest) student, whose time beyond its parts is
the model's fixed overhead. A path's predicted latency is the sum of its parts plus that overhead.
:func:`mape` reports the prediction's error against the measured latency of whole students; HAT's rule:
a predictor reports its own error.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm

from distilnas.distill.measure import device_name, stopwatch, torch_threads, trimmed_mean
from distilnas.distill.nas_bert import (
    DEPLOYED,
    IDENTITY,
    OPERATIONS,
    NasBertModel,
    SlicedEmbeddings,
    SlicedLinear,
)
from distilnas.distill.utils import default_device
from distilnas.spaces.nas_space import BlockPath, NasSpace
from distilnas.spaces.supernet import nas_config

FORM = "deployed-v1"
"""What the table times (its entries' meaning): part of the key a stored table is reused under."""


def bridge(before: int, after: int) -> str:
    return f"bridge@{before}-{after}"


@dataclass
class LatencyTable:
    """Milliseconds per part of a deployed student, keyed ``"<part>@<hidden>"`` (parts: embed and the
    operations), ``"bridge@<from>-<to>"`` and ``"overhead"``: what a whole model costs beyond its parts."""

    batch_size: int
    seq_len: int
    threads: int
    device: str
    entries: dict[str, float] = field(default_factory=dict)

    def block(self, position: int, block: BlockPath) -> float:
        """The block's own parts (its embeddings at position 0, its operations), less the bridge into it
        (it depends on the block before: :meth:`predict` adds it)."""
        h = block.hidden
        ms = self.entries[f"embed@{h}"] if position == 0 else 0.0
        return ms + sum(self.entries[f"{op}@{h}"] for op in block.ops[: block.depth])

    def predict(self, path: Sequence[BlockPath]) -> float:
        """The sum of the path's parts and bridges, plus the model's own overhead (masks, outputs)."""
        bridges = sum(self.entries[bridge(a.hidden, b.hidden)] for a, b in itertools.pairwise(path))
        return self.entries.get("overhead", 0.0) + bridges + sum(self.block(i, b) for i, b in enumerate(path))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyTable:
        return cls(**data)


def measure_table(
    space: NasSpace,
    batch_size: int = 1,
    seq_len: int = 128,
    repeats: int = 50,
    warmup: int = 10,
    trim: float = 0.1,
    threads: int | None = None,
    device: torch.device | None = None,
) -> LatencyTable:
    """Time every part at every hidden size of ``space`` (each built at exactly that size, as in a
    deployed student)."""
    device = device or default_device()
    with torch_threads(threads):
        clock = stopwatch(device)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, space.vocab_size, (batch_size, seq_len), generator=g).to(device)
        types = torch.zeros_like(ids)
        mask = torch.ones_like(ids, dtype=torch.bool)
        table = LatencyTable(batch_size, seq_len, torch.get_num_threads(), device_name(device))
        jobs: list[tuple[str, Callable[[], object]]] = []
        states = {h: torch.randn(batch_size, seq_len, h, generator=g).to(device) for h in space.hidden_sizes}
        for h, x in states.items():
            emb = SlicedEmbeddings(*space.embeddings, h, 1e-12, 0.0).to(device).eval()
            jobs.append((f"embed@{h}", partial(emb, ids, types, h)))
            for op in space.operations:
                jobs.append((f"{op}@{h}", partial(OPERATIONS[op](h).to(device).eval(), x, mask)))
            for after in space.hidden_sizes:
                jobs.append((bridge(h, after), partial(SlicedLinear(h, after).to(device).eval(), x)))
        # The model's own cost beyond its parts (building the mask, collecting outputs): a whole student
        # of the smallest parts is timed with them, and what its parts do not explain is the overhead.
        first = (space.operations[0],) + (IDENTITY,) * (space.block_layers - 1)
        smallest = [BlockPath(min(space.hidden_sizes), first)] * space.blocks
        model: Any = NasBertModel(nas_config(space, smallest, form=DEPLOYED))
        model = model.to(device).eval()
        jobs.append(("model", partial(model, ids, mask.long())))
        # Round robin: each part is timed right after a different one, as inside a model, so it meets caches
        # as warm or cold as it would there (a part timed alone, again and again, reads as faster).
        times: dict[str, list[float]] = {key: [] for key, _ in jobs}
        with torch.inference_mode():
            for r in tqdm(range(warmup + repeats), desc="latency table", unit="round"):
                for key, call in jobs:
                    ms = clock(call)
                    if r >= warmup:
                        times[key].append(ms)
        table.entries = {key: trimmed_mean(ts, trim) for key, ts in times.items()}
        whole = table.entries.pop("model")
        table.entries["overhead"] = max(0.0, whole - table.predict(smallest))
        return table


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error of ``predicted`` against ``measured``."""
    return 100 * statistics.fmean(abs(p - m) / m for p, m in zip(predicted, measured, strict=True))
