"""Fidelity of a search's proxy: do proxy scores rank candidates as the full setting does?

``distilnas fidelity RUN --top K --random K [--stage mapping|joint]`` takes the K best candidates (mappings;
or students with their mappings) of a finished mapping (or joint) search and K
others drawn (seeded) from the rest of what it evaluated, re-scores them in the full setting (the config's
``fidelity`` section: more corpus, the whole task training sets, larger step budgets) as Ray Tune trials
recorded in the run's Optuna storage (study ``<prefix>-fidelity-<setting hash>``), and reports Kendall's
tau and Spearman's rho between the proxy and full scores (:mod:`distilnas.proxies.agreement`), overall and
for each rung of successive halving.
Re-running continues: finished candidates are taken from the storage.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from distilnas.distill.errors import UserError
from distilnas.distill.utils import atomic_write_json, fingerprint
from distilnas.proxies.agreement import Candidate, choose, rank_agreement
from distilnas.proxies.mapping_fitness import JointFitness, MappingFitness
from distilnas.search.config import RunConfig, load_config
from distilnas.search.rundir import Folder, RunFolder
from distilnas.search.stages.joint import joint_space
from distilnas.search.stages.mapping import mapping_space, proxy_for, search_with
from distilnas.search.strategies import FixedSearch
from distilnas.search.tune import Recorder, start_ray
from distilnas.spaces.joint_space import JointSpace
from distilnas.spaces.mapping_space import MappingSpace
from distilnas.spaces.rungs import split_rung

log = logging.getLogger(__name__)


KINDS = {"mapping": "mapping", "joint": "student"}
"""The searches whose proxy ``fidelity`` checks, and the attribute their trials name a candidate by."""


def searched_stage(run_dir: Path, kind: str = "mapping") -> tuple[RunFolder, Folder]:
    """The run folder and its ``kind`` search's folder (``run_dir`` may be either)."""
    for run in (RunFolder(run_dir), RunFolder(run_dir.parent)):
        stage = run.joint if kind == "joint" else run.mapping
        if stage.started and run_dir.resolve() in (run.path.resolve(), stage.path.resolve()):
            return run, stage
    folder = "search-joint" if kind == "joint" else "search-mapping"
    raise UserError(f"{run_dir}: not a {kind}-search run folder (no {folder}/config.json)")


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
    run_dir: Path,
    top: int,
    n_random: int,
    address: str | None = None,
    config: Path | None = None,
    kind: str = "mapping",
) -> dict[str, Any]:
    """Re-score the ``top`` best and ``n_random`` other candidates of the ``kind`` search (mapping or
    joint) in the full setting; rank agreement overall and per rung of successive halving."""
    if top < 0 or n_random < 0:
        raise UserError("--top and --random: must not be negative")
    if top + n_random < 3:
        raise UserError(f"--top {top} --random {n_random}: a rank correlation needs at least 3 candidates")
    if kind not in KINDS:
        raise UserError(f"--stage {kind!r}: choose one of {', '.join(KINDS)} (or supernet)")
    attr = KINDS[kind]
    run, stage = searched_stage(run_dir, kind)
    cfg = run_config(stage, config)
    run = RunFolder(run.path, cfg.storage.study_prefix)
    storage = run.storage(cfg.storage.url)  # the run folder holds the run's journal
    study = run.studies.joint if kind == "joint" else run.studies.mapping
    if study not in {s.study_name for s in storage.get_all_studies()}:
        raise UserError(f"{stage.path}: no {kind}-search trials in its storage")
    directions = ("maximize", "minimize", "minimize") if kind == "joint" else ("maximize",)
    searched = Recorder(storage, study, directions)
    per_rung: dict[int, dict[str, float]] = {}  # successive halving's rungs (the top one: the full proxy)
    for t in searched.complete():
        text, rung = split_rung(t.user_attrs[attr])
        per_rung.setdefault(cfg.proxy.rungs - 1 if rung is None else rung, {})[text] = float(t.values[0])
    proxy_scores = per_rung.get(cfg.proxy.rungs - 1, {})
    candidates = choose(proxy_scores, top, n_random, cfg.seed)
    if len(candidates) < 3:
        raise UserError(f"{stage.path}: only {len(proxy_scores)} mappings were scored; fidelity needs 3")
    if len(candidates) < top + n_random:
        log.warning("%d candidates (the search scored %d mappings)", len(candidates), len(proxy_scores))

    full = cfg.fidelity.as_proxy(cfg.proxy)
    space: MappingSpace | JointSpace = joint_space(cfg) if kind == "joint" else mapping_space(cfg)
    fitness = JointFitness if kind == "joint" else MappingFitness
    start_ray(cfg.ray, address)
    setting = fingerprint({"full": full.model_dump(mode="json"), "seed": cfg.seed})[:8]
    folder = stage / f"fidelity-{setting}"
    prepared = proxy_for(cfg, folder, full)
    recorder = Recorder(storage, run.studies.fidelity(setting, kind))
    lane = FixedSearch(space, [space.read(c.text) for c in candidates])
    searcher = search_with({"fidelity": lane}, recorder, fitness(prepared), folder, ray=cfg.ray, name=attr)

    per_task = {
        t.user_attrs[attr]: {
            k.removeprefix("score_"): float(v) for k, v in t.user_attrs.items() if k.startswith("score_")
        }
        for t in recorder.complete()
    }
    full_scores = recorder.candidates(attr)
    for c in candidates:
        c.full = full_scores.get(c.text)
        c.scores = per_task.get(c.text)
    scored = [c for c in candidates if c.full is not None]
    if len(scored) < 3:
        raise UserError(f"{folder}: fewer than 3 candidates finished in the full setting")
    results: dict[str, Any] = {
        "run": str(stage.path),
        "search": kind,
        "setting": {"hash": setting, **full.model_dump(mode="json")},
        "proxy": cfg.proxy.model_dump(mode="json"),
        "candidates": [
            {attr: c.text, "chosen": c.chosen, "proxy": c.proxy, "full": c.full, "scores": c.scores}
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
