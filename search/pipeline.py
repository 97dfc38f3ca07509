"""``distilnas run``: teacher → proxies → mapping and/or supernet search → final distillation → table →
exports → report.

Each stage is skipped when its outputs exist and belong to this config: the fine-tuned teachers come from
the cache, a finished mapping or supernet search from its ``results.json``, finished final trials from the
run's Optuna storage and their saved models, exports that this run already wrote are kept. The run folder
(``output_dir``) records its config and hash in ``config.json``; ``--resume`` with another config is
refused. A search runs only when ``final.students`` asks for its students (``searched``, ``supernet``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distilnas.distill.errors import UserError
from distilnas.distill.glue import get_task
from distilnas.distill.teacher import fine_tuned_teacher, resolve
from distilnas.distill.utils import atomic_write_json
from distilnas.results.storage import open_storage
from distilnas.search.config import RunConfig
from distilnas.search.mapping_search import check_run_folder, run_mapping_search

log = logging.getLogger(__name__)


def recorded_config(run: Path) -> RunConfig:
    """The config a run folder was made with."""
    record = run / "config.json"
    if not record.is_file():
        raise UserError(f"{run}: not a distilnas run folder (no config.json)")
    return RunConfig.model_validate(json.loads(record.read_text())["config"])


def teachers(cfg: RunConfig) -> dict[str, dict[str, float]]:
    """Fine-tune the teacher on every proxy and final task (each once, cached)."""
    source = resolve(cfg.teacher.name)
    out = {}
    for name in dict.fromkeys([*cfg.proxy.tasks, *cfg.final.tasks]):
        ft, cached = fine_tuned_teacher(
            source, get_task(name), cfg.teacher.settings_for(name), cfg.data.glue_dir, cfg.cache_dir
        )
        log.info("teacher on %s: %s%s", name, ft.metrics, " (cached)" if cached else "")
        out[name] = ft.metrics
    return out


def search_stage(
    cfg: RunConfig, kind: str, search: Callable[..., dict[str, Any]], address: str | None
) -> dict[str, Any]:
    """A search's results: read from ``search-<kind>/results.json`` when it finished earlier, else run
    (resuming when it has started)."""
    folder = cfg.output_dir / f"search-{kind}"
    done = folder / "results.json"
    if done.is_file():
        log.info("%s search: finished earlier (%s)", kind, done)
        return dict(json.loads(done.read_text()))
    return search(cfg, resume=(folder / "config.json").is_file(), address=address)


def finish(
    cfg: RunConfig, search: dict[str, Any] | None, final: dict[str, Any], dest: Path
) -> dict[str, Any]:
    """Table, exports and report from a finished final stage (also ``distilnas export`` / ``report``)."""
    from distilnas.results.export import export_students
    from distilnas.results.report import write_report
    from distilnas.results.table import front_hypervolume, measurements, results_table, write_table

    table = results_table(cfg, final)
    write_table(table, cfg.output_dir / "results")
    exports = export_students(cfg, table, final, measurements(cfg, final), dest)
    notes = {"latency": cfg.final.latency.model_dump(), "hypervolume": front_hypervolume(table)}
    report = write_report(cfg.output_dir / "report.html", table, list(final["tasks"]), search, exports, notes)
    return {
        "report": str(report),
        "exports": [str(e) for e in exports],
        "table": table.drop(columns=["metrics"]).to_dict(orient="records"),
        "hypervolume": notes["hypervolume"],
    }


def run_pipeline(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    from distilnas.search.final import run_final
    from distilnas.search.tune_runner import init_ray

    check_run_folder(cfg.output_dir, cfg, resume)
    storage = open_storage(cfg.storage.url, cfg.output_dir)
    init_ray(address or cfg.ray.address)  # an unreachable cluster fails here, before any work
    atomic_write_json(
        cfg.output_dir / "config.json", {"hash": cfg.config_hash(), "config": cfg.model_dump(mode="json")}
    )
    log.info("stage 1/4: teachers")
    teachers(cfg)
    search = None
    if "searched" in cfg.final.students:
        log.info("stage 2/4: layer-mapping search")
        search = search_stage(cfg, "mapping", run_mapping_search, address)
    if "supernet" in cfg.final.students:
        from distilnas.search.supernet_search import run_supernet_search

        log.info("stage 2/4: architecture (supernet) search")
        search_stage(cfg, "supernet", run_supernet_search, address)
    log.info("stage 3/4: final distillation")
    final = run_final(cfg, search, storage, address)
    log.info("stage 4/4: results, exports, report")
    return finish(cfg, search, final, cfg.output_dir / "exports")
