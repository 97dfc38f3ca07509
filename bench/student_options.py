"""Benchmark: a plain, a Kronecker and a referenced student of about the same size, side by side.

Loads the saved task models of ``distilnas distill configs/plain-minilm-3m.yaml``,
``configs/kronecker-minilm.yaml`` and ``configs/refbert-minilm.yaml`` (each run with ``-t sst2``) and
the MiniLM teacher, and times them round robin in one process (so machine noise hits all alike): the
median ms of a forward pass at batch 1, sequence 128 (a referenced student attends to a full reference
as well), and for the referenced student the median ms to retrieve one input's reference from its store,
measured on dev sentences. Prints parameters, the reference store's size and each model's ratio to the
plain student.

    python bench/student_options.py [--task sst2] [--threads 1] [--repeats 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModel

from distilnas.distill import teacher as _registry  # noqa: F401  (registers every student's model type)
from distilnas.distill.glue import get_task
from distilnas.distill.measure import count_parameters, dummy_inputs, retrieval_latency
from distilnas.distill.reference_store import example_texts
from distilnas.distill.teacher import load_encoder, resolve

RUNS = {
    "plain 2L-96": "runs/plain-minilm-3m/students/2L-96_map3.6of6/models",
    "kronecker 6L-384": "runs/kronecker-minilm/students/6L-384-kron_map1.2.3.4.5.6of6/models",
    "referenced 2L-96": "runs/refbert-minilm/students/2L-96-ref_map3.6of6/models",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--glue-dir", type=Path, default=Path("../shared/data/glue"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {"teacher minilm-l6": load_encoder(resolve("minilm-l6"), attention="sdpa")}
    for name, folder in RUNS.items():
        path = Path(folder) / args.task
        if not (path / "config.json").is_file():
            raise SystemExit(f"{path}: missing; run the distill command in this file's docstring first")
        models[name] = AutoModel.from_pretrained(path, attn_implementation="sdpa")
    inputs = {n: dummy_inputs(m.eval(), 1, args.seq_len, torch.device("cpu")) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in models}
    with torch.inference_mode():
        for n, m in models.items():  # warm-up
            for _ in range(10):
                m(**inputs[n])
        for _ in range(args.repeats):  # round robin
            for n, m in models.items():
                start = time.perf_counter()
                m(**inputs[n])
                times[n].append((time.perf_counter() - start) * 1000)
    store = models["referenced 2L-96"].store
    queries = example_texts(get_task(args.task), "validation", args.glue_dir)[:200]
    retrieval = retrieval_latency(store.lookup, queries)["median_ms"]

    ms = {n: statistics.median(t) for n, t in times.items()}
    ms_total = dict(ms, **{"referenced 2L-96": ms["referenced 2L-96"] + retrieval})
    base = ms_total["plain 2L-96"]
    table = Table(
        title=f"students for {args.task}: batch 1, sequence {args.seq_len}, {args.threads} thread(s)"
    )
    for col in ("model", "params", "store MB", "forward ms", "retrieval ms", "total ms", "total / plain"):
        table.add_column(col, justify="right")
    for n, m in models.items():
        referenced = n.startswith("referenced")
        table.add_row(
            n,
            f"{count_parameters(m):,}",
            f"{store.bytes / 2**20:.1f}" if referenced else "",
            f"{ms[n]:.2f}",
            f"{retrieval:.2f}" if referenced else "",
            f"{ms_total[n]:.2f}",
            f"{ms_total[n] / base:.2f}x",
        )
    Console().print(table)
    print(f"retrieval: median of {len(queries)} {args.task} dev sentences over a pool of {store.examples:,}")


if __name__ == "__main__":
    main()
