"""Benchmark: Kronecker-factored layers against the dense layers they replace, side by side.

For each layer of configs/kronecker-minilm.yaml (MiniLM's 384-wide attention maps and 1536-wide
feed-forward maps, and the 30522 x 384 word embeddings), prints the median ms per forward pass of the
dense layer, of the Kronecker layer (einsum, as it runs in the model), and of the same product written as
two chained matmuls, with parameters and the dense/Kronecker ratio. Batch 1, sequence 128 by default.

    python bench/kronecker_layers.py [--seq-len 128] [--threads 1] [--repeats 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from distilnas.distill.kronecker import KroneckerEmbedding, KroneckerLinear

LAYERS = {  # kind: (in, out, A, B) as in configs/kronecker-minilm.yaml
    "attention map": (384, 384, (192, 192), (2, 2)),
    "ffn_in": (384, 1536, (8, 2), (192, 192)),
    "ffn_out": (1536, 384, (2, 8), (192, 192)),
}


def median_ms(call: Callable[[], object], repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(20):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def matmuls(layer: KroneckerLinear, x: torch.Tensor) -> torch.Tensor:
    """The same product as two chained matmuls: A @ (X @ Bᵀ), summed over terms."""
    _, m1, n1 = layer.a.shape
    _, m2, n2 = layer.b.shape
    xs = x.reshape(*x.shape[:-1], 1, n1, n2)
    y = (layer.a @ (xs @ layer.b.transpose(-1, -2))).sum(-3)
    return y.reshape(*x.shape[:-1], m1 * m2) + layer.bias


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    table = Table(
        title=f"Kronecker vs dense layers, batch 1, sequence {args.seq_len}, {args.threads} thread(s)"
    )
    for col in ("layer", "params dense", "params kron", "dense ms", "kron ms", "matmuls ms", "dense / kron"):
        table.add_column(col, justify="right")
    for name, (n, m, a, b) in LAYERS.items():
        dense = nn.Linear(n, m).eval()
        kron = KroneckerLinear.from_linear(dense, a, b).eval()
        x = torch.randn(1, args.seq_len, n)
        torch.testing.assert_close(kron(x), matmuls(kron, x), rtol=1e-4, atol=1e-4)
        d = median_ms(lambda dense=dense, x=x: dense(x), args.repeats)
        k = median_ms(lambda kron=kron, x=x: kron(x), args.repeats)
        mm = median_ms(lambda kron=kron, x=x: matmuls(kron, x), args.repeats)
        table.add_row(
            name,
            f"{count(dense):,}",
            f"{count(kron):,}",
            f"{d:.3f}",
            f"{k:.3f}",
            f"{mm:.3f}",
            f"{d / k:.2f}x",
        )
    emb = nn.Embedding(30522, 384)
    kemb = KroneckerEmbedding.from_embedding(emb, 8)
    ids = torch.randint(1000, 30522, (1, args.seq_len))
    d = median_ms(lambda: emb(ids), args.repeats)
    k = median_ms(lambda: kemb(ids), args.repeats)
    table.add_row(
        "embedding", f"{count(emb):,}", f"{count(kemb):,}", f"{d:.3f}", f"{k:.3f}", "", f"{d / k:.2f}x"
    )
    Console().print(table)


if __name__ == "__main__":
    main()
