"""Fidelity of inherited weights: do the supernet's scores rank students as standalone distillation does?

``distilnas fidelity RUN --stage supernet --top K --random K`` takes the K re-scored students with the
lowest inherited-weight loss and K drawn (seeded) from the rest, and trains each *alone*, as Ray Tune
trials recorded in study ``<prefix>-supernet-fidelity``:

- it starts where the supernet started (the same seeded, teacher-derived initialisation, extracted for
  its path), never from the supernet's trained weights;
- general distillation on the search's corpus sample (the held-out rows excluded): the hidden-state MSE
  at every block boundary against the teacher's cached states, ``fidelity.general_steps`` steps;
- its held-out loss as the inherited score measures it, then fine-tuning on each of the ``fidelity``
  tasks (``fidelity.train_examples`` rows, ``fidelity.task_steps`` steps, the ``distill.baseline``
  settings) and the dev score.

It reports Kendall's tau and Spearman's rho between the inherited score (minus the loss) and each of
the standalone held-out loss (minus) and the mean dev score. A rerun takes finished students from the
storage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import BertConfig

from distilnas.distill.config import DistillSettings
from distilnas.distill.data import TokenizedSplit, tokenize_split
from distilnas.distill.distiller import CachedTeacher, Distiller
from distilnas.distill.errors import UserError
from distilnas.distill.finetune import evaluate, train
from distilnas.distill.glue import get_task
from distilnas.distill.metrics import task_score
from distilnas.distill.students import kind_of_model
from distilnas.distill.teacher import load_tokenizer, resolve
from distilnas.distill.utils import atomic_write_json
from distilnas.proxies.agreement import choose, rank_agreement
from distilnas.proxies.block_proxy import BlockProxy
from distilnas.proxies.latency import LatencyTable
from distilnas.search.config import RunConfig
from distilnas.search.rundir import RunFolder
from distilnas.search.stages.supernet import HeldOut, nas_space
from distilnas.search.stages.supernet_blocks import BlockTrainer, BlockWork
from distilnas.search.tune import Job, JobSearcher, Recorder, run_trials, start_ray
from distilnas.spaces.supernet import extract

log = logging.getLogger(__name__)


@dataclass
class StandaloneWork:
    """One student trained alone (picklable: the run's config as JSON, paths)."""

    config: dict[str, Any]
    proxy: BlockProxy
    table: LatencyTable
    folder: str

    def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        cfg = RunConfig.model_validate(self.config)
        sn, f, p = cfg.search.supernet, cfg.fidelity, self.proxy
        space = nas_space(cfg)
        path = space.parse(job["path"])
        work = BlockWork(p, space, sn, self.table, self.folder)
        start = [BlockTrainer(work, b).fresh().state_dict() for b in range(space.blocks)]
        student = extract(space, path, start).train()
        pairs = list(enumerate(space.boundaries(), start=1))  # block b's output <-> its teacher layer
        general = DistillSettings(
            losses={"hidden_mse": 1.0},
            steps=f.general_steps,
            batch_size=sn.batch_size,
            lr=sn.lr,
            seed=cfg.seed,
        )
        corpus = p.corpus().select(p.train_rows.tolist())
        distilled = Distiller(student, CachedTeacher(p.cache()), pairs, general).fit(
            corpus, pad_id=p.pad_id, desc="standalone: general"
        )
        held_out = HeldOut(space, p, sn.batch_size, sn.score_batches)(student)
        tok = load_tokenizer(resolve(cfg.teacher.name))
        scores = {}
        for name in f.tasks or cfg.proxy.tasks:
            task = get_task(name)
            labels = BertConfig(id2label=dict(enumerate(task.label_names or ("score",))))
            model = kind_of_model(student).with_head(student, labels)
            data = tokenize_split(
                task,
                task.train_split or "train",
                tok,
                p.max_length,
                cfg.data.glue_dir,
                cfg.cache_dir,
                f.train_examples,
            )
            settings = cfg.distill.baseline.model_copy(
                update={"max_steps": f.task_steps, "max_length": p.max_length, "seed": cfg.seed}
            )
            train(model, TokenizedSplit(task, "train", data.dataset), settings, p.pad_id)
            evals = [
                tokenize_split(task, s, tok, p.max_length, cfg.data.glue_dir, cfg.cache_dir)
                for s in task.eval_splits
            ]
            scores[name] = task_score(evaluate(model, evals, pad_id=p.pad_id).metrics)
        return {
            "path": job["path"],
            "score": sum(scores.values()) / len(scores),
            "tasks": scores,
            "held_out_loss": held_out,
            "distill_loss": distilled.loss,
            "distill_seconds": distilled.seconds,
        }


def run_supernet_fidelity(
    run_dir: Path, top: int, n_random: int, address: str | None = None
) -> dict[str, Any]:
    if top < 0 or n_random < 0:
        raise UserError("--top and --random: must not be negative")
    if top + n_random < 3:
        raise UserError(f"--top {top} --random {n_random}: a rank correlation needs at least 3 students")
    stage = RunFolder(run_dir).supernet
    if not stage.finished:
        raise UserError(f"{run_dir}: no finished supernet search (no search-supernet/results.json)")
    cfg = stage.recorded_config()
    run = RunFolder(run_dir, cfg.storage.study_prefix)
    # trials run in folders of their own: every path they read is made absolute here
    glue = cfg.data.glue_dir.resolve() if cfg.data.glue_dir else None
    if Path(cfg.teacher.name).exists():
        cfg = cfg.model_copy(
            update={"teacher": cfg.teacher.model_copy(update={"name": str(Path(cfg.teacher.name).resolve())})}
        )
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"glue_dir": glue, "cache_dir": cfg.cache_dir.resolve()})}
    )
    results = stage.results()
    inherited = {s["path"]: -s["inherited_loss"] for s in results["students"]}
    candidates = choose(inherited, top, n_random, cfg.seed)
    if len(candidates) < 3:
        raise UserError(f"{run_dir}: only {len(inherited)} students were re-scored; fidelity needs 3")
    proxy = BlockProxy(**json.loads((stage / "proxy.json").read_text()))
    table = LatencyTable.from_json(json.loads((stage / "latency.json").read_text())["table"])
    recorder = Recorder(run.storage(cfg.storage.url), run.studies.supernet_fidelity)
    done = recorder.jobs()

    def record(job: Job, outcome: dict[str, Any] | None, reason: str | None = None) -> None:
        value = None if outcome is None else outcome["score"]
        attrs = {"path": job.config["path"], **({"error": reason} if reason else {})}
        recorder.job(job.id, outcome, value, attrs=attrs)

    jobs = [Job(f"student{i + 1}", {"path": c.text}) for i, c in enumerate(candidates)]
    done = {j.id: done[j.id] for j in jobs if j.id in done and done[j.id]["path"] == j.config["path"]}
    searcher = JobSearcher(jobs, done, record, recorder.failures("job"), cfg.ray.retries)
    if len(done) < len(jobs):
        start_ray(cfg.ray, address)
        work = StandaloneWork(cfg.model_dump(mode="json"), proxy, table, str((stage / "fidelity").resolve()))
        run_trials(searcher, work, stage.path, "fidelity", cfg.ray)
    rows = []
    for job, c in zip(jobs, candidates, strict=True):
        outcome = searcher.results.get(job.id)
        rows.append({"path": c.text, "chosen": c.chosen, "inherited": c.proxy, **(outcome or {})})
    scored = [r for r in rows if "score" in r]
    if len(scored) < 3:
        raise UserError(f"{stage.path}: fewer than 3 students finished standalone distillation")
    inherited_scores = [r["inherited"] for r in scored]
    out = {
        "run": str(run_dir),
        "setting": cfg.fidelity.model_dump(mode="json"),
        "students": rows,
        "task_score": rank_agreement(inherited_scores, [r["score"] for r in scored]),
        "held_out_loss": rank_agreement(inherited_scores, [-r["held_out_loss"] for r in scored]),
        "ray": searcher.overhead(),
    }
    atomic_write_json(stage / "fidelity.json", out)
    return out
