"""The NAS-BERT supernet search, end to end (``distilnas search supernet CONFIG``).

1. Proxy: a corpus sample with the teacher's hidden states cached once (proxies/block_proxy.py).
2. Latency table: every part of a student timed on this device (proxies/latency.py).
3. Blocks: one Ray Tune trial per block, block-wise training with progressive shrinking
   (search/supernet_blocks.py); each checkpoints every epoch and resumes.
4. Selection: NSGA-II (Optuna's) over whole students, one surviving candidate per block, on (summed
   block losses, parameters, predicted latency): each evaluated student is a trial of study
   ``<prefix>-supernet``. NAS-BERT combines block candidates the same way, by summed losses.
5. Re-scoring: the estimated front's students (at most ``rescore``, spread over their sizes) and the
   hand-designed ones (``hand_designed``: their blocks survive shrinking, the selection evaluates them
   first, so the search can always find what a person would design) are extracted with the supernet's
   weights and scored end to end on the held-out batches (each block boundary against the teacher's);
   each is a trial of ``<prefix>-supernet-inherited``, and its latency is measured beside the prediction.
6. The front over (inherited loss, parameters, latency of the deployed form) is saved as standalone
   students (``students/<name>``, transformers folders with the tokenizer).

Stage folder ``output_dir/search-supernet``: config.json, proxy.json, latency.json, blocks/block<n>/,
students/, results.json.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import ray
import torch
from safetensors.torch import load_file

from distilnas.distill.corpus import load_corpus
from distilnas.distill.errors import UserError
from distilnas.distill.measure import device_name, serving_device, timed
from distilnas.distill.nas_bert import DEPLOYED, NasBertModel, deployed
from distilnas.distill.teacher import load_tokenizer, model_config, resolve
from distilnas.distill.utils import atomic_dir, atomic_write_json, fingerprint
from distilnas.proxies.block_proxy import BlockProxy, prepare_block_proxy
from distilnas.proxies.latency import FORM as LATENCY_FORM
from distilnas.proxies.latency import LatencyTable, mape, measure_table
from distilnas.results.pareto import non_dominated_sort
from distilnas.search.config import RunConfig
from distilnas.search.rundir import RunFolder
from distilnas.search.stages.supernet_blocks import BlockWork, masked_mse
from distilnas.search.tune import Job, JobSearcher, Recorder, run_trials, shelf, start_ray
from distilnas.spaces.nas_space import NasSpace
from distilnas.spaces.supernet import extract

log = logging.getLogger(__name__)


def nas_space(cfg: RunConfig) -> NasSpace:
    """The config's architecture space for its teacher; a bad setting names its field."""
    tcfg = model_config(resolve(cfg.teacher.name))
    sn = cfg.search.supernet
    try:
        return NasSpace(
            int(tcfg.num_hidden_layers),
            int(tcfg.hidden_size),
            sn.blocks,
            tuple(sn.hidden_sizes),
            tuple(sn.operations),
            vocab_size=int(tcfg.vocab_size),
            max_positions=int(tcfg.max_position_embeddings),
            type_vocab=int(tcfg.type_vocab_size),
        )
    except UserError as exc:
        raise UserError(f"search.supernet.{exc}") from None


def space_summary(space: NasSpace) -> dict[str, Any]:
    """What ``distilnas space count`` reports: the space's settings and its exact path counts."""
    return {
        "layers": space.layers,
        "blocks": space.blocks,
        "layers_per_block": space.block_layers,
        "hidden_sizes": list(space.hidden_sizes),
        "operations": list(space.operations),
        "paths_per_block": [space.block_count()] * space.blocks,
        "paths": space.count(),
    }


def hand_paths(cfg: RunConfig, space: NasSpace) -> list[str]:
    """``search.supernet.hand_designed`` as paths of the space (formatted)."""
    out = []
    for i, text in enumerate(cfg.search.supernet.hand_designed):
        try:
            out.append(NasSpace.format(space.parse(text)))
        except UserError as exc:
            raise UserError(f"search.supernet.hand_designed[{i}]: {exc}") from None
    return out


def checked_space(cfg: RunConfig) -> NasSpace:
    """The space, once everything the search needs from the config is known to be right."""
    space = nas_space(cfg)
    space.boundaries()  # block ends must fall between teacher layers
    hand_paths(cfg, space)
    if cfg.data.corpus is None:
        raise UserError("data.corpus: the supernet's blocks train on a corpus")
    return space


