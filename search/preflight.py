"""Preflight: what a command can check before its first expensive step, checked first.

The config against the teacher's config alone (no weights): the student's shape, heads, Kronecker factors
and references, how it starts, the mapping, the search spaces; that every task has the splits its stage
reads; the corpus files (readable, UTF-8); the Ray address; the storage URL; that ``output_dir`` can be
written; and the disk space the teacher-output caches it will build need (estimated from rows, fields and
layers). A failure is one line and exit code 2, with nothing written — not even a log.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from transformers import PretrainedConfig

from distilnas.distill.corpus import load_corpus
from distilnas.distill.errors import DataError, UserError
from distilnas.distill.glue import get_task, load_split, task_folder
from distilnas.distill.losses import teacher_fields
from distilnas.distill.remote import Remote
from distilnas.distill.students import StudentSpec, student_spec
from distilnas.distill.teacher import WEIGHT_FILES, check_weights, model_config, resolve
from distilnas.results.storage import shown
from distilnas.search.config import RunConfig
from distilnas.search.mirror import pull_run
from distilnas.search.rundir import RunFolder
from distilnas.search.stages.final import hand_student
from distilnas.search.stages.joint import joint_space
from distilnas.search.stages.supernet import checked_space
from distilnas.search.tune import check_nodes, start_ray
from distilnas.spaces.mapping import LayerMapping
from distilnas.spaces.mapping_space import MappingSpace

GIB = 1 << 30


def writable(path: Path, what: str) -> None:
    """``path`` is a folder, or can be made one (its nearest existing parent is a writable folder)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what}: {path} is a file, not a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what}: {path} cannot be created or written ({parent} is not a writable folder)")


def run_folder(cfg: RunConfig) -> None:
    """``output_dir`` can be written; for a run kept at a URI, the run storage answers and can be written
    (a probe file, removed), and the run's local copy is then made equal to it, so that the checks of
    the folder that follow see the run as it is kept."""
    if cfg.run_storage:
        remote = Remote(cfg.run_storage)
        probe = remote / f".distilnas-probe-{uuid.uuid4().hex}"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            reason = str(exc).splitlines()[0]
            raise UserError(f"output_dir {remote.base}: cannot write there ({reason})") from None
        pull_run(cfg)
    writable(cfg.output_dir, "output_dir")


def teacher_config(cfg: RunConfig) -> PretrainedConfig:
    """The teacher's config (no weights read); a teacher without weights is refused (it would be
    trained from random weights)."""
    source = resolve(cfg.teacher.name)
    if not source.has_weights:
        raise UserError(f"teacher.name: {cfg.teacher.name} has no weights (no {' or '.join(WEIGHT_FILES)})")
    check_weights(source)
    return model_config(source)


def student(cfg: RunConfig, tcfg: PretrainedConfig) -> StudentSpec:
    """``distill.student`` resolved against the teacher, and able to start as ``init`` says."""
    spec = student_spec(cfg.distill.student, tcfg)
    try:
        spec.kind.check_start(spec, tcfg, cfg.distill.student.init)
    except UserError as exc:
        raise UserError(f"distill.student: {exc}") from None
    return spec


def configured_mapping(cfg: RunConfig, tcfg: PretrainedConfig) -> LayerMapping:
    """``distill.mapping`` for ``distill.student`` onto the teacher."""
    m, n = cfg.distill.student.layers, int(tcfg.num_hidden_layers)
    named = {"uniform": LayerMapping.uniform, "last": LayerMapping.last}
    text = cfg.distill.mapping
    found = named[text](m, n) if text in named else LayerMapping.from_string(text, n)
    if found.student_layers != m:
        raise UserError(f"mapping {found} has {found.student_layers} student layers, the student has {m}")
    return found


def splits(cfg: RunConfig, field: str, tasks: Iterable[str], tests: bool = False) -> None:
    """Every task of ``field`` has, in the local GLUE folder, the splits its stage reads: train and dev
    (and test, whose predictions the final stage writes). The hub is not checked offline."""
    if cfg.data.glue_dir is None:
        return
    for i, name in enumerate(tasks):
        task = get_task(name)
        needed = [task.train_split, *task.eval_splits, *(task.test_splits if tests else ())]
        if None in needed:
            raise UserError(f"{field}[{i}]: {task.name} has no training split (it cannot be trained on)")
        for split in needed:
            folder = task_folder(task, cfg.data.glue_dir)
            if not (folder / task.layouts[str(split)].file).is_file():
                raise UserError(
                    f"{field}[{i}]: {task.name} has no {split} split in {folder} "
                    f"(no {task.layouts[str(split)].file})"
                )


