"""Benchmark: do searched students beat the ones a person would design, at one budget, paired by seed?

Each seed is a whole ``distilnas run`` of the config with that seed, in ``<output_dir>/seed<N>``: its
searches, then every student fully distilled and scored on the config's GLUE tasks (``final.students``:
the searched mapping and its baselines on one student, the hand-designed students, the joint and supernet
fronts in their deployed form). A finished run is read back and an interrupted one resumed (every trained
student is kept), so the table can be printed again at no cost. Within a seed, a difference is paired
(``results/compare.py``):
(a) the searched mapping against uniform, last-layers and random search's best at the same evaluations;
(b, c) each front against each hand-designed student (the ``hand`` students and the uniform one): the best
    front student at most 10% slower (or larger) stands against it.
Differences are GLUE-average points, mean with Student's t 95% interval over the seeds. Each group's
hypervolume is on one reference point (GLUE 0, the teacher's size and latency).

    python bench/search_pays.py [--quick] [CONFIG] [--seeds 0 1 2] [--json]

``--quick`` (configs/search-pays-quick.yaml) took 47 minutes for three seeds on 2 cores, the teachers
cached; the full setting (configs/search-pays.yaml) takes hours: run it in the background.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from distilnas.distill.utils import atomic_write_json
from distilnas.results.compare import compare_runs
from distilnas.search.config import load_config
from distilnas.search.pipeline import run_pipeline


def one_seed(config: Path, seed: int) -> tuple[list[dict[str, Any]], float]:
    """The results table of ``config``'s run at ``seed`` (read back when finished) and the wall seconds it
    has taken, over every call that worked on it (``bench-wall.json`` in its folder)."""
    cfg = load_config(config)
    cfg = cfg.model_copy(update={"seed": seed, "output_dir": cfg.output_dir / f"seed{seed}"})
    wall = cfg.output_dir / "bench-wall.json"
    spent = json.loads(wall.read_text())["seconds"] if wall.is_file() else 0.0
    finished = cfg.output_dir / "results" / "results.json"
    if finished.is_file():
        models = json.loads(finished.read_text())["models"]
        return [{k: v for k, v in m.items() if k != "metrics"} for m in models], spent
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Ray Tune prints its banner: keep stdout for the table
        result = run_pipeline(cfg, resume=(cfg.output_dir / "config.json").is_file())
    spent += time.perf_counter() - start
    atomic_write_json(wall, {"seconds": spent})
    return list(result["table"]), spent


def interval(p: dict[str, Any]) -> str:
    if p["low"] is None:
        return f"{p['mean']:+.2f} (one seed)"
    return f"{p['mean']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]" + (" *" if p["low"] > 0 else "")


def show(
    summary: dict[str, Any], runs: dict[int, list[dict[str, Any]]], walls: dict[int, float], tasks: list[str]
) -> None:
    console = Console(width=200)
    seeds = summary["seeds"]
    table = Table(title=f"every student, every seed (GLUE dev; {', '.join(tasks)})")
    for col in ("seed", "student", "origin", "shape", "params", "latency", *tasks, "GLUE avg"):
        table.add_column(col)
    for s in seeds:
        for r in runs[s]:
            table.add_row(
                str(s), r["model"], r["origin"], r["shape"], f"{r['params'] / 1e6:.2f} M",
                f"{r['latency_ms']:.2f} ms", *[f"{r[t]:.2f}" for t in tasks], f"{r['glue']:.2f}",
            )  # fmt: skip
    console.print(table)

    table = Table(title="students in every seed: GLUE average, mean ± std")
    for col in ("student", "origin", "params", "latency (median)", "GLUE avg", "per seed"):
        table.add_column(col)
    for name, st in summary["students"].items():
        table.add_row(
            name, st["origin"], f"{st['params'] / 1e6:.2f} M", f"{st['latency_ms']:.2f} ms",
            f"{st['glue_mean']:.2f} ± {st['glue_std']:.2f}", " ".join(f"{g:.2f}" for g in st["glue"]),
        )  # fmt: skip
    console.print(table)

    table = Table(title="paired by seed: difference in GLUE points, mean [95% interval] (* above 0)")
    for col in ("comparison", "difference", "per seed", "matched front students"):
        table.add_column(col)
    for base, p in summary["mapping"].items():
        table.add_row(
            f"searched mapping - {base}", interval(p), " ".join(f"{d:+.2f}" for d in p["differences"]), ""
        )
    for front, found in summary["fronts"].items():
        for key, p in found.items():
            name, by = key.split("@")
            what = "latency" if by == "latency_ms" else "parameters"
            table.add_row(
                f"{front} front - {name} (≤ +10% {what})", interval(p),
                " ".join(f"{d:+.2f}" for d in p["differences"]), " ".join(p["matched"]),
            )  # fmt: skip
    console.print(table)

    table = Table(title="does a front student match or dominate the hand-designed one (GLUE, size, latency)?")
    for col in ("front", "hand-designed", *[f"seed {s}" for s in seeds]):
        table.add_column(col)
    for front, per_hand in summary["dominance"].items():
        for name, per_seed in per_hand.items():
            table.add_row(front, name, *[found or "no" for found in per_seed])
    console.print(table)

    table = Table(title="hypervolume (GLUE ↑, params ↓, latency ↓; reference: GLUE 0, the teacher)")
    for col in ("students", "mean ± std", "per seed"):
        table.add_column(col)
    for group, h in summary["hypervolume"].items():
        table.add_row(group, f"{h['mean']:.4f} ± {h['std']:.4f}", " ".join(f"{v:.4f}" for v in h["per_seed"]))
    console.print(table)
    console.print("wall time per seed: " + ", ".join(f"seed {s}: {walls[s] / 60:.1f} min" for s in seeds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, help="default: configs/search-pays.yaml")
    parser.add_argument("--quick", action="store_true", help="configs/search-pays-quick.yaml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    config = args.config or Path(f"configs/search-pays{'-quick' if args.quick else ''}.yaml")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    runs, walls = {}, {}
    for seed in args.seeds:
        runs[seed], walls[seed] = one_seed(config, seed)
    summary = compare_runs(runs)
    if args.json:
        print(json.dumps({"summary": summary, "runs": runs, "wall_seconds": walls}, indent=1))
        return
    show(summary, runs, walls, list(load_config(config).final.tasks))


if __name__ == "__main__":
    main()
