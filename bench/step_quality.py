"""Benchmark: does a faster step learn the same? Dev scores of one student, paired by seed, per variant.

Runs ``distilnas distill`` on ``configs/plain-minilm-3m.yaml`` (a 2L-96 student: general distillation,
then both task stages) once per seed and variant, each in its own output folder, and prints each
variant's dev score per task and seed, and each task stage's final training loss (a finer sign of
learning the same than a small dev set's score), mean ± std, and the paired difference against the first
variant with its 95% interval (t over seeds). Variants change every distillation stage:

- ``default``: the config as it is (``precision: auto``: bf16 autocast where the machine has it);
- ``fp32``: ``precision: fp32``;
- ``rows``: ``embedding_updates: rows`` (the word-embedding table trained by the rows a batch has).

A variant name may carry a prefix naming the code that ran it: score the code before a change with
``PYTHONPATH`` at an older tree and ``--variants before-default``, then table everything with
``--variants default,fp32,rows,before-default`` (finished runs are read back, so the bench resumes and a
prefixed variant's runs are the older tree's).

    python bench/step_quality.py [--seeds 0,1,2] [--tasks sst2,mrpc] [--variants default,fp32,rows]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

STAGES = ("general", ("task", "intermediate"), ("task", "prediction"))
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "fp32": {"precision": "fp32"},
    "rows": {"embedding_updates": "rows"},
}
"""What each variant sets in every distillation stage."""
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
"""Two-sided 95% t quantiles by degrees of freedom."""


def paired_interval(diffs: list[float]) -> tuple[float, float]:
    """Mean of paired differences and the half-width of its 95% t interval (nan with one pair)."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, math.nan
    return mean, T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def variant_config(base: dict, variant: str, seed: int, out: Path) -> dict:
    cfg = json.loads(json.dumps(base))
    cfg["seed"] = seed
    cfg["output_dir"] = str(out)
    for stage in STAGES:
        section = cfg["distill"]
        for key in stage if isinstance(stage, tuple) else (stage,):
            section = section.setdefault(key, {})
        section.update(VARIANTS[variant])
    return cfg


def run(cfg: dict, folder: Path, tasks: list[str]) -> dict[str, float]:
    """Dev score per task of one run (read back when finished before)."""
    done = folder / "scores.json"
    if done.is_file():
        return dict(json.loads(done.read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "distilnas", "distill", str(path), "--json"]
    for t in tasks:
        cmd += ["-t", t]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{path}: distilnas distill failed:\n{proc.stderr[-2000:]}")
    tasks_out = json.loads(proc.stdout)["tasks"]  # a task's score: the mean of its metrics, as GLUE's
    scores = {t: statistics.mean(v["distilled"].values()) for t, v in tasks_out.items()}
    done.write_text(json.dumps(scores))
    return scores


def stage_losses(folder: Path, tasks: list[str]) -> dict[str, float]:
    """Each task's final running loss of its two stages, from the saved student's record."""
    out = {}
    for t in tasks:
        record = next(folder.glob(f"students/*/{t}/student.json"))
        outcome = json.loads(record.read_text())["outcome"]
        for stage in ("intermediate", "prediction"):
            out[f"{t} {stage} loss"] = float(outcome[f"{stage}_loss"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/plain-minilm-3m.yaml")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tasks", default="sst2,mrpc")
    ap.add_argument("--variants", default="default,fp32,rows")
    ap.add_argument("--out", default="runs/bench-step-quality", help="one folder per variant and seed")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks, variants = args.tasks.split(","), args.variants.split(",")
    text = os.path.expandvars(Path(args.config).read_text())
    base = yaml.safe_load(_defaults(text))
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for name in variants:
        variant = name.rsplit("-", 1)[-1]  # before-default: the default variant, run by another tree
        if variant not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
        for seed in seeds:
            folder = Path(args.out) / f"{name}-seed{seed}"
            scores.setdefault(name, {})[seed] = run(
                variant_config(base, variant, seed, folder), folder, tasks
            ) | stage_losses(folder, tasks)
    measures = [*tasks, *(f"{t} {stage} loss" for t in tasks for stage in ("intermediate", "prediction"))]
    table = Table(
        title=f"dev score and final training loss by seed ({', '.join(map(str, seeds))}), {args.config}"
    )
    for col in ("variant", "task", "per seed", "mean ± std", "vs first variant (paired, 95%)"):
        table.add_column(col, justify="right")
    first = next(iter(scores))
    for name, by_seed in scores.items():
        for t in measures:
            values = [by_seed[s][t] for s in seeds]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            digits = 4 if t.endswith("loss") else 2
            diff = "—"
            if name != first:
                mean, half = paired_interval([by_seed[s][t] - scores[first][s][t] for s in seeds])
                diff = f"{mean:+.{digits}f} ± {half:.{digits}f}"
            table.add_row(
                name,
                t,
                " ".join(f"{v:.{digits}f}" for v in values),
                f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}",
                diff,
            )
    Console(width=160).print(table)


def _defaults(text: str) -> str:
    """Expand ``${VAR:-default}`` as the configs write it (``os.path.expandvars`` keeps those)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m.group(1), m.group(2)), text)


if __name__ == "__main__":
    main()
