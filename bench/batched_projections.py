"""Benchmark: the hidden-state loss with its projections batched over layers, against one per layer.

``hidden_mse`` maps each mapped student layer to the teacher's width through its own linear projection
and averages the squared error over real tokens, layer by layer (``distilnas.distill.losses``). Batched,
the layers' projection weights are stacked and one batched matrix product (``baddbmm``) maps every layer
at once, and one reduction gives the same sum. This times both, forward and backward, alternating
rounds, and checks they compute the same loss and gradients; and both again under bf16 autocast (the
projections in the step's precision, which the loss now leaves in fp32). The inputs are a distillation
step's: the real-token layout of ``bench/vs_textbrewer.py``'s length-bucketed SST-2 batches (batch 32;
their median width, or ``--width``), random hidden states, trainable projections. Whether a saving shows
in a whole step is ``bench/vs_textbrewer.py``'s to measure, before and after.

    python bench/batched_projections.py [--rounds 5] [--steps 30] [--threads 2] [--width W]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from distilnas.distill.data import LengthBucketBatches, PackedRows, tokenize_split
from distilnas.distill.glue import get_task
from distilnas.distill.losses import LossContext, Views, hidden_mse
from distilnas.distill.teacher import load_tokenizer, resolve

SHAPES = ((2, 128), (4, 256), (2, 192), (4, 384))
TEACHER_WIDTH, TEACHER_LAYERS = 384, 6


def batched_hidden_mse(ctx: LossContext) -> torch.Tensor:
    """``hidden_mse`` with one batched product over the mapped layers (the same value)."""
    pairs = ctx.layer_pairs
    m = ctx.mask
    students = torch.stack([ctx.student.hidden[s][m] for s, _ in pairs])  # (layers, tokens, hs)
    teachers = torch.stack([ctx.teacher.hidden[t][m].float() for _, t in pairs])
    layers = [ctx.projections[f"s{s}"] for s, _ in pairs]
    weight = torch.stack([p.weight.t() for p in layers])  # type: ignore[union-attr]
    bias = torch.stack([p.bias for p in layers]).unsqueeze(1)  # type: ignore[union-attr]
    diff = torch.baddbmm(bias, students, weight) - teachers
    return diff.pow(2).mean(-1).sum() / m.sum().clamp_min(1)


def in_bf16(fn: Callable[[LossContext], torch.Tensor]) -> Callable[[LossContext], torch.Tensor]:
    """``fn`` under bf16 autocast (its matrix products in bf16), the loss returned in fp32."""

    def run(ctx: LossContext) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(ctx).float()

    return run


def sst2_lengths(width: int | None) -> torch.Tensor:
    """The row lengths of a batch of 32 from SST-2 train's length buckets (the median-width one), or of
    rows all ``width`` tokens long."""
    if width:
        return torch.full((32,), width)
    glue, cache = (
        os.environ.get("GLUE_DIR", "../shared/data/glue"),
        os.environ.get("DISTILNAS_CACHE", ".cache/distilnas"),
    )
    tokenizer = load_tokenizer(resolve("minilm-l6"))
    data = tokenize_split(get_task("sst2"), "train", tokenizer, 128, Path(glue), cache, limit=2048).dataset
    lengths = PackedRows(data).lengths
    batches = sorted(LengthBucketBatches(lengths, 32, seed=0), key=lambda rows: max(lengths[r] for r in rows))
    return torch.tensor([int(lengths[r]) for r in batches[len(batches) // 2]])


def inputs(lengths: torch.Tensor, layers: int, hidden: int, seed: int = 0) -> LossContext:
    g = torch.Generator().manual_seed(seed)
    batch, width = len(lengths), int(lengths.max())
    mask = torch.arange(width)[None, :] < lengths[:, None]
    pairs = [(s, s * TEACHER_LAYERS // layers) for s in range(1, layers + 1)]
    student = {s: torch.randn(batch, width, hidden, generator=g).requires_grad_() for s, _ in pairs}
    teacher = {t: torch.randn(batch, width, TEACHER_WIDTH, generator=g) for _, t in pairs}
    torch.manual_seed(seed)
    projections = nn.ModuleDict({f"s{s}": nn.Linear(hidden, TEACHER_WIDTH) for s, _ in pairs})
    return LossContext(
        student=Views(hidden=student, heads=4),
        teacher=Views(hidden=teacher, heads=12),
        pairs=pairs,
        mask=mask,
        projections=projections,
    )


def grads(ctx: LossContext) -> list[torch.Tensor]:
    tensors = [*ctx.student.hidden.values(), *ctx.projections.parameters()]
    out = [t.grad.clone() for t in tensors if t.grad is not None]
    for t in tensors:
        t.grad = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=0, help="rows of this many tokens (0: SST-2's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = sst2_lengths(args.width)
    ways = {
        "per layer": hidden_mse,
        "batched": batched_hidden_mse,
        "per layer, bf16": in_bf16(hidden_mse),
        "batched, bf16": in_bf16(batched_hidden_mse),
    }
    table = Table(
        title=f"hidden_mse with projections, forward + backward, ms (median of {args.rounds} rounds)"
    )
    extra = ("batched saves", "max |loss diff|", "max |grad diff|")
    for col in ("student", *ways, *extra):
        table.add_column(col, justify="right")
    for layers, hidden in SHAPES:
        ctx = inputs(lengths, layers, hidden)
        values = {}
        for name, fn in list(ways.items())[:2]:  # the exact change: per layer and batched in fp32
            loss = fn(ctx)
            loss.backward()
            values[name] = (float(loss.detach()), grads(ctx))
        (a, ga), (b, gb) = values.values()
        grad_diff = max(float((x - y).abs().max()) for x, y in zip(ga, gb, strict=True))
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, fn in ways.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    fn(ctx).backward()
                times[name].append((time.perf_counter() - start) * 1000 / args.steps)
                grads(ctx)
        ms = {name: statistics.median(t) for name, t in times.items()}
        saved = ms["per layer"] - ms["batched"]
        table.add_row(
            f"{layers}L-{hidden}",
            *(f"{ms[n]:.2f}" for n in ways),
            f"{saved:.2f}",
            f"{abs(a - b):.1e}",
            f"{grad_diff:.1e}",
        )
    table.caption = (
        f"threads {torch.get_num_threads()}; batch {len(lengths)}, {int(lengths.sum())} real tokens "
        f"in rows of {int(lengths.min())}-{int(lengths.max())}; teacher width 384"
    )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
