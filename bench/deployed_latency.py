"""Benchmark: NAS-BERT students before and after deployment, beside plain hand-designed BERTs.

A NAS-BERT student is distilled in its distillation form (each block enters from and leaves to the
teacher's width) and deployed in its deployed form (those projections fused into one map between block
widths; distill/nas_bert.py). This times both forms of each path, and plain BERT students of hand-designed
shapes (as the final stage builds them for the config's teacher), at ``final.latency``'s setting, in
rounds (``round_robin``: each model once per round, the median of 5 rounds after a warm-up round), with
random weights: latency does not depend on them. Paths come from finished supernet searches (each run's
re-scored students, ``RUN/search-supernet/results.json``) and ``--paths``; without either, the config's
hand-designed paths, the space's smallest path and a seeded sample of the space.

    python bench/deployed_latency.py [CONFIG] [--runs RUN ...] [--paths P ...] [--plain 2L-96 ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from distilnas.distill.bert import BertShape
from distilnas.distill.measure import count_parameters, round_robin
from distilnas.distill.nas_bert import NasBertModel, deployed
from distilnas.distill.teacher import model_config, resolve
from distilnas.proxies.bert_latency import plain_encoder
from distilnas.search.config import load_config
from distilnas.search.stages.supernet import nas_space
from distilnas.spaces.nas_space import NasSpace
from distilnas.spaces.supernet import nas_config


def paths_of(args: argparse.Namespace, space: NasSpace, hand: list[str]) -> list[tuple[str, str]]:
    """(path, where it came from), each path once."""
    found: dict[str, str] = {}
    for run in args.runs:
        for s in json.loads((Path(run) / "search-supernet" / "results.json").read_text())["students"]:
            found.setdefault(s["path"], f"{Path(run).name}{' (front)' if s.get('front') else ''}")
    for p in args.paths:
        found.setdefault(NasSpace.format(space.parse(p)), "--paths")
    if not found:
        for p in hand:
            found.setdefault(NasSpace.format(space.parse(p)), f"hand-designed {p}")
        smallest = [space.block_at(i) for i in space.smallest()]
        found.setdefault(NasSpace.format(smallest), "the space's smallest")
        rng = random.Random(args.seed)
        while len(found) < len(hand) + 1 + args.sample:
            found.setdefault(NasSpace.format(space.sample_path(rng)), "sampled")
    return list(found.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/search-pays-quick.yaml", type=Path)
    parser.add_argument("--runs", nargs="*", default=[], help="run folders with a finished supernet search")
    parser.add_argument("--paths", nargs="*", default=[], help="paths of the space (or shapes, 2L-96)")
    parser.add_argument("--plain", nargs="*", default=["2L-96", "3L-128", "4L-192"], help="plain BERTs")
    parser.add_argument("--sample", type=int, default=4, help="sampled paths when no run or path is given")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    cfg = load_config(args.config)
    space = nas_space(cfg)
    teacher = model_config(resolve(cfg.teacher.name))
    latency = cfg.final.latency
    rows: list[dict[str, Any]] = []
    models = []
    for path, source in paths_of(args, space, cfg.search.supernet.hand_designed):
        trained = NasBertModel(nas_config(space, space.parse(path))).eval()
        for form, model in (("distillation", trained), ("deployed", deployed(trained))):
            rows.append({"student": path, "from": source, "form": form, "params": count_parameters(model)})
            models.append(model)
    for text in args.plain:
        layers, hidden = map(int, re.fullmatch(r"(\d+)L-(\d+)", text).groups())  # type: ignore[union-attr]
        model = plain_encoder(BertShape.like(teacher, layers, hidden), teacher)
        rows.append({"student": f"plain BERT {text}", "from": "hand-designed", "form": "plain"})
        rows[-1]["params"] = count_parameters(model)
        models.append(model)
    for row, ms in zip(rows, round_robin(models, latency, rounds=args.rounds), strict=True):
        row["ms"] = ms
    nas = [r for r in rows if r["form"] != "plain"]
    speedups = [a["ms"] / b["ms"] for a, b in zip(nas[::2], nas[1::2], strict=True)]
    summary = {
        "setting": latency.model_dump(),
        "median_speedup": statistics.median(speedups) if speedups else None,
        "smallest_deployed": min((r for r in nas if r["form"] == "deployed"), key=lambda r: r["params"]),
    }
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=1))
        return
    table = Table(
        title=f"NAS-BERT forms and plain BERTs: batch {latency.batch_size}, sequence {latency.seq_len}, "
        f"{latency.threads or 'torch default'} thread(s); medians of {args.rounds} rounds"
    )
    for col in ("student", "from", "form", "params", "ms", "distillation / deployed"):
        table.add_column(col)
    for i, r in enumerate(rows):
        ratio = f"{speedups[i // 2]:.2f}x" if r["form"] == "deployed" else ""
        params = f"{r['params'] / 1e6:.2f} M"
        table.add_row(r["student"], r["from"], r["form"], params, f"{r['ms']:.2f}", ratio)
    console = Console(width=200)
    console.print(table)
    if speedups:
        median = summary["median_speedup"]
        console.print(f"deployed form: {median:.2f}x faster (median over {len(speedups)} paths)")


if __name__ == "__main__":
    main()
