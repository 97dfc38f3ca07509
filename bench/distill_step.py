"""Benchmark: one distillation step with the live teacher against the teacher-output cache.

Prints one table, every figure measured side by side in this run:
- ms per step (median over timed steps) and samples/s, live teacher vs cache, for the 2L-H128 and
  4L-H256 students, on SST-2 train sentences with dynamic padding and at fixed length 128;
- the speed-up of the cached step over the live one;
- achieved GFLOP/s of each step (FLOPs counted by torch's FLOP counter over one step, forward and
  backward) against this machine's dense fp32 matmul GFLOP/s, measured in the same run;
- the cache's bytes per example.

    python bench/distill_step.py [--examples 2048] [--steps 10] [--glue-dir DIR] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from distilnas.distill.bert import BertShape, build_student
from distilnas.distill.config import DistillSettings
from distilnas.distill.data import LengthBucketBatches, PackedRows, tokenize_split
from distilnas.distill.distiller import CachedTeacher, Distiller, LiveTeacher
from distilnas.distill.glue import get_task
from distilnas.distill.teacher import load_encoder, load_tokenizer, resolve
from distilnas.distill.teacher_cache import teacher_cache
from distilnas.spaces.mapping import LayerMapping

LOSSES = {"embedding_mse": 1.0, "hidden_mse": 1.0, "minilm_relation": 1.0}


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Dense fp32 matmul throughput of this machine (median of repeats)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def time_steps(
    d: Distiller, batches: list[list[int]], data: PackedRows, pad_to: int | None, warmup: int
) -> list[float]:
    optimizer = d.optimizer()
    d.student.train()
    times = []
    for i, rows in enumerate(batches):
        start = time.perf_counter()
        d.train_step(rows, data.batch(rows, pad_to=pad_to), optimizer)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def step_flops(d: Distiller, rows: list[int], data: PackedRows, pad_to: int | None) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = d.loss(rows, data.batch(rows, pad_to=pad_to))
        loss.backward()
    d.student.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=2048, help="SST-2 train sentences cached")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", "../shared/data/glue"))
    parser.add_argument("--cache-dir", default=os.environ.get("DISTILNAS_CACHE", ".cache/distilnas"))
    args = parser.parse_args()
    torch.manual_seed(0)

    source = resolve("minilm-l6")
    tokenizer, teacher = load_tokenizer(source), load_encoder(source)
    data = tokenize_split(
        get_task("sst2"), "train", tokenizer, 128, Path(args.glue_dir), args.cache_dir, limit=args.examples
    ).dataset
    cache = teacher_cache(teacher, source.identity(), data, 128, ["hidden", "qkv"], args.cache_dir)
    peak = matmul_gflops()
    n = args.warmup + args.steps
    packed = PackedRows(data)
    batches = list(LengthBucketBatches(packed.lengths, args.batch_size, seed=0))[:n]
    tokens = sum(int(packed.lengths[b].sum()) for b in batches[args.warmup :]) / args.steps

    table = Table(title=f"distillation step, MiniLM-L6 teacher, batch {args.batch_size}, SST-2 train")
    for col in (
        "student",
        "padding",
        "teacher",
        "ms/step",
        "samples/s",
        "speed-up",
        "GFLOP/s",
        "% of matmul",
    ):
        table.add_column(col, justify="right")
    depth = teacher.config.num_hidden_layers
    for layers, hidden in ((2, 128), (4, 256)):
        spec = BertShape.like(teacher.config, layers, hidden)
        pairs = LayerMapping.uniform(layers, depth).pairs()
        for pad_to in (None, 128):
            padding = (
                f"dynamic (~{tokens / args.batch_size:.0f} tok)" if pad_to is None else f"fixed {pad_to}"
            )
            medians = {}
            for kind in ("live", "cache"):
                student = build_student(spec, teacher, "random", seed=0)
                source_ = LiveTeacher(teacher) if kind == "live" else CachedTeacher(cache)
                settings = DistillSettings(
                    losses=LOSSES, batch_size=args.batch_size, pad_to=pad_to, relation_heads=8
                )
                d = Distiller(student, source_, pairs, settings)
                times = time_steps(d, batches, packed, pad_to, args.warmup)
                med = statistics.median(times)
                medians[kind] = med
                # achieved rate over the timed steps: their counted FLOPs over their total time
                flops = sum(step_flops(d, rows, packed, pad_to) for rows in batches[args.warmup :])
                gflops = flops / sum(times) / 1e9
                table.add_row(
                    spec.size_name,
                    padding,
                    kind,
                    f"{med * 1000:.1f}",
                    f"{args.batch_size / med:.0f}",
                    f"{medians['live'] / med:.2f}x" if kind == "cache" else "1.00x",
                    f"{gflops:.1f}",
                    f"{100 * gflops / peak:.0f}%",
                )
    table.caption = (
        f"dense fp32 matmul (2048^3): {peak:.1f} GFLOP/s; threads {torch.get_num_threads()}; "
        f"cache: {cache.bytes_per_example / 1024:.1f} KiB per example (hidden + Q/K/V, fp16, unpadded), "
        f"{cache.examples} examples; medians of {args.steps} steps after {args.warmup} warm-up"
    )
    Console().print(table)


if __name__ == "__main__":
    main()
