"""Benchmark: the plain-BERT latency table's prediction against whole students timed beside it.

Times the table for the joint search space of a config (``search.joint``, at ``final.latency``'s setting),
then builds students of the space's shapes at each depth, times them whole as the final stage does, and
prints predicted and measured milliseconds with the error; the MAPE last. Medians and ratios, one run.

    python bench/bert_latency.py [CONFIG] [--students 12] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from rich.console import Console
from rich.table import Table

from distilnas.distill.measure import timed
from distilnas.proxies.bert_latency import measure_bert_table, plain_encoder
from distilnas.proxies.latency import mape
from distilnas.search.config import load_config
from distilnas.search.stages.joint import joint_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/joint-quick.yaml")
    parser.add_argument("--students", type=int, default=12, help="students drawn from the space's shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    cfg = load_config(args.config)
    space = joint_space(cfg)
    widths = {(space.hidden[h], space.heads[k], space.intermediate[f]) for h, k, f, _ in space.allowed}
    start = time.perf_counter()
    table = measure_bert_table(widths, space.teacher, cfg.final.latency)
    table_seconds = time.perf_counter() - start
    rng = random.Random(args.seed)
    shapes = rng.sample(space.all_shapes(), min(args.students, len(space.all_shapes())))
    rows = []
    torch.manual_seed(0)
    for genome in sorted(shapes, key=space.params):
        shape = space.decode(genome).shape
        measured = timed(plain_encoder(shape, space.teacher), cfg.final.latency)["latency"]["ms"]
        predicted = table.predict(shape)
        name = f"{shape.size_name}-{shape.heads}h-{shape.intermediate}f"
        rows.append(
            {
                "student": name,
                "params": space.params(genome),
                "predicted_ms": predicted,
                "measured_ms": measured,
            }
        )
    error = mape([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
    if args.json:
        print(json.dumps({"table_seconds": table_seconds, "mape_percent": error, "students": rows}, indent=2))
        return
    out = Table(
        title=f"plain-BERT latency table: MAPE {error:.1f}% over {len(rows)} students "
        f"(table timed in {table_seconds:.0f} s; {table.device}, {table.threads} threads)"
    )
    for col in ("student", "params (M)", "predicted ms", "measured ms", "error %"):
        out.add_column(col)
    for r in rows:
        err = 100 * (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
        out.add_row(r["student"], f"{r['params'] / 1e6:.2f}", f"{r['predicted_ms']:.2f}",
                    f"{r['measured_ms']:.2f}", f"{err:+.1f}")  # fmt: skip
    Console().print(out)


if __name__ == "__main__":
    main()
