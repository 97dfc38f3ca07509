"""Benchmark: one mapping search on two Ray nodes against the same search on one, same seed.

The two nodes run on this machine, one CPU each: the head (in this process, ``ray.cluster_utils``) and a
second node in a mount namespace of its own where the run's cache folder is an empty tmpfs, as on a
machine without the driver's disk (needs root and unshare(1)). Its trials copy what travels from the run
storage and build the teacher's outputs in their own cache. The one-node search runs on a Ray of its own
with both CPUs, so both settings have two trial slots. Each setting starts from an empty cache (the
teacher is fine-tuned, the caches built, as in a first run). Prints wall times and their ratio, the trials
and cache folders per node, and whether both found the same mapping.

With ``--run-storage URI`` (``s3://bucket/bench?endpoint_override=...``, credentials in the environment)
the two-node search keeps its run at the URI (a folder under it per search), so nothing travels through
a shared disk; the one-node search keeps its local run folder.

    python bench/two_nodes.py [--teacher minilm-l6] [--rounds 1] [--run-storage URI] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.table import Table

from distilnas.distill.remote import Remote

CONFIG = """
teacher:
  name: {teacher}
  train: {{epochs: 1, train_limit: 64, batch_size: 16, max_length: 64}}
data:
  glue_dir: {glue}
  cache_dir: {cache}
  corpus: {{files: [{corpus}/wikisplit/tune.tsv]}}
proxy: {{tasks: [rte], corpus_fraction: 0.02, train_examples: 64, general_steps: 8, task_steps: 8}}
distill:
  student: {{layers: 2, init: copy}}
  max_length: 64
  general: {{losses: {{embedding_mse: 1, hidden_mse: 1}}, batch_size: 16}}
  baseline: {{batch_size: 16}}
search:
  mapping: {{population: 6, generations: 2}}
ray: {{cpus_per_trial: 1}}
output_dir: {out}
"""


def start_second_node(address: str, hidden: Path) -> subprocess.Popen[bytes]:
    ray_cli = Path(sys.executable).parent / "ray"
    return subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs {hidden} && exec {ray_cli} start --address={address} --num-cpus=1 "
         "--block --disable-usage-stats"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, RAY_ADDRESS=""),
    )  # fmt: skip


def search(folder: Path, cache: Path, teacher: str, address: str | None, out: str = "") -> dict[str, Any]:
    folder.mkdir(parents=True)
    cfg = folder / "search.yaml"
    glue, corpus = os.environ["GLUE_DIR"], os.environ["DISTILNAS_CORPUS_DIR"]
    out = f"'{out}'" if out else str(folder / "run")
    cfg.write_text(CONFIG.format(teacher=teacher, glue=glue, corpus=corpus, cache=cache, out=out))
    args = [sys.executable, "-m", "distilnas", "search", "mapping", str(cfg), "--json"]
    args += ["--address", address] if address else []
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, RAY_ADDRESS=""))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the search failed ({'two' if address else 'one'} node(s)):\n{proc.stderr[-3000:]}")
    return {"wall": wall, "results": json.loads(proc.stdout)}


def made_by_kind(added: dict[str, int]) -> str:
    """``teacher-outputs 1 (1x)``: how many folders of each kind a node made, and how often each."""
    kinds: dict[str, list[int]] = {}
    for folder, times in added.items():
        kinds.setdefault(folder.split("/")[0], []).append(times)
    return ", ".join(f"{k} {len(t)} ({max(t)}x)" for k, t in sorted(kinds.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="minilm-l6")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of both settings")
    parser.add_argument("--run-storage", default="", help="a URI the two-node search keeps its run at")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if os.getuid() != 0 or shutil.which("unshare") is None:
        sys.exit("a node without the driver's disk needs root and unshare(1)")
    from ray.cluster_utils import Cluster

    root = Path(tempfile.mkdtemp(prefix="distilnas-two-nodes-"))
    hidden = root / "hidden"
    hidden.mkdir()
    ray.shutdown()
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    node = start_second_node(head.address, hidden)
    runs: dict[str, list[dict[str, Any]]] = {"one node": [], "two nodes": []}
    try:
        ray.init(address=head.address, log_to_driver=False)
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            time.sleep(0.5)
        ray.shutdown()
        for r in range(args.rounds):
            for name in ("two nodes", "one node") if r % 2 == 0 else ("one node", "two nodes"):
                tag = f"{name.replace(' ', '-')}-{r}"
                address = head.address if name == "two nodes" else None
                out = f"{Remote(args.run_storage).child(tag).uri}" if address and args.run_storage else ""
                runs[name].append(search(root / tag, hidden / f"{tag}-cache", args.teacher, address, out))
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)
        head.shutdown()

    figures = {
        name: {
            "wall_seconds": statistics.median(r["wall"] for r in rs),
            "ray_wall_seconds": statistics.median(r["results"]["ray"]["wall_seconds"] for r in rs),
            "trials_per_node": rs[-1]["results"]["ray"]["trials_per_node"],
            "cache_added_per_node": rs[-1]["results"]["ray"]["cache_added_per_node"],
            "best": [r["results"]["best"] for r in rs],
        }
        for name, rs in runs.items()
    }
    shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    kept = f"; two nodes' run kept at {Remote(args.run_storage).base}" if args.run_storage else ""
    table = Table(title=f"mapping search, {args.teacher}, medians of {args.rounds} round(s){kept}")
    for col in ("setting", "process wall s", "Ray wall s", "trials per node", "cache folders made per node"):
        table.add_column(col)
    for name, f in figures.items():
        made = {n: made_by_kind(c) for n, c in f["cache_added_per_node"].items()}
        table.add_row(
            name,
            f"{f['wall_seconds']:.1f}",
            f"{f['ray_wall_seconds']:.1f}",
            "; ".join(f"{n}: {t}" for n, t in f["trials_per_node"].items()),
            "; ".join(f"{n}: {m}" for n, m in made.items()),
        )
    console = Console(width=200)
    console.print(table)
    one, two = figures["one node"], figures["two nodes"]
    console.print(
        f"two nodes / one node: process wall {two['wall_seconds'] / one['wall_seconds']:.2f}x, "
        f"Ray wall {two['ray_wall_seconds'] / one['ray_wall_seconds']:.2f}x; "
        f"same best mapping: {[b['mapping'] for b in one['best']] == [b['mapping'] for b in two['best']]}"
    )


if __name__ == "__main__":
    main()
