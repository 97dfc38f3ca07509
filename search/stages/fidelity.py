"""Fidelity of the mapping search's proxy: do proxy scores rank mappings as the full setting does?

``distilnas fidelity RUN --top K --random K`` takes the K best mappings of a finished mapping search and K
others drawn (seeded) from the rest of what it evaluated, re-scores them in the full setting (the config's
``fidelity`` section: more corpus, the whole task training sets, larger step budgets) as Ray Tune trials
recorded in the run's Optuna storage (study ``<prefix>-fidelity-<setting hash>``), and reports Kendall's
tau and Spearman's rho between the proxy and full scores (:mod:`distilnas.proxies.agreement`).
Re-running continues: finished candidates are taken from the storage.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from distilnas.distill.corpus import load_corpus
from distilnas.distill.errors import UserError
from distilnas.distill.utils import atomic_write_json, fingerprint
from distilnas.proxies.agreement import Candidate, choose, rank_agreement
from distilnas.proxies.mapping_fitness import MappingFitness, prepare_proxy
from distilnas.search.config import RunConfig, load_config
from distilnas.search.rundir import Folder, RunFolder
from distilnas.search.stages.mapping import mapping_space, search_with
from distilnas.search.strategies import FixedSearch
from distilnas.search.tune import Recorder, init_ray
from distilnas.spaces.rungs import split_rung

log = logging.getLogger(__name__)


def mapping_stage(run_dir: Path) -> tuple[RunFolder, Folder]:
    """The run folder and its mapping search's folder (``run_dir`` may be either)."""
    for run in (RunFolder(run_dir), RunFolder(run_dir.parent)):
        if run.mapping.started and run_dir.resolve() in (run.path.resolve(), run.mapping.path.resolve()):
            return run, run.mapping
    raise UserError(f"{run_dir}: not a mapping-search run folder (no search-mapping/config.json)")


def run_config(stage: Folder, config: Path | None) -> RunConfig:
    """The run's recorded config; with ``config``, that file's ``fidelity`` section instead, provided the
    rest of it is the run's (the full setting may be chosen after the search, nothing else)."""
    recorded = stage.recorded_config()
    if config is None:
        return recorded
    given = load_config(config)
    mine, theirs = (c.model_dump(mode="json", exclude={"fidelity"}) for c in (given, recorded))
    if mine != theirs:
        differ = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise UserError(f"{config}: not this run's config (differs in {', '.join(differ)})")
    return recorded.model_copy(update={"fidelity": given.fidelity})


def run_fidelity(
    run_dir: Path, top: int, n_random: int, address: str | None = None, config: Path | None = None
) -> dict[str, Any]:
    if top < 0 or n_random < 0:
        raise UserError("--top and --random: must not be negative")
    if top + n_random < 3:
        raise UserError(f"--top {top} --random {n_random}: a rank correlation needs at least 3 candidates")
    run, stage = mapping_stage(run_dir)
    cfg = run_config(stage, config)
    run = RunFolder(run.path, cfg.storage.study_prefix)
    storage = run.storage(cfg.storage.url)  # the run folder holds the run's journal
    if run.studies.mapping not in {s.study_name for s in storage.get_all_studies()}:
        raise UserError(f"{stage.path}: no mapping-search trials in its storage")
    searched = Recorder(storage, run.studies.mapping)
    per_rung: dict[int, dict[str, float]] = {}  # successive halving's rungs (the top one: the full proxy)
    for t in searched.complete():
        text, rung = split_rung(t.user_attrs["mapping"])
        per_rung.setdefault(cfg.proxy.rungs - 1 if rung is None else rung, {})[text] = float(t.values[0])
    proxy_scores = per_rung.get(cfg.proxy.rungs - 1, {})
    candidates = choose(proxy_scores, top, n_random, cfg.seed)
    if len(candidates) < 3:
        raise UserError(f"{stage.path}: only {len(proxy_scores)} mappings were scored; fidelity needs 3")
    if len(candidates) < top + n_random:
        log.warning("%d candidates (the search scored %d mappings)", len(candidates), len(proxy_scores))

    full = cfg.fidelity.as_proxy(cfg.proxy)
    space = mapping_space(cfg)
    init_ray(address or cfg.ray.address)
    setting = fingerprint({"full": full.model_dump(mode="json"), "seed": cfg.seed})[:8]
    folder = stage / f"fidelity-{setting}"
    texts = load_corpus(cfg.data.corpus) if cfg.data.corpus is not None else None
    prepared = prepare_proxy(
        cfg.teacher,
        full,
        cfg.distill,
        texts,
        cfg.data.glue_dir,
        cfg.cache_dir,
        folder,
        cfg.search.mapping.mode,
        cfg.seed,
    )
    atomic_write_json(folder / "proxy.json", prepared.to_json())
    recorder = Recorder(storage, run.studies.fidelity(setting))
    lane = FixedSearch(space, [space.read(c.text) for c in candidates])
    searcher = search_with({"fidelity": lane}, recorder, MappingFitness(prepared), folder, ray=cfg.ray)

    per_task = {
        t.user_attrs["mapping"]: {
            k.removeprefix("score_"): float(v) for k, v in t.user_attrs.items() if k.startswith("score_")
        }
        for t in recorder.complete()
    }
    full_scores = recorder.candidates("mapping")
    for c in candidates:
        c.full = full_scores.get(c.text)
        c.scores = per_task.get(c.text)
    scored = [c for c in candidates if c.full is not None]
    if len(scored) < 3:
        raise UserError(f"{folder}: fewer than 3 candidates finished in the full setting")
    results: dict[str, Any] = {
        "run": str(stage.path),
        "setting": {"hash": setting, **full.model_dump(mode="json")},
        "proxy": cfg.proxy.model_dump(mode="json"),
        "candidates": [
            {"mapping": c.text, "chosen": c.chosen, "proxy": c.proxy, "full": c.full, "scores": c.scores}
            for c in candidates
        ],
        **rank_agreement([c.proxy for c in scored], [c.full for c in scored if c.full is not None]),
        "rungs": [
            {
                "rung": r,
                "candidates": len(both := [c for c in scored if c.text in scores]),
                **rank_agreement(
                    [scores[c.text] for c in both], [c.full for c in both if c.full is not None]
                ),
            }
            for r, scores in sorted(per_rung.items())
        ],
        "proxy_best_is_full_best": max(scored, key=lambda c: c.proxy)
        is max(scored, key=lambda c: c.full or 0),
        "ray": searcher.overhead(),
    }
    atomic_write_json(stage / "fidelity.json", results)
    return results


def rung_agreement(rung: int, scores: dict[str, float], scored: list[Candidate]) -> dict[str, Any]:
    """How a rung's proxy scores rank the candidates the full setting scored (at least 3 needed)."""
    both = [c for c in scored if c.text in scores and c.full is not None]
    agreement = rank_agreement([scores[c.text] for c in both], [float(c.full or 0.0) for c in both])
    if len(both) < 3:
        agreement = dict.fromkeys(agreement)
    return {"rung": rung, "candidates": len(both), **agreement}
