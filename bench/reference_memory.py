"""Benchmark: peak memory of a referenced student's retrieval and reference store on SST-2's training set.

Prints one table: for pools of n training sentences (up to all 67,349), the peak resident memory (RSS)
and the wall time of
- retrieval: every pool row's nearest *other* row by TF-IDF cosine (``ReferenceIndex.nearest``), as the
  final stage gives the training split its references;
- building the store: the teacher's states of the first 32 tokens of every example, from a teacher-output
  cache of the pool (``ReferenceStore.build``).
Each figure is measured in a fresh process: its peak resident memory during the step (``VmHWM``, reset
before the step) less its resident memory before it.
The cache is synthetic (random fp16 states at SST-2's real token counts, MiniLM's width, two layers): the
store reads only those, so no teacher has to run. Sizes whose dense score matrix would not fit in memory
are skipped for an implementation that builds one (``--skip-over GB``).

    python bench/reference_memory.py [--sizes 5000 20000 67349] [--glue-dir DIR] [--work DIR]

Run it with another checkout's Python (``/path/.venv/bin/python bench/reference_memory.py``) to measure
that code side by side: the bench imports ``ReferenceIndex`` and ``ReferenceStore`` from whichever
modules that checkout has.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
task, n, work = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
try:
    from distilnas.distill.retrieval import ReferenceIndex
    from distilnas.distill.reference_store import ReferenceStore, StoreKey
except ImportError:  # a checkout from before the references were split
    from distilnas.distill.references import ReferenceIndex, ReferenceStore, StoreKey
from distilnas.distill.teacher_cache import TeacherCache
texts = json.loads((work / "texts.json").read_text())[:n]
index = ReferenceIndex.build(texts)
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
base = status("VmRSS")
start = time.perf_counter()
if task == "retrieval":
    rows = index.nearest(texts, rows=range(len(texts)))
    assert all(int(r) != i for i, r in enumerate(rows))
else:
    cache = TeacherCache(work / f"cache-{n}")
    key = StoreKey("bench", index.fingerprint, "bench", 1, 32)
    ReferenceStore.build(work / f"store-{n}", cache, index, key)
seconds = time.perf_counter() - start
print(json.dumps({"peak_bytes": max(status("VmHWM") - base, 0), "seconds": seconds}))
"""


def sst2(glue_dir: Path) -> list[str]:
    rows = (glue_dir / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [r.split("\t")[0] for r in rows]


def synthetic_cache(folder: Path, lengths: list[int], width: int = 384, layers: int = 1) -> None:
    """A teacher-output cache in the real format (states random, shapes SST-2's)."""
    import numpy as np
    import xxhash

    if (folder / "index.json").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = int(offsets[-1])
    hidden = np.memmap(folder / "hidden.f16", np.float16, "w+", shape=(tokens, layers + 1, width))
    rng = np.random.default_rng(0)
    for s in range(0, tokens, 1 << 16):
        e = min(tokens, s + (1 << 16))
        hidden[s:e] = rng.standard_normal((e - s, layers + 1, width), dtype=np.float32).astype(np.float16)
    hidden.flush()
    del hidden
    offsets.tofile(folder / "offsets.i64")

    def digest(path: Path) -> str:
        h = xxhash.xxh64()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        return h.hexdigest()

    files = {
        n: {"bytes": (folder / n).stat().st_size, "xxh64": digest(folder / n)}
        for n in ("hidden.f16", "offsets.i64")
    }
    index = {
        "format": "teacher-outputs-v2", "fingerprint": "bench", "teacher": "bench", "data": "bench",
        "max_length": 128, "fields": ["hidden"], "shapes": {"hidden": [tokens, layers + 1, width]},
        "heads": 12, "hidden_size": width, "examples": len(lengths), "tokens": tokens, "files": files,
    }  # fmt: skip
    (folder / "index.json").write_text(json.dumps(index))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 67349])
    parser.add_argument(
        "--glue-dir", type=Path, default=Path(os.environ.get("GLUE_DIR", "../shared/data/glue"))
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/distilnas-bench-references"))
    parser.add_argument(
        "--skip-over", type=float, default=16.0, help="skip a dense n x n matrix above this many GB"
    )
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoTokenizer

    from distilnas.distill.teacher import resolve

    args.work.mkdir(parents=True, exist_ok=True)
    texts = sst2(args.glue_dir)
    (args.work / "texts.json").write_text(json.dumps(texts))
    tok = AutoTokenizer.from_pretrained(resolve("minilm-l6").location)
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=128)["input_ids"]]
    dense = hasattr(__import__("distilnas.distill", fromlist=["references"]), "references")
    table = Table(title=f"reference memory ({'dense scores' if dense else 'chunked'}, {sys.executable})")
    for col in ("pool rows", "step", "peak RSS (MB)", "seconds"):
        table.add_column(col, justify="right")
    for n in args.sizes:
        n = min(n, len(texts))
        synthetic_cache(args.work / f"cache-{n}", lengths[:n])
        for task in ("retrieval", "store"):
            if task == "retrieval" and dense and 8 * n * n / 1e9 > args.skip_over:
                table.add_row(f"{n:,}", task, f"> {8 * n * n / 1e6:,.0f} (n x n float64, skipped)", "")
                continue
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, task, str(n), str(args.work)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                table.add_row(f"{n:,}", task, "failed", proc.stderr.strip().splitlines()[-1][:60])
                continue
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            table.add_row(f"{n:,}", task, f"{out['peak_bytes'] / 1e6:,.0f}", f"{out['seconds']:.1f}")
            del start
    Console().print(table)


if __name__ == "__main__":
    main()