def corpus(cfg: RunConfig, why: str) -> list[str]:
    """The corpus, which ``why`` needs: configured, its files readable UTF-8 text with examples."""
    if cfg.data.corpus is None:
        raise UserError(f"data.corpus: {why} needs a corpus")
    for f in cfg.data.corpus.files:
        check_text(f)
    return load_corpus(cfg.data.corpus) if cfg.data.corpus.files else []


def check_text(path: Path) -> None:
    """A text file that decodes as UTF-8 (the first bad byte is named)."""
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found")
    offset = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.start < len(chunk) - 3:  # not a character cut by the chunk's end
                    raise DataError(f"{path}: not UTF-8 text (byte {offset + exc.start})") from None
            offset += len(chunk)


def ray_reachable(address: str | None) -> None:
    """A ``host:port`` address answers (``auto`` and ``ray://`` are left to Ray's start-up)."""
    if not address or address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"ray.address {address!r}: cannot connect ({exc})") from None


def ray_up(cfg: RunConfig, address: str | None) -> None:
    """Ray started here, or the cluster at ``address`` joined (the last checks: they are the slowest). On
    a cluster, every node must see the run folder as the driver does (the run storage: the driver
    publishes there what trials read from its cache), and GLUE's and the teacher's files, and be able to
    write its own cache."""
    address = address or cfg.ray.address
    ray_reachable(address)
    gpus_here(cfg, address)
    start_ray(cfg.ray, address)
    if address:
        enough_gpus(cfg.ray.gpus_per_trial, ray.cluster_resources().get("GPU", 0), "the Ray cluster")
        readable = {"data.glue_dir": cfg.data.glue_dir} if cfg.data.glue_dir else {}
        teacher = Path(resolve(cfg.teacher.name).location)
        if teacher.is_dir():  # a folder (or the alias's package): students start from its weights
            readable["teacher.name"] = teacher
        run_storage = cfg.run_storage or cfg.output_dir
        check_nodes({"output_dir": run_storage}, readable, {"data.cache_dir": cfg.cache_dir})


def gpus_here(cfg: RunConfig, address: str | None) -> None:
    """Without a cluster's address Ray starts here, with this machine's GPUs."""
    if not address:
        enough_gpus(cfg.ray.gpus_per_trial, torch.cuda.device_count(), "this machine")


def enough_gpus(per_trial: float, gpus: float, where: str) -> None:
    """A trial's GPUs must exist: Ray Tune would wait for them for ever."""
    if per_trial > gpus:
        raise UserError(
            f"ray.gpus_per_trial: {per_trial:g}, but {where} has {gpus:g} GPUs; "
            "use 0 to run the trials on CPUs"
        )


def latency_device(cfg: RunConfig) -> None:
    """``final.latency.device: cuda`` needs CUDA on the machine that times the students (this one)."""
    if cfg.final.latency.device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"final.latency.device: cuda, but this machine has no CUDA device (torch {torch.__version__}); "
            "time on the cpu, or run where the students will be served"
        )


