"""Benchmark: distilnas' distillation step against TextBrewer's (0.2.1, ``GeneralDistiller``), side by side.

Both train the same student from the same initial weights against the MiniLM-L6 teacher on SST-2 train
sentences, with the same losses: embedding and hidden-state MSE through linear projections to the
teacher's width, over a uniform layer mapping, plus attention MSE for the 12-head students (TextBrewer
matches the attention probabilities HF returns; distilnas TinyBERT's pre-softmax scores, from Q and K:
the same work of one (heads, tokens, tokens) tensor per mapped layer), AdamW, a linear schedule and
gradient clipping at 1. Each step is timed from the batch to the zeroed gradients, on:

- TextBrewer, consecutive rows: batches of rows in their dataset order, padded to their longest row (a
  DataLoader with a padding collator, as TextBrewer's examples have it);
- TextBrewer on distilnas' length-bucketed batches (identical batches from here on);
- distilnas with the live teacher, and with the teacher-output cache, at its default settings
  (precision ``auto``: bf16 autocast where the CPU or GPU has native bf16); the live teacher with its
  fp32 linear layers cast by autocast at every call (as before it kept a bf16 copy); the cache with a dense
  word-embedding gradient and fused AdamW over the whole table (``dense`` as it was computed before
  :class:`~distilnas.distill.optim.TableAdamW`); the cache late in a run over SST-2 (every row of its
  vocabulary touched, so the exact table update covers them all); the cache at fp32; the cache with
  ``embedding_updates: rows``. A tree without a setting (the code before a change) skips its column.

distilnas has glibc keep freed memory for reuse (``keep_freed_memory``, set by its first ``Distiller``
for the whole process), so TextBrewer here runs with it too: faster than in a process of its own (run
this bench from a tree before that change to see it), which makes the ratios below conservative.

Runners alternate round by round (``--rounds``, each ``--steps`` steps, after ``--warmup`` untimed
steps), in reversed order every other round, so a slow spell of this shared machine, or a runner's
place after another, falls on all of them; figures are medians. A second
table gives each step's achieved GFLOP/s (FLOPs from torch's FLOP counter over forward and backward)
against the machine's fp32 (and, for runners in bf16, bf16) matmul rate measured in the same run, and
the share of a cached step spent reading the cache.

TextBrewer is a bench-only dependency (never installed by ``make install``)::

    .venv/bin/pip install --no-deps textbrewer==0.2.1 tensorboardX
    .venv/bin/python bench/vs_textbrewer.py [--rounds 3] [--steps 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from distilnas.distill.bert import BertShape, build_student
from distilnas.distill.config import DistillSettings
from distilnas.distill.data import LengthBucketBatches, PackedRows, tokenize_split
from distilnas.distill.distiller import CachedTeacher, Distiller, LiveTeacher
from distilnas.distill.glue import get_task
from distilnas.distill.measure import device_name, stopwatch
from distilnas.distill.teacher import load_encoder, load_tokenizer, resolve
from distilnas.distill.teacher_cache import TeacherCache, teacher_cache
from distilnas.distill.utils import default_device
from distilnas.spaces.mapping import LayerMapping

SHAPES = ((2, 128, None), (4, 256, None), (2, 192, 12), (4, 384, 12))
"""(layers, hidden, heads): heads None is the teacher's head size; 12 heads adds attention MSE."""
LR, WEIGHT_DECAY, TOTAL_STEPS = 1e-4, 0.01, 10_000
ROWS = {"embedding_updates": "rows"}
LATE = "cache, SST-2's rows touched"
"""The cache with every row of SST-2 train's vocabulary touched (11.6k of 30522) before timing: the exact
table update's cost late in a run over SST-2, where it updates all of them at every step."""
DENSE_TABLE = "cache dense table"
"""The cache with a dense word-embedding gradient and plain fused AdamW (what ``dense`` was on CPU before
:class:`~distilnas.distill.optim.TableAdamW` computed its update from the rows)."""
"""The word-embedding table trained by the rows a batch has (not the default: it changes what is learned)."""