def latency_table(cfg: RunConfig, space: NasSpace, folder: Path) -> LatencyTable:
    """The table for the final stage's latency setting, measured once per setting and space."""
    lat = cfg.final.latency
    device = serving_device(lat)
    key = fingerprint(lat.model_dump(mode="json"), device_name(device), asdict(space), LATENCY_FORM)
    record = folder / "latency.json"
    if record.is_file():
        data = json.loads(record.read_text())
        if data.get("key") == key:
            return LatencyTable.from_json(data["table"])
    table = measure_table(space, lat.batch_size, lat.seq_len, lat.repeats, threads=lat.threads, device=device)
    atomic_write_json(record, {"key": key, "table": table.to_json()})
    return table


class BlockRecorder:
    """Block trials in study ``<prefix>-supernet-blocks`` (value: the survivors' mean held-out loss)."""

    def __init__(self, storage: optuna.storages.BaseStorage, run: RunFolder, blocks: int) -> None:
        self.recorder = Recorder(storage, run.studies.supernet_blocks, directions=("minimize",))
        self.blocks = range(1, blocks + 1)

    def record(self, job: Job, outcome: dict[str, Any] | None, reason: str | None = None) -> None:
        summary = None if outcome is None else {k: v for k, v in outcome.items() if k != "candidates"}
        value = None if outcome is None else -outcome["score"]
        attrs = {"error": reason} if reason else {}
        self.recorder.job(job.id, summary, value, {"block": (job.config["block"] + 1, self.blocks)}, attrs)