def storage(url: str | None) -> None:
    """An RDB URL that parses, whose driver is installed, and that answers (a SQLite file's folder must
    exist); nothing is created."""
    if url is None:
        return
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            folder = (
                Path(parsed.database).parent if parsed.database and parsed.database != ":memory:" else None
            )
            if folder is not None and not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
                raise UserError(
                    f"storage.url {shown(url)!r}: {folder} is not a writable folder (SQLite makes no folders)"
                )
            return
        engine = create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except (ArgumentError, SQLAlchemyError, ImportError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        if isinstance(exc, ImportError) and make_url(url).get_backend_name() == "postgresql":
            reason += "; pip install 'distilnas[postgres]'"
        raise UserError(f"storage.url {shown(url)!r}: cannot open ({type(exc).__name__}: {reason})") from None


@dataclass
class Cache:
    """A teacher-output cache a command will build: its rows, their tokens (at most), its fields."""

    what: str
    rows: int
    tokens: int
    fields: frozenset[str]


def cache_bytes(cache: Cache, tcfg: PretrainedConfig) -> int:
    """fp16 hidden states of every layer, Q/K/V of every layer, fp32 logits (the cache's layout)."""
    layers, hidden = int(tcfg.num_hidden_layers), int(tcfg.hidden_size)
    per_token = 0
    if "hidden" in cache.fields:
        per_token += (layers + 1) * hidden * 2
    if "qkv" in cache.fields:
        per_token += layers * 3 * hidden * 2
    logits = (
        cache.rows * max(int(getattr(tcfg, "num_labels", 2) or 2), 1) * 4 if "logits" in cache.fields else 0
    )
    return cache.tokens * per_token + logits + 8 * (cache.rows + 1)


def tokens(texts: Iterable[str], max_length: int) -> tuple[int, int]:
    """Rows and an estimate of their tokens (a WordPiece token per 4 characters, plus [CLS] and [SEP],
    at most ``max_length``)."""
    rows, total = 0, 0
    for text in texts:
        rows += 1
        total += min(max_length, math.ceil(len(text) / 4) + 2)
    return rows, total


def disk(cfg: RunConfig, tcfg: PretrainedConfig, caches: list[Cache]) -> None:
    """The caches fit on the cache folder's disk (with a tenth to spare)."""
    need = sum(cache_bytes(c, tcfg) for c in caches)
    root = cfg.cache_dir
    while not root.exists():
        root = root.parent
    free = shutil.disk_usage(root).free
    if need * 1.1 > free:
        parts = ", ".join(f"{c.what} {cache_bytes(c, tcfg) / GIB:.1f} GiB" for c in caches)
        raise UserError(
            f"data.cache_dir: the teacher-output caches need about {need / GIB:.1f} GiB ({parts}), "
            f"{cfg.cache_dir} has {free / GIB:.1f} GiB free"
        )


def corpus_cache(
    texts: list[str], fraction: float, max_length: int, fields: frozenset[str], what: str
) -> Cache:
    rows, total = tokens(texts, max_length)
    share = math.ceil(fraction * rows) / max(rows, 1)
    return Cache(what, math.ceil(fraction * rows), math.ceil(share * total), fields)


def task_caches(
    cfg: RunConfig, tasks: Iterable[str], limit: int | None, spec: StudentSpec | None
) -> list[Cache]:
    """The fine-tuned teachers' caches on the tasks' training rows (the local GLUE folder's)."""
    if cfg.data.glue_dir is None:
        return []
    weights = {**cfg.distill.task.intermediate.losses, **cfg.distill.task.prediction.losses}
    fields = (
        teacher_fields(weights) | {"logits"} | (spec.kind.task_fields(spec) if spec is not None else set())
    )
    out = []
    for name in tasks:
        task = get_task(name)
        data = load_split(task, task.train_split or "train", cfg.data.glue_dir)
        texts = [" ".join(parts) for parts in zip(*(data[f] for f in task.text_fields), strict=True)]
        rows, total = tokens(texts[:limit] if limit else texts, cfg.distill.max_length)
        out.append(Cache(f"{task.name} (fine-tuned teacher)", rows, total, frozenset(fields)))
    return out


# ---------------------------------------------------------------------- per command


def general_fields(cfg: RunConfig) -> frozenset[str]:
    return teacher_fields(cfg.distill.general.losses)


def mapping_space(cfg: RunConfig, tcfg: PretrainedConfig) -> None:
    """The mapping space, and an exhaustive search asked for that it cannot afford."""
    scfg = cfg.search.mapping
    size = MappingSpace.build(
        cfg.distill.student.layers, int(tcfg.num_hidden_layers), scfg.constraints
    ).size()
    if scfg.strategy == "exhaustive" and size > scfg.budget:
        raise UserError(
            f"search.mapping.strategy: exhaustive over {size} valid mappings, more than the budget of "
            f"{scfg.budget} evaluations (population x generations, x2 with random search); raise them, "
            "or choose 'ga' or 'auto'"
        )


def check_mapping_search(cfg: RunConfig, resume: bool, address: str | None) -> None:
    """``distilnas search mapping`` (and the mapping search of ``distilnas run``)."""
    run_folder(cfg)
    RunFolder.of(cfg).mapping.check(cfg, resume)
    tcfg = teacher_config(cfg)
    student(cfg, tcfg)
    mapping_space(cfg, tcfg)
    proxy_inputs(cfg, tcfg, address)


def check_joint_search(cfg: RunConfig, resume: bool, address: str | None) -> None:
    """``distilnas search joint``: the joint space and its budgets, then what the mapping search needs."""
    run_folder(cfg)
    RunFolder.of(cfg).joint.check(cfg, resume)
    tcfg = teacher_config(cfg)
    student(cfg, tcfg)
    joint_budgets(cfg, tcfg)
    latency_device(cfg)
    proxy_inputs(cfg, tcfg, address)


def joint_budgets(cfg: RunConfig, tcfg: PretrainedConfig) -> None:
    """The joint space, its strategy and its parameter budget (the latency budget needs the table)."""
    space = joint_space(cfg, tcfg)
    j = cfg.search.joint
    if j.strategy == "exhaustive" and space.size() > j.budget:
        raise UserError(
            f"search.joint.strategy: exhaustive over {space.size()} valid students, more than the budget of "
            f"{j.budget} evaluations (population x generations); raise them, or choose 'nsga2' or 'auto'"
        )
    smallest = space.smallest()
    if j.max_params is not None and space.params(smallest) > j.max_params:
        raise UserError(
            f"search.joint.max_params: {j.max_params:,} is below the smallest student "
            f"({space.describe(smallest)}, {space.params(smallest):,} parameters)"
        )


def proxy_inputs(cfg: RunConfig, tcfg: PretrainedConfig, address: str | None) -> None:
    """What a proxy search reads: the proxy tasks, the corpus (task-agnostic), the storage, disk, Ray."""
    splits(cfg, "proxy.tasks", cfg.proxy.tasks)
    caches: list[Cache] = []
    if cfg.search.mapping.mode == "task-agnostic":
        texts = corpus(cfg, "the task-agnostic proxy")
        caches.append(
            corpus_cache(
                texts, cfg.proxy.corpus_fraction, cfg.distill.max_length, general_fields(cfg), "corpus"
            )
        )
    else:
        caches += task_caches(cfg, cfg.proxy.tasks, cfg.proxy.train_examples, None)
    storage(cfg.storage.url)
    disk(cfg, tcfg, caches)
    ray_up(cfg, address)


def check_supernet_search(cfg: RunConfig, resume: bool, address: str | None) -> None:
    """``distilnas search supernet`` (and the supernet search of ``distilnas run``)."""
    run_folder(cfg)
    checked_space(cfg)
    RunFolder.of(cfg).supernet.check(cfg, resume)
    tcfg = teacher_config(cfg)
    texts = corpus(cfg, "the supernet's block training")
    cache = corpus_cache(
        texts, cfg.search.supernet.corpus_fraction, cfg.distill.max_length, frozenset({"hidden"}), "corpus"
    )
    latency_device(cfg)
    storage(cfg.storage.url)
    disk(cfg, tcfg, [cache])
    ray_reachable(address or cfg.ray.address)  # Ray starts after the latency table is timed, not beside it
    gpus_here(cfg, address or cfg.ray.address)


def check_run(cfg: RunConfig, resume: bool, address: str | None) -> None:
    """``distilnas run``: every stage the config asks for, before the first teacher is trained."""
    run_folder(cfg)
    run = RunFolder.of(cfg)
    run.check(cfg, resume)
    tcfg = teacher_config(cfg)
    spec = student(cfg, tcfg)
    splits(cfg, "final.tasks", cfg.final.tasks, tests=True)
    texts = corpus(cfg, "the final stage's general distillation")
    caches = [
        corpus_cache(
            texts, cfg.distill.corpus_fraction, cfg.distill.max_length, general_fields(cfg), "corpus"
        )
    ]
    caches += task_caches(cfg, cfg.final.tasks, cfg.distill.train_limit, spec)
    if "joint" in cfg.final.students:
        joint_budgets(cfg, tcfg)
    if "random" in cfg.final.students and not cfg.search.mapping.random_baseline:
        raise UserError(
            "final.students: 'random' needs random search beside the mapping search "
            "(search.mapping.random_baseline: true)"
        )
    for i, shape in enumerate(cfg.final.hand_designed):
        try:
            hand = hand_student(cfg, tcfg, shape)
            hand.kind.check_start(hand.spec, tcfg, hand.init)
        except UserError as exc:
            raise UserError(f"final.hand_designed[{i}]: {exc}") from None
    if cfg.final.mapping_search or "joint" in cfg.final.students:
        if cfg.final.mapping_search:
            mapping_space(cfg, tcfg)
        splits(cfg, "proxy.tasks", cfg.proxy.tasks)
        if not (run.mapping.finished and run.joint.finished):
            caches.append(
                corpus_cache(
                    texts,
                    cfg.proxy.corpus_fraction,
                    cfg.distill.max_length,
                    general_fields(cfg),
                    "proxy corpus",
                )
            )
    if "supernet" in cfg.final.students:
        checked_space(cfg)
    for stage in (run.mapping, run.joint, run.supernet):
        if stage.started:
            stage.check_inputs(cfg)  # reused or resumed only when made from the same inputs
    latency_device(cfg)
    storage(cfg.storage.url)
    disk(cfg, tcfg, caches)
    ray_up(cfg, address)


def check_distill(cfg: RunConfig, tasks: list[str]) -> None:
    """``distilnas distill``."""
    run_folder(cfg)
    tcfg = teacher_config(cfg)
    spec = student(cfg, tcfg)
    configured_mapping(cfg, tcfg)
    splits(cfg, "--task", tasks)
    texts = corpus(cfg, "general distillation")
    caches = [
        corpus_cache(
            texts, cfg.distill.corpus_fraction, cfg.distill.max_length, general_fields(cfg), "corpus"
        )
    ]
    disk(cfg, tcfg, caches + task_caches(cfg, tasks, cfg.distill.train_limit, spec))


def check_teacher(cfg: RunConfig, tasks: list[str]) -> None:
    """``distilnas teacher``."""
    run_folder(cfg)
    teacher_config(cfg)
    splits(cfg, "--task", tasks)
