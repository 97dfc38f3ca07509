"""The ``distilnas`` command line.

Every command that reports figures takes ``--json``: one JSON object on stdout, logs and progress on
stderr. Bad input (a config field, a file, a task name) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from distilnas.distill.errors import UserError

app = typer.Typer(
    name="distilnas",
    help="Compress BERT-family models: search layer mappings and architectures on proxies, then distil.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect the datasets distilnas reads.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console()  # results (tables) on stdout
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (logs go to stderr).")]
ResumeOpt = Annotated[
    bool, typer.Option(help="Continue the run in output_dir: what finished (stages, trials) is kept.")
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster address (auto, or host:port); default: the config's ray.address, else Ray here."
    ),
]
GlueDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--glue-dir", help="Local GLUE folder (glue_data layout). Default: $GLUE_DIR, else the HF hub."
    ),
]


def setup_logging(log_file: Path | None = None, verbose: bool = False) -> None:
    """Logs to stderr (rich), and to ``log_file`` when given; quiet third-party chatter."""
    level = logging.DEBUG if verbose else logging.INFO
    handlers: list[logging.Handler] = [RichHandler(console=err, show_path=False, rich_tracebacks=False)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(fh)
    logging.basicConfig(level=level, handlers=handlers, format="%(message)s", force=True)
    import datasets
    import transformers

    for chatty in ("choreographer", "kaleido", "logistro"):  # the report's PNG export
        logging.getLogger(chatty).setLevel(logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def emit(obj: dict[str, Any], as_json: bool, table: Table | None = None) -> None:
    """Report a result: JSON on stdout, or a table for people."""
    if as_json:
        sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    elif table is not None:
        out.print(table)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (file descriptor 1, so Ray's and its workers' prints too) to
    stderr for the block, keeping stdout for the one JSON result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def glue_dir_or_env(glue_dir: Path | None) -> Path | None:
    if glue_dir is not None:
        return glue_dir
    env = os.environ.get("GLUE_DIR")
    return Path(env) if env else None


def fmt(x: float) -> str:
    return f"{x:.2f}"


# --------------------------------------------------------------------------- data


@data_app.command("check")
def data_check(glue_dir: GlueDirOpt = None, as_json: JsonOpt = False) -> None:
    """Parse every GLUE file in the folder and print rows per task and split."""
    from distilnas.distill.glue import count_rows

    setup_logging()
    folder = glue_dir_or_env(glue_dir)
    if folder is None:
        raise UserError("--glue-dir: no GLUE folder given and GLUE_DIR is not set")
    counts = count_rows(folder)
    if not counts:
        raise UserError(f"{folder}: no GLUE task folders found (expected CoLA/, SST-2/, ...)")
    table = Table(title=f"GLUE rows in {folder}")
    order = ["train", "validation", "validation_matched", "validation_mismatched", "test", "test_matched"]
    splits = sorted(
        {s for c in counts.values() for s in c}, key=lambda s: order.index(s) if s in order else 99
    )
    table.add_column("task")
    for s in splits:
        table.add_column(s, justify="right")
    for task, c in counts.items():
        table.add_row(task, *[f"{c[s]:,}" if s in c else "-" for s in splits])
    emit({"glue_dir": str(folder), "rows": counts}, as_json, table)


# --------------------------------------------------------------------------- teacher


@app.command()
def teacher(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    task: Annotated[list[str], typer.Option("--task", "-t", help="GLUE task; repeat for several.")],
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the config's teacher on GLUE tasks, cache it, and score it on dev.

    A teacher already fine-tuned with the same (teacher, task, data, settings) comes from the cache.
    """
    from distilnas.distill.glue import get_task
    from distilnas.distill.metrics import glue_average
    from distilnas.distill.teacher import fine_tuned_teacher, resolve
    from distilnas.search.config import load_config

    cfg = load_config(config)
    tasks = [get_task(t) for t in task]  # every name checked before any work
    setup_logging(cfg.output_dir / "logs" / "teacher.log")
    log = logging.getLogger("distilnas.teacher")
    source = resolve(cfg.teacher.name)
    results: dict[str, Any] = {}
    for t in tasks:
        log.info("teacher %s on %s", source.name, t.name)
        ft, cached = fine_tuned_teacher(
            source, t, cfg.teacher.settings_for(t.name), cfg.data.glue_dir, cfg.cache_dir
        )
        log.info("%s %s: %s (%s)", t.name, "cached" if cached else "trained", ft.metrics, ft.path)
        results[t.name] = {
            "metrics": ft.metrics,
            "path": str(ft.path),
            "cached": cached,
            "fingerprint": ft.fingerprint,
        }
    average = glue_average({k: v["metrics"] for k, v in results.items()})
    table = Table(title=f"teacher {source.name} (dev)")
    for col in ("task", "metrics", "cached", "path"):
        table.add_column(col)
    for name, r in results.items():
        metrics = ", ".join(f"{k} {fmt(v)}" for k, v in r["metrics"].items())
        table.add_row(name, metrics, "yes" if r["cached"] else "no", r["path"])
    table.caption = f"GLUE average over these tasks: {fmt(average)}"
    emit({"teacher": source.name, "tasks": results, "glue_average": average}, as_json, table)


