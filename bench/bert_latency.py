"""Benchmark: the BERT latency table's prediction against whole students timed after it.

Times the table for the joint search space of a config (``search.joint``, at ``final.latency``'s setting),
then builds students of the space's shapes (factorised tables included), times them whole in rounds beside
the table's reference students as the joint search times its front, and prints predicted and measured
milliseconds with the error; the MAPE, raw and corrected by the machine's drift. Medians, one run.

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

from distilnas.distill.measure import round_robin
from distilnas.proxies.bert_latency import measure_bert_table, plain_encoder, reference_encoders
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
    start = time.perf_counter()
    table = measure_bert_table(space.widths(), space.teacher, cfg.final.latency, tables=space.tables())
    table_seconds = time.perf_counter() - start
    rng = random.Random(args.seed)
    shapes = sorted(
        rng.sample(space.all_shapes(), min(args.students, len(space.all_shapes()))), key=space.params
    )
    torch.manual_seed(0)
    students = [plain_encoder(space.decode(g).shape, space.teacher) for g in shapes]
    times = round_robin([*students, *reference_encoders(table, space.teacher)], cfg.final.latency, 3)
    measured, drift = times[: len(students)], table.drift(times[len(students) :])
    rows = [
        {
            "student": str(space.decode(genome)).split(":")[0],
            "params": space.params(genome),
            "predicted_ms": table.predict(space.decode(genome).shape),
            "measured_ms": ms,
        }
        for genome, ms in zip(shapes, measured, strict=True)
    ]
    error = mape([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
    corrected = mape([r["predicted_ms"] * drift for r in rows], [r["measured_ms"] for r in rows])
    figures = {"table_seconds": table_seconds, "mape_percent": error, "drift": drift,
               "mape_drift_corrected_percent": corrected, "students": rows}  # fmt: skip
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    out = Table(
        title=f"BERT latency table: MAPE {error:.1f}% over {len(rows)} students, {corrected:.1f}% corrected "
        f"by the machine's drift ({drift:.3f}x) (table timed in {table_seconds:.0f} s; {table.device}, "
        f"{table.threads} threads)"
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