def train_blocks(
    cfg: RunConfig,
    space: NasSpace,
    proxy: BlockProxy,
    table: LatencyTable,
    folder: Path,
    recorder: BlockRecorder,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every block as a Ray Tune trial (finished blocks are read back, never retrained)."""
    blocks_dir = folder / "blocks"
    jobs = [Job(f"block{b + 1}", {"block": b}) for b in range(space.blocks)]
    done = {}
    for job in jobs:
        record = blocks_dir / job.id / "result.json"
        if record.is_file():
            done[job.id] = json.loads(record.read_text())
    searcher = JobSearcher(jobs, done, recorder.record, recorder.recorder.failures("job"), cfg.ray.retries)
    work = BlockWork(proxy, space, cfg.search.supernet, table, str(blocks_dir))
    if len(done) < len(jobs):
        run_trials(searcher, work, folder, "blocks", cfg.ray)
    failed = [j.id for j in jobs if not (blocks_dir / j.id / "result.json").is_file()]
    if failed:
        raise RuntimeError(f"supernet blocks failed: {', '.join(failed)} (see the Ray logs in {folder}/ray)")
    results = {j.id: json.loads((blocks_dir / j.id / "result.json").read_text()) for j in jobs}
    return results, searcher.overhead()


# ---------------------------------------------------------------------- selection


def select(
    cfg: RunConfig,
    run: RunFolder,
    storage: optuna.storages.BaseStorage,
    candidates: list[list[dict[str, Any]]],
    space: NasSpace,
    table: LatencyTable,
    hand: list[str],
) -> optuna.Study:
    """NSGA-II (Optuna's) over one candidate per block on (summed block losses, parameters, predicted
    latency), the last two of the whole deployed student (the bridges between blocks depend on both
    neighbours): Optuna's sampler drives this study (ask and tell through ``optimize``).

    Runs ``population x generations`` trials in total, the ``hand`` paths first; a rerun continues up
    to that count."""
    sn = cfg.search.supernet
    study = Recorder(
        storage,
        run.studies.supernet,
        directions=("minimize", "minimize", "minimize"),
        metrics=("summed block loss", "parameters", "predicted latency ms"),
        sampler=optuna.samplers.NSGAIISampler(population_size=sn.population, seed=cfg.seed),
    ).study
    by_path = [{c["path"]: c for c in block} for block in candidates]

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        chosen = [
            by_path[b][trial.suggest_categorical(f"block{b + 1}", sorted(by_path[b]))]
            for b in range(len(by_path))
        ]
        text = "|".join(c["path"] for c in chosen)
        trial.set_user_attr("path", text)
        path = space.parse(text)
        return sum(c["loss"] for c in chosen), float(space.params(path)), table.predict(path)

    todo = sn.population * sn.generations - len(study.trials)
    if not study.trials:  # a person's designs are evaluated whatever the sampler proposes
        for path in hand:
            study.enqueue_trial({f"block{b + 1}": str(block) for b, block in enumerate(space.parse(path))})
    if todo > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(objective, n_trials=todo, show_progress_bar=True)
    return study


def spread(items: list[dict[str, Any]], n: int, key: str) -> list[dict[str, Any]]:
    """At most ``n`` of ``items``, evenly spaced by ``key`` (both ends kept)."""
    items = sorted(items, key=lambda x: x[key])
    if len(items) <= n:
        return items
    picks = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]
    return [items[i] for i in picks]


# ---------------------------------------------------------------------- inherited weights


def supernet_weights(blocks_dir: Path, blocks: int) -> list[dict[str, torch.Tensor]]:
    """Every trained block's state dict; a block not trained yet is a clear error."""
    files = [blocks_dir / f"block{b + 1}" / "weights.safetensors" for b in range(blocks)]
    missing = [b + 1 for b, f in enumerate(files) if not (f.parent / "result.json").is_file()]
    if missing:
        raise UserError(f"{blocks_dir}: supernet block(s) {missing} not trained yet")
    return [load_file(f) for f in files]


class HeldOut:
    """Scores a whole student on the held-out batches: the mean over block boundaries of the
    hidden-state MSE against the teacher, each block fed by the previous *student* block (not by the
    teacher, as in block training)."""

    def __init__(self, space: NasSpace, proxy: BlockProxy, batch_size: int, batches: int) -> None:
        cache, packed = proxy.cache(), proxy.rows()
        self.boundaries = space.boundaries()
        self.held = []
        for rows in proxy.score_batches(batch_size, batches):
            batch = packed.batch(rows, proxy.pad_id)
            views = cache.views(rows, batch["input_ids"].shape[1], hidden_layers=self.boundaries)
            self.held.append((batch, views.hidden))

    @torch.no_grad()
    def __call__(self, model: NasBertModel) -> float:
        model.eval()
        device = next(model.parameters()).device
        losses = []
        for cpu_batch, cpu_teacher in self.held:
            batch = {k: v.to(device) for k, v in cpu_batch.items()}
            teacher = {k: v.to(device) for k, v in cpu_teacher.items()}
            mask = batch["attention_mask"].bool()
            states = model(**batch, output_hidden_states=True).hidden_states
            per_block = [masked_mse(states[b + 1], teacher[t], mask) for b, t in enumerate(self.boundaries)]
            losses.append(float(torch.stack(per_block).mean()))
        return float(np.mean(losses))


def rescore(
    cfg: RunConfig,
    space: NasSpace,
    scorer: HeldOut,
    weights: list[dict[str, torch.Tensor]],
    table: LatencyTable,
    recorder: Recorder,
    estimated: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Inherited-weight scores and measured latency of the chosen students (trials of
    ``<prefix>-supernet-inherited``; ones the storage holds are not scored again)."""
    known = {t.user_attrs["path"]: json.loads(t.user_attrs["record"]) for t in recorder.complete()}
    out = []
    for entry in estimated:
        if known.get(entry["path"], {}).get("form") == DEPLOYED:  # figures of the form measured now
            out.append(known[entry["path"]])
            continue
        path = space.parse(entry["path"])
        start = time.perf_counter()
        model = extract(space, path, weights)
        loss = scorer(model)
        seconds = time.perf_counter() - start
        measured = timed(deployed(model), cfg.final.latency)  # as the final stage times students
        record = {
            **entry,
            "form": DEPLOYED,
            "inherited_loss": loss,
            "params": measured["params"],
            "predicted_ms": table.predict(path),
            "measured_ms": measured["latency"]["ms"],
            "score_seconds": seconds,
        }
        assert record["params"] == space.params(path)  # the space's count is exact
        recorder.add(
            [loss, record["params"], record["measured_ms"]],
            attrs={"path": entry["path"], "record": json.dumps(record)},
        )
        out.append(record)
    return out


def student_name(record: dict[str, Any]) -> str:
    """Provenance in the name (HAT): size, latency, proxy loss, and the path's digest (names never clash)."""
    figures = (
        f"{record['params'] / 1e6:.1f}M_{record['measured_ms']:.1f}ms_loss{record['inherited_loss']:.3f}"
    )
    return f"nas-{figures}_{fingerprint(record['path'])[:6]}"


def save_students(
    cfg: RunConfig,
    space: NasSpace,
    weights: list[dict[str, torch.Tensor]],
    front: list[dict[str, Any]],
    folder: Path,
) -> None:
    tok = load_tokenizer(resolve(cfg.teacher.name))
    for record in front:
        target = folder / "students" / record["name"]
        if (target / "student.json").is_file():
            continue
        model = extract(space, space.parse(record["path"]), weights)
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            atomic_write_json(tmp / "student.json", {**record, "config_hash": cfg.config_hash()})


# ---------------------------------------------------------------------- the command


def run_supernet_search(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    run = RunFolder.of(cfg)
    stage = run.supernet
    folder = stage.path.resolve()  # trials run in folders of their own
    space = checked_space(cfg)
    sn = cfg.search.supernet
    stage.check(cfg, resume)
    storage = run.storage(cfg.storage.url)
    table = latency_table(cfg, space, folder)  # timed before Ray starts its processes beside it
    start_ray(cfg.ray, address)
    stage.record(cfg)

    proxy = prepare_block_proxy(
        cfg.teacher,
        load_corpus(cfg.data.corpus),  # type: ignore[arg-type]  # checked_space: a corpus is set
        sn.corpus_fraction,
        cfg.distill.max_length,
        sn.score_batches * sn.batch_size,
        cfg.cache_dir,
        folder,
        cfg.seed,
        shelf(run.artifacts),
    )
    recorder = BlockRecorder(storage, run, space.blocks)
    blocks, ray_overhead = train_blocks(cfg, space, proxy, table, folder, recorder)
    ordered = [blocks[f"block{b + 1}"] for b in range(space.blocks)]
    ray.shutdown()  # the rest runs here; students are timed without Ray's processes beside them

    start = time.perf_counter()
    hand = hand_paths(cfg, space)
    study = select(cfg, run, storage, [b["candidates"] for b in ordered], space, table, hand)

    def estimate(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
        path = t.user_attrs["path"]
        loss, params, ms = t.values
        entry = {"path": path, "estimated_loss": loss, "params": int(params), "predicted_ms": ms}
        return (entry | {"hand_designed": True}) if path in hand else entry

    estimated = {t.user_attrs["path"]: estimate(t) for t in study.best_trials}
    chosen = spread(list(estimated.values()), sn.rescore, "params")
    done = {t.user_attrs["path"]: t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    chosen += [estimate(done[p]) for p in hand if p not in {c["path"] for c in chosen}]  # always scored
    selection_seconds = time.perf_counter() - start

    weights = supernet_weights(folder / "blocks", space.blocks)
    scorer = HeldOut(space, proxy, sn.batch_size, sn.score_batches)
    inherited = Recorder(
        storage,
        run.studies.supernet_inherited,
        directions=("minimize", "minimize", "minimize"),
        metrics=("inherited loss", "parameters", "measured latency ms"),
    )
    scored = rescore(cfg, space, scorer, weights, table, inherited, chosen)
    fronts = non_dominated_sort([(r["inherited_loss"], r["params"], r["measured_ms"]) for r in scored])
    front = sorted((scored[i] for i in fronts[0]), key=lambda r: r["params"])
    for r in scored:
        r["front"] = any(r is f for f in front)
    for r in front:
        r["name"] = student_name(r)
    save_students(cfg, space, weights, front, folder)

    train_seconds = sum(b["train_seconds"] for b in ordered)
    score_seconds = float(np.median([r["score_seconds"] for r in scored]))
    results = {
        "space": {
            "blocks": space.blocks,
            "layers_per_block": space.block_layers,
            "hidden_sizes": list(space.hidden_sizes),
            "operations": list(space.operations),
            "paths_per_block": space.block_count(),
            "paths": space.count(),
        },
        "blocks": [
            {k: v for k, v in b.items() if k != "candidates"} | {"candidates": len(b["candidates"])}
            for b in ordered
        ],
        "selection": {
            "trials": len(study.trials),
            "estimated_front": len(estimated),
            "rescored": len(scored),
            "seconds": selection_seconds,
        },
        "students": scored,
        "front": [r["name"] for r in front],
        "front_params_span": front[-1]["params"] / front[0]["params"] if front else None,
        "latency": {
            "table": table.to_json(),
            "mape_percent": mape([r["predicted_ms"] for r in scored], [r["measured_ms"] for r in scored]),
        },
        "cost": {
            "supernet_train_seconds": train_seconds,
            "score_seconds_per_student": score_seconds,
            "score_share_of_training": score_seconds / train_seconds if train_seconds else None,
        },
        "ray": ray_overhead,
    }
    stage.write_results(results)
    return results


def extract_student(run_dir: Path, path_text: str, to: Path) -> dict[str, Any]:
    """Save ``path_text`` of the run's trained supernet as a standalone student in ``to``."""
    stage = RunFolder(run_dir).supernet
    if not stage.started:
        raise UserError(f"{run_dir}: no supernet search in this run folder")
    cfg = stage.recorded_config()
    space = nas_space(cfg)
    path = space.parse(path_text)
    if to.exists():
        raise UserError(f"{to}: already exists")
    model = extract(space, path, supernet_weights(stage / "blocks", space.blocks))
    with atomic_dir(to) as tmp:
        model.save_pretrained(tmp)
        load_tokenizer(resolve(cfg.teacher.name)).save_pretrained(tmp)
    return {"path": NasSpace.format(path), "params": space.params(path)}  # as deployed (exact)