# --------------------------------------------------------------------------- evaluate


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="HF model name, model folder, or 'minilm-l6'.")],
    task: Annotated[str, typer.Option("--task", "-t", help="GLUE task.")],
    train: Annotated[bool, typer.Option("--train/--no-train", help="Fine-tune on train first.")] = True,
    epochs: Annotated[float, typer.Option(help="Training epochs.")] = 3.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-5,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 32,
    max_length: Annotated[int, typer.Option(help="Maximum tokens per example.")] = 128,
    train_limit: Annotated[int | None, typer.Option(help="Use only the first N training rows.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 42,
    predictions: Annotated[
        Path | None,
        typer.Option(help="Also write test-set predictions (GLUE server format) into this folder."),
    ] = None,
    glue_dir: GlueDirOpt = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder (default $DISTILNAS_CACHE).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune MODEL on a GLUE task's train set and score its dev set (or only score, with --no-train)."""
    from distilnas.distill.config import TrainSettings
    from distilnas.distill.data import tokenize_split
    from distilnas.distill.finetune import finetune_and_evaluate, predict
    from distilnas.distill.glue import get_task, predictions_to_labels, write_submission
    from distilnas.distill.teacher import has_head_for, load_for_task, load_tokenizer, resolve
    from distilnas.distill.utils import default_cache_dir

    setup_logging()
    t = get_task(task)
    if predictions is not None and predictions.exists() and any(predictions.iterdir()):
        raise UserError(f"{predictions}: predictions folder exists and is not empty")
    settings = TrainSettings(
        epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, train_limit=train_limit, seed=seed
    )
    source = resolve(model)
    if not train and not has_head_for(source, t):
        raise UserError(f"{model}: has no trained {t.name} head ({t.num_labels} labels); drop --no-train")
    tok = load_tokenizer(source)
    net = load_for_task(source, t, seed)
    cache = cache_dir or default_cache_dir()
    gdir = glue_dir_or_env(glue_dir)
    result, figures = finetune_and_evaluate(net, tok, t, settings, gdir, cache, do_train=train)
    written = []
    if predictions is not None:
        for split in t.test_splits:
            ts = tokenize_split(t, split, tok, max_length, gdir, cache)
            logits, idx = predict(net, ts, settings.eval_batch_size, tok.pad_token_id or 0)
            written.append(
                str(write_submission(t, split, idx, predictions_to_labels(t, logits), predictions))
            )
    table = Table(title=f"{model} on {t.name} (dev)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.metrics.items():
        table.add_row(k, fmt(v))
    emit(
        {"model": model, "task": t.name, "metrics": result.metrics, "train": figures, "predictions": written},
        as_json,
        table,
    )


# --------------------------------------------------------------------------- distill


def parse_student(text: str) -> tuple[int, int | None]:
    """``4L-256`` -> (4, 256); ``4L`` -> (4, None: the teacher's width)."""
    import re

    m = re.fullmatch(r"(\d+)L(?:-(\d+))?", text.strip(), flags=re.IGNORECASE)
    if not m:
        raise UserError(f"--student {text!r}: expected <layers>L-<hidden>, e.g. 4L-256")
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


@app.command()
def distill(
    config: Annotated[Path, typer.Argument(help="Run config (YAML); its `distill` section says how.")],
    task: Annotated[list[str], typer.Option("--task", "-t", help="GLUE task; repeat for several.")],
    student: Annotated[
        str | None, typer.Option(help="Student shape, e.g. 4L-256 (overrides the config).")
    ] = None,
    mapping: Annotated[
        str | None,
        typer.Option(help="uniform, last, or a mapping string like 2,4,6/6 (overrides the config)."),
    ] = None,
    baseline: Annotated[
        bool, typer.Option(help="Also fine-tune the same student on labels alone, for comparison.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Distil one student: general distillation on the corpus, then task distillation and dev scores.

    The teacher is fine-tuned per task first (cached). Every stage reads the teacher's outputs from the
    cache and checkpoints, so a killed run picks up where it stopped.
    """
    import copy

    from distilnas.distill.corpus import load_corpus, sample_fraction
    from distilnas.distill.glue import get_task
    from distilnas.distill.recipes import (
        general_distillation,
        initial_student,
        plain_finetune,
        student_spec,
        task_distillation,
    )
    from distilnas.distill.teacher import fine_tuned_teacher, load_config, load_tokenizer, resolve
    from distilnas.distill.utils import atomic_dir, atomic_write_json
    from distilnas.search.config import load_config as load_run_config
    from distilnas.spaces.mapping import LayerMapping

    cfg = load_run_config(config)
    tasks = [get_task(t) for t in task]
    dcfg = cfg.distill
    if student is not None:
        layers, hidden = parse_student(student)
        dcfg = dcfg.model_copy(
            update={"student": dcfg.student.model_copy(update={"layers": layers, "hidden": hidden})}
        )
    if mapping is not None:
        dcfg = dcfg.model_copy(update={"mapping": mapping})
    if cfg.data.corpus is None:
        raise UserError(f"{config}: data.corpus is needed for general distillation")
    source = resolve(cfg.teacher.name)
    depth = load_config(source).num_hidden_layers
    m = dcfg.student.layers
    named = {"uniform": LayerMapping.uniform, "last": LayerMapping.last}
    lmap = (
        named[dcfg.mapping](m, depth)
        if dcfg.mapping in named
        else LayerMapping.from_string(dcfg.mapping, depth)
    )
    if lmap.student_layers != m:
        raise UserError(f"mapping {lmap} has {lmap.student_layers} student layers, the student has {m}")
    setup_logging(cfg.output_dir / "logs" / "distill.log")
    log = logging.getLogger("distilnas.distill")

    texts = sample_fraction(load_corpus(cfg.data.corpus), dcfg.corpus_fraction, cfg.seed)
    tokenizer = load_tokenizer(source)
    encoder = initial_student(source, dcfg, list(lmap.targets), texts)
    start_encoder = copy.deepcopy(encoder)
    spec = student_spec(dcfg, encoder.config)
    name = f"{spec.name}_map{str(lmap).replace(',', '.').replace('/', 'of')}"
    run_dir = cfg.output_dir / "students" / name
    log.info("student %s, mapping %s, %d corpus examples", spec.name, lmap, len(texts))
    general_distillation(source, encoder, lmap.pairs(), texts, dcfg, cfg.cache_dir, run_dir)

    results: dict[str, Any] = {}
    for t in tasks:
        ft, _ = fine_tuned_teacher(
            source, t, cfg.teacher.settings_for(t.name), cfg.data.glue_dir, cfg.cache_dir
        )
        outcome = task_distillation(
            encoder,
            ft.path,
            f"finetuned:{ft.fingerprint}",
            t,
            lmap.pairs(),
            dcfg,
            cfg.data.glue_dir,
            cfg.cache_dir,
            run_dir,
        )
        entry: dict[str, Any] = {"distilled": outcome.result.metrics, "teacher": ft.metrics}
        record = {
            "student": spec.__dict__,
            "mapping": str(lmap),
            "task": t.name,
            "metrics": outcome.result.metrics,
            "teacher_metrics": ft.metrics,
            "teacher_fingerprint": ft.fingerprint,
            "config_hash": cfg.config_hash(),
            "seed": cfg.seed,
            "figures": outcome.figures,
        }
        with atomic_dir(run_dir / "models" / t.name) as tmp:
            outcome.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / "student.json", record)
        if baseline:
            plain = plain_finetune(start_encoder, ft.path, t, dcfg, cfg.data.glue_dir, cfg.cache_dir)
            entry["fine-tuned"] = plain.result.metrics
        results[t.name] = entry
        log.info("%s: distilled %s, teacher %s", t.name, outcome.result.metrics, ft.metrics)

    table = Table(title=f"student {spec.name} ({name}), dev")
    for col in ("task", "teacher", "distilled", *(["fine-tuned only"] if baseline else [])):
        table.add_column(col)
    for tname, r in results.items():

        def show(d: dict[str, float]) -> str:
            return ", ".join(f"{k} {fmt(v)}" for k, v in d.items())

        cells = [show(r["teacher"]), show(r["distilled"])] + ([show(r["fine-tuned"])] if baseline else [])
        table.add_row(tname, *cells)
    emit(
        {"student": spec.__dict__, "mapping": str(lmap), "run_dir": str(run_dir), "tasks": results},
        as_json,
        table,
    )


# --------------------------------------------------------------------------- search

search_app = typer.Typer(help="Search layer mappings or architectures on proxies, as Ray Tune trials.")
app.add_typer(search_app, name="search")


@search_app.command("mapping")
def search_mapping(
    config: Annotated[
        Path, typer.Argument(help="Run config (YAML): search.mapping, proxy, distill.student.")
    ],
    address: AddressOpt = None,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Search the layer mapping with a genetic algorithm (DEAP) on proxies, beside the uniform and
    last-layers baselines and random search at the same budget. Every trial lands in the run's Optuna
    storage; the GA state is checkpointed every generation."""
    from distilnas.search.config import load_config
    from distilnas.search.mapping_search import run_mapping_search

    cfg = load_config(config)
    setup_logging(cfg.output_dir / "search-mapping" / "search.log")
    with stdout_to_stderr():
        results = run_mapping_search(cfg, resume=resume, address=address)
    table = Table(title=f"layer-mapping search ({results['mode']}), proxy fitness")
    for col in ("strategy", "mapping", "fitness", "evaluations"):
        table.add_column(col)
    ga = results["ga"]
    if ga["best"]:
        table.add_row("GA best", ga["best"]["mapping"], fmt(ga["best"]["fitness"]), str(ga["evaluations"]))
    for name, value in results["baselines"].items():
        table.add_row(name, "", fmt(value) if value is not None else "failed", "1")
    rnd = results.get("random")
    if rnd and rnd["best"]:
        table.add_row(
            "random best", rnd["best"]["mapping"], fmt(rnd["best"]["fitness"]), str(rnd["evaluations"])
        )
    emit(results, as_json, table)


@search_app.command("supernet")
def search_supernet(
    config: Annotated[Path, typer.Argument(help="Run config (YAML): search.supernet, teacher, data.corpus.")],
    address: AddressOpt = None,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Search student architectures NAS-BERT-style: a weight-sharing supernet trained block by block
    against the teacher (each block a Ray Tune trial, checkpointed every epoch), progressive shrinking,
    NSGA-II over whole students, and the best re-scored with inherited weights. Prints the Pareto front
    over (proxy loss, parameters, latency); its students are saved as transformers folders."""
    from distilnas.search.config import load_config
    from distilnas.search.supernet_search import checked_space, run_supernet_search

    cfg = load_config(config)
    checked_space(cfg)  # bad settings fail before anything is written
    setup_logging(cfg.output_dir / "search-supernet" / "search.log")
    with stdout_to_stderr():
        results = run_supernet_search(cfg, resume=resume, address=address)
    lat, cost = results["latency"], results["cost"]
    table = Table(
        title=f"supernet front: {len(results['front'])} students spanning "
        f"{fmt(results['front_params_span'] or 0)}x in parameters; latency MAPE {fmt(lat['mape_percent'])}%; "
        f"inherited scoring {100 * (cost['score_share_of_training'] or 0):.3f}% of supernet training"
    )
    for col in ("student", "path", "params (M)", "predicted ms", "measured ms", "proxy loss", "front"):
        table.add_column(col)
    for r in results["students"]:
        table.add_row(
            r.get("name", ""),
            r["path"],
            f"{r['params'] / 1e6:.2f}",
            fmt(r["predicted_ms"]),
            fmt(r["measured_ms"]),
            f"{r['inherited_loss']:.4f}",
            "yes" if r["front"] else "",
        )
    emit(results, as_json, table)


@search_app.command("extract")
def search_extract(
    run: Annotated[Path, typer.Argument(help="A run folder whose supernet blocks are trained.")],
    path: Annotated[
        str, typer.Argument(help='A path of the space, block by block: "256:mha,ffn,id,id|128:conv3,...".')
    ],
    to: Annotated[Path, typer.Option(help="Where to save the student (a new folder).")],
) -> None:
    """Extract any path of a trained supernet as a standalone student with the supernet's weights: a
    transformers folder (NAS-BERT model, tokenizer) that loads with AutoModel once distilnas is
    imported, and distils and fine-tunes like any student."""
    from distilnas.search.supernet_search import extract_student

    setup_logging()
    with stdout_to_stderr():
        out = extract_student(run, path, to)
    err.print(f"saved {out['path']} ({out['params'] / 1e6:.2f} M parameters) in {to}")


@app.command()
def fidelity(
    run: Annotated[
        Path, typer.Argument(help="A finished mapping-search run folder (the config's output_dir).")
    ],
    top: Annotated[int, typer.Option(help="Re-score the K best mappings by proxy fitness.")] = 4,
    random_k: Annotated[
        int, typer.Option("--random", help="And K more drawn (seeded) from the rest the search scored.")
    ] = 4,
    address: AddressOpt = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Take the `fidelity` section from this config (otherwise the same as the run's)."),
    ] = None,
    stage: Annotated[
        str,
        typer.Option(
            help="mapping: the layer-mapping search's proxy; supernet: the supernet's inherited weights "
            "against students distilled alone."
        ),
    ] = "mapping",
    as_json: JsonOpt = False,
) -> None:
    """Check a search's cheap scores against expensive ones and report Kendall tau and Spearman rho.

    mapping: re-score mapping-search candidates in the full setting (the config's `fidelity` section: more
    corpus, whole task training sets). supernet: distil re-scored students alone from their initial
    weights (`fidelity.general_steps`) and fine-tune them on the `fidelity` tasks. Trials land in the
    run's Optuna storage; running it again continues where it stopped."""
    if stage == "supernet":
        supernet_fidelity(run, top, random_k, address, config, as_json)
        return
    if stage != "mapping":
        raise UserError(f"--stage {stage!r}: choose mapping or supernet")
    from distilnas.proxies.fidelity import run_fidelity

    setup_logging(run / "search-mapping" / "fidelity.log" if (run / "search-mapping").is_dir() else None)
    with stdout_to_stderr():
        results = run_fidelity(run, top, random_k, address, config)
    tau, rho = results["kendall_tau"], results["spearman_rho"]
    table = Table(
        title=f"proxy fidelity: Kendall tau {fmt(tau) if tau is not None else 'undefined (ties)'}, "
        f"Spearman rho {fmt(rho) if rho is not None else 'undefined'} ({len(results['candidates'])} mappings)"
    )
    for col in ("mapping", "chosen", "proxy", "full"):
        table.add_column(col)
    for c in results["candidates"]:
        table.add_row(
            c["mapping"], c["chosen"], fmt(c["proxy"]), fmt(c["full"]) if c["full"] is not None else "failed"
        )
    emit(results, as_json, table)


def supernet_fidelity(
    run: Path, top: int, random_k: int, address: str | None, config: Path | None, as_json: bool
) -> None:
    from distilnas.search.supernet_fidelity import run_supernet_fidelity

    if config is not None:
        raise UserError("--config: the supernet's fidelity setting is the run's own `fidelity` section")
    setup_logging(run / "search-supernet" / "fidelity.log" if (run / "search-supernet").is_dir() else None)
    with stdout_to_stderr():
        results = run_supernet_fidelity(run, top, random_k, address)

    def show(agreement: dict[str, float | None]) -> str:
        tau, rho = (agreement[k] for k in ("kendall_tau", "spearman_rho"))
        return (
            f"tau {'undefined' if tau is None else fmt(tau)}, rho {'undefined' if rho is None else fmt(rho)}"
        )

    table = Table(
        title=f"inherited weights against standalone distillation ({len(results['students'])} students): "
        f"task score {show(results['task_score'])}; held-out loss {show(results['held_out_loss'])}"
    )
    for col in ("path", "chosen", "inherited loss", "standalone loss", "task score"):
        table.add_column(col)
    for r in results["students"]:
        table.add_row(
            r["path"],
            r["chosen"],
            f"{-r['inherited']:.4f}",
            f"{r['held_out_loss']:.4f}" if "held_out_loss" in r else "failed",
            fmt(r["score"]) if "score" in r else "failed",
        )
    emit(results, as_json, table)


# --------------------------------------------------------------------------- the whole run


def show_run(out: dict[str, Any], as_json: bool, title: str) -> None:
    rows = out["table"]
    tasks = [k for k in rows[0] if k not in ROW_FIELDS] if rows else []
    table = Table(title=title)
    table.add_column("model", overflow="fold", min_width=12)
    for col in ("params", "latency (ms)", "speed-up", *tasks, "GLUE avg", "front"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"],
            f"{r['params'] / 1e6:.2f} M",
            fmt(r["latency_ms"]),
            f"{r['speedup']:.2f}x",
            *[fmt(r[t]) for t in tasks],
            fmt(r["glue"]),
            "*" if r["pareto"] else "",
        )
    emit(out, as_json, table)
    if not as_json:
        err.print(f"report: {out['report']}")
        for e in out["exports"]:
            err.print(f"export: {e}")


ROW_FIELDS = {
    "model",
    "kind",
    "origin",
    "mapping",
    "shape",
    "params",
    "latency_ms",
    "speedup",
    "glue",
    "pareto",
}


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    address: AddressOpt = None,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The whole job: fine-tune the teacher, search the layer mapping on proxies, distil the chosen
    students fully and score them on GLUE, then the results table, the Pareto-front exports and the
    report. Each stage is skipped when its outputs exist; `--resume` continues a stopped run."""
    from distilnas.search.config import load_config
    from distilnas.search.pipeline import run_pipeline

    cfg = load_config(config)
    setup_logging(cfg.output_dir / "run.log")
    with stdout_to_stderr():
        out = run_pipeline(cfg, resume=resume, address=address)
    show_run(out, as_json, f"distilnas run {cfg.output_dir}: dev scores")


def finished_run(run_dir: Path) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
    from distilnas.search.pipeline import recorded_config

    cfg = recorded_config(run_dir)
    cfg = cfg.model_copy(update={"output_dir": run_dir})
    final = run_dir / "final" / "results.json"
    if not final.is_file():
        raise UserError(f"{run_dir}: the final stage has not finished (no final/results.json)")
    search = run_dir / "search-mapping" / "results.json"
    return cfg, json.loads(search.read_text()) if search.is_file() else None, json.loads(final.read_text())


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A finished run folder (output_dir).")],
    to: Annotated[Path | None, typer.Option(help="Export folder (default RUN/exports).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export the run's Pareto-front students as model folders named with their figures."""
    from distilnas.search.pipeline import finish

    setup_logging()
    cfg, search, final = finished_run(run_dir)
    with stdout_to_stderr():
        out = finish(cfg, search, final, to or run_dir / "exports")
    show_run(out, as_json, f"{run_dir}: exported")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A finished run folder (output_dir).")],
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the run's results table and HTML report (and any missing exports)."""
    export(run_dir, None, as_json)


space_app = typer.Typer(help="Inspect the architecture space (NAS-BERT).", no_args_is_help=True)
app.add_typer(space_app, name="space")


@space_app.command("count")
def space_count(
    config: Annotated[Path, typer.Argument(help="Run config (YAML): teacher and search.supernet.")],
    as_json: JsonOpt = False,
) -> None:
    """Count the paths of the config's architecture space exactly: per block and in total."""
    from distilnas.search.config import load_config
    from distilnas.search.supernet_search import nas_space

    cfg = load_config(config)
    try:
        space = nas_space(cfg)
    except UserError as exc:
        raise UserError(f"{config}: {exc}") from None
    out = {
        "layers": space.layers,
        "blocks": space.blocks,
        "layers_per_block": space.block_layers,
        "hidden_sizes": list(space.hidden_sizes),
        "operations": list(space.operations),
        "paths_per_block": [space.block_count()] * space.blocks,
        "paths": space.count(),
    }
    table = Table(title=f"architecture space of {cfg.teacher.name} ({space.layers} layers)")
    table.add_column("block")
    table.add_column("layers")
    table.add_column("paths", justify="right")
    for b in range(space.blocks):
        table.add_row(str(b + 1), str(space.block_layers), f"{space.block_count():,}")
    table.add_row("all", str(space.layers), f"{space.count():,} ({space.count():.2e})")
    emit(out, as_json, table)


# --------------------------------------------------------------------------- dashboard


@app.command()
def dashboard(
    run: Annotated[Path, typer.Argument(help="A run folder (the config's output_dir).")],
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
) -> None:
    """Start optuna-dashboard on the run's Optuna storage (every trial of its searches)."""
    from distilnas.results.dashboard import serve

    setup_logging()
    err.print(f"optuna-dashboard for {run} on http://{host}:{port}/ (Ctrl-C to stop)")
    serve(run, host, port)


# --------------------------------------------------------------------------- latency


@app.command()
def latency(
    model: Annotated[
        str,
        typer.Argument(
            help="HF model name, model folder (config.json alone: random weights), or 'minilm-l6'."
        ),
    ],
    batch: Annotated[
        list[int] | None,
        typer.Option("--batch", "-b", help="Batch size; repeat for several (default 1 and 32)."),
    ] = None,
    seq_len: Annotated[int, typer.Option(help="Sequence length.")] = 128,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up passes.")] = 10,
    repeats: Annotated[int, typer.Option(help="Timed passes.")] = 30,
    trim: Annotated[float, typer.Option(help="Fraction dropped at each end before the mean.")] = 0.1,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure latency (trimmed mean of forward passes), parameters and FLOPs of MODEL's encoder."""
    import torch

    from distilnas.distill.measure import count_flops, count_parameters, measure_latency
    from distilnas.distill.teacher import load_encoder, resolve

    setup_logging()
    if threads is not None:
        torch.set_num_threads(threads)
    source = resolve(model)
    net = load_encoder(source, allow_random=True, attention="sdpa")  # as deployed
    params = count_parameters(net)
    rows = []
    for b in batch or [1, 32]:
        lat = measure_latency(net, b, seq_len, warmup=warmup, repeats=repeats, trim=trim)
        rows.append({**lat.as_dict(), "flops": count_flops(net, b, seq_len)})
    table = Table(title=f"{model}: {params / 1e6:.2f}M parameters")
    for col in ("batch", "seq", "ms (trimmed mean)", "median ms", "GFLOPs", "threads", "device"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["batch_size"]),
            str(r["seq_len"]),
            fmt(r["ms"]),
            fmt(r["median_ms"]),
            fmt(r["flops"] / 1e9),
            str(r["threads"]),
            r["device"],
        )
    emit(
        {"model": model, "parameters": params, "random_weights": not source.has_weights, "latency": rows},
        as_json,
        table,
    )


@app.command()
def inspect(
    student: Annotated[
        Path,
        typer.Argument(
            metavar="STUDENT",
            help="A file (teacher: NAME, and student: {layers, hidden, ..., kronecker: ... | references: "
            "...} or nas: {path: ...}), or a saved student's folder.",
        ),
    ],
    measure: Annotated[
        bool, typer.Option(help="Also measure latency (trimmed mean of forward passes).")
    ] = False,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Batch size for FLOPs and latency.")] = 1,
    seq_len: Annotated[int, typer.Option(help="Sequence length for FLOPs and latency.")] = 128,
    as_json: JsonOpt = False,
) -> None:
    """Parameters (embeddings and a reference store apart), FLOPs and, with --measure, latency of any
    student: a plain BERT, a Kronecker-factored one, a referenced one (RefBERT) or a supernet path, from a
    short file before training, or from a saved student's folder (a referenced student's retrieval time
    is measured on its store and added)."""
    from distilnas.search.inspect_student import inspect as inspect_student
    from distilnas.search.inspect_student import load_student_file

    spec = student if student.is_dir() else load_student_file(student)
    setup_logging()
    out = inspect_student(spec, measure, batch, seq_len)
    table = Table(title=out["student"] + (f" (teacher {out['teacher']})" if out["teacher"] else ""))
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{out['parameters']:,}")
    table.add_row("  of which embeddings", f"{out['embedding_parameters']:,}")
    store = out.get("reference_store")
    if store:
        table.add_row("reference store, per example (fp16 bytes)", f"{store['bytes_per_example']:,}")
        if "bytes" in store:
            table.add_row(f"reference store, {store['examples']:,} examples (bytes)", f"{store['bytes']:,}")
    table.add_row(f"GFLOPs (batch {batch}, seq {seq_len})", fmt(out["flops"] / 1e9))
    if measure:
        table.add_row("latency ms (trimmed mean)", fmt(out["latency"]["ms"]))
        if "retrieval" in out:
            table.add_row("  + retrieval ms per input", fmt(out["retrieval"]["ms"]))
            table.add_row("latency with retrieval ms", fmt(out["latency_with_retrieval_ms"]))
    emit(out, as_json, table)


def main() -> None:
    """Entry point: run the app; a UserError becomes one line on stderr and exit code 2."""
    from pydantic import ValidationError

    from distilnas.distill.config import describe

    try:
        app()
    except (UserError, ValidationError) as exc:
        message = describe(exc) if isinstance(exc, ValidationError) else str(exc)
        err.print(f"distilnas: error: {message}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