def matmul_gflops(dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """Dense matmul throughput of this device at ``dtype`` (median of repeats; 2048^3 on a CPU, 8192^3 on
    a GPU, which a smaller product leaves idle)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    clock = stopwatch(device)
    for _ in range(3):
        clock(lambda: a @ b)
    ms = statistics.median(clock(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / (ms / 1000) / 1e9


Batch = dict[str, torch.Tensor]


class Runner:
    """One way of training a student: a step on rows, and the FLOPs of its forward and backward."""

    name: str
    bf16: bool = False

    def step(self, rows: list[int], batch: Batch) -> None:
        raise NotImplementedError

    def flops(self, rows: list[int], batch: Batch) -> int:
        raise NotImplementedError


class TextBrewerRunner(Runner):
    def __init__(self, name: str, student: torch.nn.Module, teacher: torch.nn.Module, pairs, attention: bool):  # type: ignore[no-untyped-def]
        from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

        self.name = name
        implementation = "eager" if attention else "sdpa"  # HF returns attention probabilities in eager only
        device = default_device()
        teacher = copy.deepcopy(teacher).to(device).eval()
        student = student.to(device)
        teacher.set_attn_implementation(implementation)
        student.set_attn_implementation(implementation)
        self.student = student.train()
        hs, ht = student.config.hidden_size, teacher.config.hidden_size
        proj = ["linear", hs, ht] if hs != ht else None
        matches = [
            {"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1, "proj": proj}
            for s, t in pairs
        ]
        if attention:
            matches += [
                {
                    "layer_T": t - 1,
                    "layer_S": s - 1,
                    "feature": "attention",
                    "loss": "attention_mse",
                    "weight": 1,
                }
                for s, t in pairs
                if s > 0
            ]

        def adaptor(batch: Batch, out) -> dict:  # type: ignore[no-untyped-def]
            return {
                "hidden": out.hidden_states,
                "attention": out.attentions or [],
                "inputs_mask": batch["attention_mask"],
            }

        self.distiller = GeneralDistiller(
            TrainingConfig(device=str(device), log_dir=None),
            DistillationConfig(intermediate_matches=matches, kd_loss_weight=0, hard_label_weight=0),
            teacher,
            student,
            adaptor,
            adaptor,
        )
        optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.optimizer, _, _ = self.distiller.initialize_training(optimizer, None, None, None)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, TOTAL_STEPS // 10, TOTAL_STEPS)
        self.args = {"output_hidden_states": True, "output_attentions": attention}

    def loss(self, batch: Batch) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.distiller.train_on_batch(inputs, self.args)[0]

    def step(self, rows: list[int], batch: Batch) -> None:  # TextBrewer's own loop body
        self.loss(batch).backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()

    def flops(self, rows: list[int], batch: Batch) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            self.loss(batch).backward()
        self.optimizer.zero_grad()
        return int(counter.get_total_flops())


class TimedCache(CachedTeacher):
    """The cache, with the time each read takes (on a GPU, until its copy to the device has landed)."""

    def __init__(self, cache) -> None:  # type: ignore[no-untyped-def]
        super().__init__(cache)
        self.ms: list[float] = []
        self.clock = stopwatch(default_device())

    def views(self, rows, batch, hidden, qkv):  # type: ignore[no-untyped-def]
        read = super().views
        out = []
        self.ms.append(self.clock(lambda: out.append(read(rows, batch, hidden, qkv))))
        return out[0]


LIVE_CASTING = "live, linears cast per call"


class CastingLiveTeacher(LiveTeacher):
    """The live teacher as before its linear layers were kept in bf16: autocast casts them every call."""

    def _runnable(self):  # type: ignore[no-untyped-def]
        return self.model


class DistilnasRunner(Runner):
    def __init__(self, name: str, distiller: Distiller) -> None:
        self.name = name
        self.distiller = distiller
        self.bf16 = bool(getattr(distiller, "bf16", False))
        self.optimizer = distiller.optimizer()
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, TOTAL_STEPS // 10, TOTAL_STEPS)
        distiller.student.train()

    def step(self, rows: list[int], batch: Batch) -> None:
        self.distiller.train_step(rows, batch, self.optimizer, self.scheduler)

    def flops(self, rows: list[int], batch: Batch) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            self.distiller.loss(rows, batch)[0].backward()
        self.optimizer.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


def sst2_setup(
    glue_dir: str, cache_dir: str, examples: int
) -> tuple[PreTrainedModel, PackedRows, TeacherCache]:
    """What the step benches share: the MiniLM-L6 teacher, SST-2 train's first rows (max length 128) and
    the teacher's hidden states and Q/K/V on them, cached."""
    source = resolve("minilm-l6")
    tokenizer, teacher = load_tokenizer(source), load_encoder(source)
    data = tokenize_split(
        get_task("sst2"), "train", tokenizer, 128, Path(glue_dir), cache_dir, limit=examples
    ).dataset
    cache = teacher_cache(teacher, source.identity(), data, 128, ["hidden", "qkv"], cache_dir)
    return teacher, PackedRows(data), cache


def sst2_vocabulary(glue_dir: str, cache_dir: str) -> torch.Tensor:
    """Every token id in SST-2 train (all 67k sentences): the rows a run over it touches in the end."""
    tokenizer = load_tokenizer(resolve("minilm-l6"))
    data = tokenize_split(get_task("sst2"), "train", tokenizer, 128, Path(glue_dir), cache_dir).dataset
    return torch.from_numpy(np.unique(PackedRows(data).ids)).long()


def touch(distiller: Distiller, optimizer: torch.optim.Optimizer, rows: torch.Tensor) -> None:
    """One optimizer step whose table gradient has ``rows`` with zero values: TableAdamW counts them as
    touched (updated every step from then on), as late in a run over their data, and no weight moves but
    by weight decay."""
    table = distiller.student.get_input_embeddings().weight
    zeros = torch.zeros(len(rows), table.shape[1], device=table.device)
    table.grad = torch.sparse_coo_tensor(
        rows[None].to(table.device), zeros, table.shape, check_invariants=True
    )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def settings(losses: dict[str, float], extra: dict[str, str]) -> DistillSettings:
    return DistillSettings(losses=losses, lr=LR, weight_decay=WEIGHT_DECAY, max_grad_norm=1.0, **extra)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=2048, help="SST-2 train sentences cached")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per runner per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per runner before round 1")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default="all", help="comma-separated indices into the four shapes")
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", "../shared/data/glue"))
    parser.add_argument("--cache-dir", default=os.environ.get("DISTILNAS_CACHE", ".cache/distilnas"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    teacher, packed, cache = sst2_setup(args.glue_dir, args.cache_dir, args.examples)
    vocabulary = sst2_vocabulary(args.glue_dir, args.cache_dir)
    n = args.warmup + args.rounds * args.steps
    bucketed = list(LengthBucketBatches(packed.lengths, args.batch_size, seed=0))[:n]
    consecutive = [
        list(range(i, i + args.batch_size)) for i in range(0, n * args.batch_size, args.batch_size)
    ]
    device = default_device()
    peak = {False: matmul_gflops(torch.float32, device), True: matmul_gflops(torch.bfloat16, device)}
    depth = teacher.config.num_hidden_layers
    chosen = SHAPES if args.shapes == "all" else [SHAPES[int(i)] for i in args.shapes.split(",")]

    distilnas = {
        "live": {},
        LIVE_CASTING: {},
        "cache": {},
        DENSE_TABLE: {},
        LATE: {},
        "cache fp32": {"precision": "fp32"},
        "cache rows": ROWS,
    }
    known = {k: v for k, v in distilnas.items() if set(v) <= set(DistillSettings.model_fields)}
    brewers = ("TextBrewer consecutive", "TextBrewer bucketed")
    times_table = Table(
        title=f"distillation step, ms (median), MiniLM-L6 teacher, SST-2 train, batch {args.batch_size}"
    )
    ratios = [
        ("cache", "TextBrewer bucketed"),
        ("cache", "TextBrewer consecutive"),
        ("live", "TextBrewer bucketed"),
    ]
    ratios += [("cache rows", b) for b in brewers[::-1] if "cache rows" in known]
    for col in (
        "student",
        *brewers,
        *known,
        *(f"{a} vs {b.removeprefix('TextBrewer ')} TB" for a, b in ratios),
    ):
        times_table.add_column(col, justify="right")
    rate_table = Table(
        title="achieved GFLOP/s per step (% of this machine's fp32 matmul rate; in bf16, also of bf16's)"
    )
    for col in ("student", "TextBrewer bucketed", *known, "cache read, % of cached step"):
        rate_table.add_column(col, justify="right")

    auto = "fp32"
    clock = stopwatch(device)
    for layers, hidden, heads in chosen:
        shape = BertShape.like(teacher.config, layers, hidden)
        if heads:
            shape = BertShape(layers, hidden, heads, shape.intermediate)
        attention = shape.heads == teacher.config.num_attention_heads
        losses = {"embedding_mse": 1.0, "hidden_mse": 1.0} | ({"attention_mse": 1.0} if attention else {})
        pairs = LayerMapping.uniform(layers, depth).pairs()
        name = f"{shape.size_name}, {shape.heads}h" + (" +attention" if attention else "")

        def student(shape: BertShape = shape) -> torch.nn.Module:
            return build_student(shape, teacher, "random", seed=0)

        timed_cache = TimedCache(cache)
        runners: list[tuple[Runner, list[list[int]]]] = [
            (TextBrewerRunner(brewers[0], student(), teacher, pairs, attention), consecutive),
            (TextBrewerRunner(brewers[1], student(), teacher, pairs, attention), bucketed),
        ]
        for key, extra in known.items():
            source = (
                LiveTeacher(teacher)
                if key == "live"
                else CastingLiveTeacher(teacher)
                if key == LIVE_CASTING
                else timed_cache
                if key == "cache"
                else CachedTeacher(cache)
            )
            d = Distiller(student(), source, pairs, settings(losses, extra))
            if key == DENSE_TABLE:  # the table's gradient dense, as before TableAdamW's exact rows
                d.student.get_input_embeddings().sparse = False
            runner = DistilnasRunner(key, d)
            runners.append((runner, bucketed))
            if key == LATE:
                touch(d, runner.optimizer, vocabulary)
            auto = "bf16" if key == "cache" and runner.bf16 else auto
        times: dict[str, list[float]] = {r.name: [] for r, _ in runners}

        def step_of(runner: Runner, rows: list[int]) -> float:
            batch = packed.batch(rows)
            return clock(lambda: runner.step(rows, batch)) / 1000

        for runner, batches in runners:
            for rows in batches[: args.warmup]:
                step_of(runner, rows)
        timed_cache.ms.clear()
        for r in range(args.rounds):
            lo = args.warmup + r * args.steps
            for runner, batches in runners if r % 2 == 0 else runners[::-1]:  # no runner always first
                times[runner.name] += [step_of(runner, rows) for rows in batches[lo : lo + args.steps]]
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        times_table.add_row(
            name,
            *(f"{ms[k]:.1f}" for k in (*brewers, *known)),
            *(f"{ms[b] / ms[a]:.2f}x" for a, b in ratios),
        )
        cells = []
        for runner, batches in runners[1:]:
            timed = batches[args.warmup : args.warmup + args.steps]
            flops = statistics.mean(runner.flops(rows, packed.batch(rows)) for rows in timed)
            gflops = flops / (ms[runner.name] / 1000) / 1e9
            of_bf16 = f", {100 * gflops / peak[True]:.0f}% of bf16" if runner.bf16 else ""
            cells.append(f"{gflops:.0f} ({100 * gflops / peak[False]:.0f}%{of_bf16})")
        read = statistics.median(timed_cache.ms)
        rate_table.add_row(name, *cells, f"{read:.1f} ms ({100 * read / ms['cache']:.0f}%)")
    caption = (
        f"{device_name(device)}; matmul: fp32 {peak[False]:.0f} GFLOP/s, bf16 {peak[True]:.0f} GFLOP/s; "
        f"threads {torch.get_num_threads()}; TextBrewer in fp32 (it has no bf16 autocast); "
        f"medians of {args.rounds} alternating rounds x "
        f"{args.steps} steps after {args.warmup} warm-up; live and cache at precision auto ({auto} here)"
    )
    times_table.caption = caption
    console = Console(width=200)
    console.print(times_table)
    console.print(rate_table)


if __name__ == "__main__":
    main()
