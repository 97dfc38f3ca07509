"""``distilnas run``: teacher → proxies → mapping, joint and/or supernet search → final distillation → table →
exports → report.

Each stage is skipped when its outputs exist and belong to this config: the fine-tuned teachers come from
the cache, a finished mapping or supernet search from its ``results.json``, finished final trials from the
run's Optuna storage and their saved models, exports that this run already wrote are kept. The run folder
(``output_dir``) records its config and hash in ``config.json``; ``--resume`` with another config is
refused. A search runs only when ``final.students`` asks for its students (``searched``, ``joint``,
``supernet``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distilnas.distill.glue import get_task
from distilnas.distill.teacher import FineTunedTeacher, fine_tuned_teacher, resolve
from distilnas.results.export import export_students, export_targets
from distilnas.results.report import write_run_report
from distilnas.results.table import front_hypervolume, results_table, write_table
from distilnas.search.config import RunConfig
from distilnas.search.mirror import push_run
from distilnas.search.rundir import Folder, RunFolder
from distilnas.search.stages.final import run_final, scored
from distilnas.search.stages.joint import run_joint_search
from distilnas.search.stages.mapping import run_mapping_search
from distilnas.search.stages.supernet import run_supernet_search
from distilnas.search.tune import start_ray

log = logging.getLogger(__name__)


def fine_tuned(cfg: RunConfig, tasks: list[str]) -> dict[str, tuple[FineTunedTeacher, bool]]:
    """The config's teacher fine-tuned on each task (from the cache when it was trained before), and
    whether it came from the cache; every task name is checked first."""
    names = list(dict.fromkeys(get_task(t).name for t in tasks))
    source = resolve(cfg.teacher.name)
    out = {}
    for name in names:
        ft, cached = fine_tuned_teacher(
            source, get_task(name), cfg.teacher.settings_for(name), cfg.data.glue_dir, cfg.cache_dir
        )
        log.info("teacher %s on %s: %s%s", source.name, name, ft.metrics, " (cached)" if cached else "")
        out[name] = (ft, cached)
    return out


def search_stage(
    cfg: RunConfig, stage: Folder, search: Callable[..., dict[str, Any]], address: str | None
) -> dict[str, Any]:
    """A search's results: read from its ``results.json`` when it finished earlier, else run (resuming
    when it has started)."""
    if stage.finished:
        log.info(
            "%s search: finished earlier (%s)", stage.path.name.removeprefix("search-"), stage.results_file
        )
        return stage.results()
    return search(cfg, resume=stage.started, address=address)


def finish(cfg: RunConfig, run: RunFolder, search: dict[str, Any] | None, dest: Path) -> dict[str, Any]:
    """Table, exports and report from a finished final stage (also ``distilnas export`` / ``report``)."""
    done = scored(cfg, run, run.final.results())
    table = results_table(done.teacher, done.students, done.tasks)
    export_targets(
        table, dest, done.provenance.config_hash, cfg.final.export_front
    )  # refused: nothing written
    write_table(table, run.results_dir)
    exports = export_students(table, done.sources, done.tasks, done.provenance, dest, cfg.final.export_front)
    notes = {"latency": cfg.final.latency.model_dump(), "hypervolume": front_hypervolume(table)}
    report = write_run_report(run.report, table, done.tasks, search, exports, notes)
    return {
        "tasks": done.tasks,
        "report": str(report),
        "exports": [str(e) for e in exports],
        "table": table.drop(columns=["metrics"]).to_dict(orient="records"),
        "hypervolume": notes["hypervolume"],
    }


def run_pipeline(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    run = RunFolder.of(cfg)
    run.check(cfg, resume)
    start_ray(cfg.ray, address)  # an unreachable cluster fails here, before any work
    storage = run.storage(cfg.storage.url)
    run.record(cfg)
    log.info("stage 1/4: teachers")
    fine_tuned(cfg, [*cfg.proxy.tasks, *cfg.final.tasks])
    search = None
    if cfg.final.mapping_search:
        log.info("stage 2/4: layer-mapping search")
        search = search_stage(cfg, run.mapping, run_mapping_search, address)
        push_run(cfg)  # a run kept at a URI: each finished stage is there
    if "joint" in cfg.final.students:
        log.info("stage 2/4: joint search of shape and mapping")
        search_stage(cfg, run.joint, run_joint_search, address)
        push_run(cfg)
    if "supernet" in cfg.final.students:
        log.info("stage 2/4: architecture (supernet) search")
        search_stage(cfg, run.supernet, run_supernet_search, address)
        push_run(cfg)
    log.info("stage 3/4: final distillation")
    run_final(cfg, search, storage, address)
    push_run(cfg)
    log.info("stage 4/4: results, exports, report")
    return finish(cfg, run, search, run.exports)
