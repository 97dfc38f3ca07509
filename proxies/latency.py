"""A per-operation latency table for NAS-BERT students, measured on this device.

Every part a student can have is timed alone at the table's setting (batch 1, sequence 128 by default):
the embeddings, the input and output projections and each operation, at each hidden size, round robin
beside a whole (smallest) student, whose time beyond its parts is the model's fixed overhead. A path's
predicted latency is the sum of its parts plus that overhead. :func:`mape` reports the prediction's error
against the measured latency of whole students; HAT's rule: a predictor reports its own error.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm

from distilnas.distill.measure import device_name, torch_threads, trimmed_mean
from distilnas.distill.nas_bert import IDENTITY, OPERATIONS, NasBertModel, SlicedEmbeddings, SlicedLinear
from distilnas.distill.utils import default_device
from distilnas.spaces.nas_space import BlockPath, NasSpace
from distilnas.spaces.supernet import nas_config


@dataclass
class LatencyTable:
    """Milliseconds per part, keyed ``"<part>@<hidden>"`` (parts: embed, in, out and the operations), and
    ``"overhead"``: what a whole model costs beyond its parts."""

    batch_size: int
    seq_len: int
    threads: int
    device: str
    entries: dict[str, float] = field(default_factory=dict)

    def block(self, position: int, block: BlockPath) -> float:
        h = block.hidden
        ms = self.entries[f"{'embed' if position == 0 else 'in'}@{h}"] + self.entries[f"out@{h}"]
        return ms + sum(self.entries[f"{op}@{h}"] for op in block.ops[: block.depth])

    def predict(self, path: Sequence[BlockPath]) -> float:
        """The sum of the path's parts, plus the model's own overhead (masks, outputs)."""
        return self.entries.get("overhead", 0.0) + sum(self.block(i, b) for i, b in enumerate(path))

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
    standalone student)."""
    device = device or default_device()
    with torch_threads(threads):
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, space.vocab_size, (batch_size, seq_len), generator=g).to(device)
        types = torch.zeros_like(ids)
        mask = torch.ones_like(ids, dtype=torch.bool)
        wide = torch.randn(batch_size, seq_len, space.teacher_hidden, generator=g).to(device)
        table = LatencyTable(batch_size, seq_len, torch.get_num_threads(), device_name(device))
        jobs: list[tuple[str, Callable[[], object]]] = []
        for h in space.hidden_sizes:
            x = torch.randn(batch_size, seq_len, h, generator=g).to(device)
            emb = SlicedEmbeddings(*space.embeddings, h, 1e-12, 0.0).to(device).eval()
            inp = SlicedLinear(space.teacher_hidden, h).to(device).eval()
            out = SlicedLinear(h, space.teacher_hidden).to(device).eval()
            jobs += [
                (f"embed@{h}", partial(emb, ids, types, h)),
                (f"in@{h}", partial(inp, wide)),
                (f"out@{h}", partial(out, x)),
            ]
            for op in space.operations:
                jobs.append((f"{op}@{h}", partial(OPERATIONS[op](h).to(device).eval(), x, mask)))
        # The model's own cost beyond its parts (building the mask, collecting outputs): a whole student
        # of the smallest parts is timed with them, and what its parts do not explain is the overhead.
        first = (space.operations[0],) + (IDENTITY,) * (space.block_layers - 1)
        smallest = [BlockPath(min(space.hidden_sizes), first)] * space.blocks
        model: Any = NasBertModel(nas_config(space, smallest))
        model = model.to(device).eval()
        jobs.append(("model", partial(model, ids, mask.long())))
        # Round robin: each part is timed right after a different one, as inside a model, so it meets caches
        # as warm or cold as it would there (a part timed alone, again and again, reads as faster).
        times: dict[str, list[float]] = {key: [] for key, _ in jobs}
        with torch.inference_mode():
            for r in tqdm(range(warmup + repeats), desc="latency table", unit="round"):
                for key, call in jobs:
                    start = time.perf_counter()
                    call()
                    sync()
                    if r >= warmup:
                        times[key].append((time.perf_counter() - start) * 1000)
        table.entries = {key: trimmed_mean(ts, trim) for key, ts in times.items()}
        whole = table.entries.pop("model")
        table.entries["overhead"] = max(0.0, whole - table.predict(smallest))
        return table


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error of ``predicted`` against ``measured``."""
    return 100 * statistics.fmean(abs(p - m) / m for p, m in zip(predicted, measured, strict=True))
