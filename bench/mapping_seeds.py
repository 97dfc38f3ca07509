"""Benchmark: the layer-mapping search over seeds — the GA's best mapping against the uniform and
last-layers baselines and random search at the GA's budget, as mean ± standard deviation of proxy fitness.

Each seed is a whole search (``run_mapping_search``) in its own folder: the config's ``output_dir`` for
the config's own seed, ``<output_dir>-seed<N>`` for the others. A finished run's results are read back, an
interrupted one is resumed (nothing finished is trained again), so the table can be re-printed.

    python bench/mapping_seeds.py [CONFIG] [--seeds 0 1 2] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from distilnas.search.config import load_config
from distilnas.search.stages.mapping import run_mapping_search


def one_seed(config: Path, seed: int) -> dict[str, Any]:
    cfg = load_config(config)
    mapping = cfg.search.mapping.model_copy(update={"strategy": "ga"})  # the GA is what is measured
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"mapping": mapping})})
    if seed != cfg.seed:
        cfg = cfg.model_copy(update={"seed": seed, "output_dir": Path(f"{cfg.output_dir}-seed{seed}")})
    done = cfg.output_dir / "search-mapping" / "results.json"
    if done.is_file():
        return dict(json.loads(done.read_text()))
    with contextlib.redirect_stdout(sys.stderr):  # Ray Tune prints its banner: keep stdout for the table
        return run_mapping_search(cfg, resume=(done.parent / "config.json").is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/mapping-quick.yaml", type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    rows: dict[str, list[float]] = {"GA best": [], "uniform": [], "last": [], "random best": []}
    runs = {}
    for seed in args.seeds:
        r = one_seed(args.config, seed)
        runs[seed] = r
        rows["GA best"].append(r["ga"]["best"]["fitness"])
        rows["uniform"].append(r["baselines"]["uniform"])
        rows["last"].append(r["baselines"]["last"])
        rows["random best"].append(r["random"]["best"]["fitness"])
    summary = {
        name: {
            "mean": statistics.fmean(v),
            "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "per_seed": dict(zip(args.seeds, v, strict=True)),
        }
        for name, v in rows.items()
    }
    if args.json:
        print(json.dumps({"summary": summary, "runs": runs}, indent=1))
        return
    table = Table(title=f"layer-mapping search over seeds {args.seeds} (proxy fitness, mean ± std)")
    for col in ("strategy", "mean ± std", *[f"seed {s}" for s in args.seeds], "mappings (per seed)"):
        table.add_column(col)
    for name, s in summary.items():
        mappings = {
            "GA best": [runs[x]["ga"]["best"]["mapping"] for x in args.seeds],
            "random best": [runs[x]["random"]["best"]["mapping"] for x in args.seeds],
        }.get(name, [])
        table.add_row(
            name,
            f"{s['mean']:.2f} ± {s['std']:.2f}",
            *[f"{v:.2f}" for v in s["per_seed"].values()],
            " ".join(mappings),
        )
    evals = [f"{runs[x]['ga']['evaluations']}/{runs[x]['random']['evaluations']}" for x in args.seeds]
    walls = [f"{runs[x]['ray']['wall_seconds'] / 60:.1f}" for x in args.seeds if runs[x].get("ray")]
    Console().print(table)
    print(f"evaluations GA/random per seed: {' '.join(evals)}; search wall minutes: {' '.join(walls)}")


if __name__ == "__main__":
    main()
