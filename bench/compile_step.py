"""Benchmark: does ``torch.compile`` of the student pay within a trial? The cached distillation step at
its defaults, eager against the student compiled (inductor, dynamic shapes: length-bucketed batches vary
in length), side by side on the same batches.

For each shape it prints the compile cost (the first ``--first`` steps' time beyond as many eager
steps), the steady step of each (medians of alternating rounds), and the steps after which compiling has
paid back, against the steps of a trial of this project's configs: a proxy evaluation of the demo (40
general + 200 task steps) and the demo's final student (150 + 60 + 120).

    .venv/bin/python bench/compile_step.py [--shapes 0,3] [--rounds 3] [--steps 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table
from transformers import PreTrainedModel, get_linear_schedule_with_warmup
from vs_textbrewer import (
    SHAPES,
    sst2_setup,
)  # the same shapes and data (bench/ is on sys.path as the script's folder)

from distilnas.distill.bert import BertShape, build_student
from distilnas.distill.config import DistillSettings
from distilnas.distill.data import LengthBucketBatches, PackedRows
from distilnas.distill.distiller import CachedTeacher, Distiller
from distilnas.distill.teacher_cache import TeacherCache
from distilnas.spaces.mapping import LayerMapping

TRIALS = {"proxy trial (demo)": 240, "final student (demo)": 330}
LR, TOTAL = 1e-4, 10_000


class Stepper:
    def __init__(self, distiller: Distiller) -> None:
        self.d = distiller
        self.optimizer = distiller.optimizer()
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, TOTAL // 10, TOTAL)
        distiller.student.train()

    def step(self, packed: PackedRows, rows: list[int]) -> float:
        batch = packed.batch(rows)
        start = time.perf_counter()
        self.d.train_step(rows, batch, self.optimizer, self.scheduler)
        return time.perf_counter() - start


def stepper(
    shape: BertShape,
    teacher: PreTrainedModel,
    cache: TeacherCache,
    pairs: list[tuple[int, int]],
    settings: DistillSettings,
    compiled: bool,
) -> Stepper:
    d = Distiller(build_student(shape, teacher, "random", seed=0), CachedTeacher(cache), pairs, settings)
    if compiled:
        d.student.forward = torch.compile(d.student.forward, dynamic=True)
    return Stepper(d)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="0,3", help="comma-separated indices into the four shapes")
    parser.add_argument("--first", type=int, default=6, help="steps that hold the compilation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", "../shared/data/glue"))
    parser.add_argument("--cache-dir", default=os.environ.get("DISTILNAS_CACHE", ".cache/distilnas"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    teacher, packed, cache = sst2_setup(args.glue_dir, args.cache_dir, args.examples)
    batches = list(LengthBucketBatches(packed.lengths, 32, seed=0))
    need = args.first + args.rounds * args.steps
    batches = (batches * (need // len(batches) + 1))[:need]
    depth = teacher.config.num_hidden_layers

    table = Table(title="cached step at precision auto: eager against torch.compile(student, dynamic=True)")
    for col in (
        "student",
        "compile cost, s",
        "eager ms",
        "compiled ms",
        "speed-up",
        "pays back after",
        *TRIALS,
    ):
        table.add_column(col, justify="right")
    for index in map(int, args.shapes.split(",")):
        layers, hidden, heads = SHAPES[index]
        shape = BertShape.like(teacher.config, layers, hidden)
        if heads:
            shape = BertShape(layers, hidden, heads, shape.intermediate)
        attention = shape.heads == teacher.config.num_attention_heads
        losses = {"embedding_mse": 1.0, "hidden_mse": 1.0} | ({"attention_mse": 1.0} if attention else {})
        pairs = LayerMapping.uniform(layers, depth).pairs()
        settings = DistillSettings(losses=losses, lr=LR, weight_decay=0.01, max_grad_norm=1.0)

        eager, compiled = (stepper(shape, teacher, cache, pairs, settings, c) for c in (False, True))
        first = {"eager": sum(eager.step(packed, rows) for rows in batches[: args.first])}
        try:
            first["compiled"] = sum(compiled.step(packed, rows) for rows in batches[: args.first])
        except Exception as exc:  # a failed compile is a result too
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            table.add_row(
                f"{shape.size_name}", f"compile failed ({reason})", *[""] * (len(table.columns) - 2)
            )
            continue
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for r in range(args.rounds):
            lo = args.first + r * args.steps
            for name, runner in (("eager", eager), ("compiled", compiled)):
                times[name] += [runner.step(packed, rows) for rows in batches[lo : lo + args.steps]]
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        cost = first["compiled"] - first["eager"]
        saved = (ms["eager"] - ms["compiled"]) / 1000
        payback = cost / saved if saved > 0 else float("inf")
        net = [f"{steps * saved - cost:+.1f} s" for steps in TRIALS.values()]
        table.add_row(
            f"{shape.size_name}, {shape.heads}h" + (" +attention" if attention else ""),
            f"{cost:.1f}",
            f"{ms['eager']:.1f}",
            f"{ms['compiled']:.1f}",
            f"{ms['eager'] / ms['compiled']:.2f}x",
            "never" if payback == float("inf") else f"{payback:.0f} steps",
            *net,
        )
    table.caption = (
        f"medians of {args.rounds} alternating rounds x {args.steps} steps after {args.first} steps that "
        f"hold the compilation; threads {torch.get_num_threads()}; the trial columns: what a compiled trial "
        "saves "
        f"({', '.join(f'{k}: {v} steps' for k, v in TRIALS.items())})"
    )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
