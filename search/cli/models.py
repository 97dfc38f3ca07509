"""Commands on models: ``teacher`` (fine-tune and cache), ``evaluate``, ``latency`` and ``inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from distilnas.distill.config import TrainSettings
from distilnas.distill.errors import UserError
from distilnas.distill.glue import get_task
from distilnas.distill.measure import count_parameters, profile
from distilnas.distill.metrics import glue_average
from distilnas.distill.recipes import evaluate_model
from distilnas.distill.students import serving_encoder
from distilnas.distill.teacher import check_weights, resolve
from distilnas.distill.utils import default_cache_dir
from distilnas.search.cli import render
from distilnas.search.cli.app import GlueDirOpt, JsonOpt, app, emit, glue_dir_or_env, setup_logging
from distilnas.search.config import load_config
from distilnas.search.inspect import inspect as inspect_student
from distilnas.search.inspect import load_student_file
from distilnas.search.mirror import mirrored
from distilnas.search.pipeline import fine_tuned
from distilnas.search.preflight import check_teacher


def positive(*options: tuple[str, int | None]) -> None:
    for name, value in options:
        if value is not None and value < 1:
            raise UserError(f"{name} {value}: must be at least 1")


def within_positions(model: Any, seq_len: int) -> None:
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and seq_len > int(positions):
        raise UserError(f"--seq-len {seq_len}: the model has {positions} positions")


@app.command()
def teacher(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    task: Annotated[list[str], typer.Option("--task", "-t", help="GLUE task; repeat for several.")],
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the config's teacher on GLUE tasks, cache it, and score it on dev.

    A teacher already fine-tuned with the same (teacher, task, data, settings) comes from the cache.
    """
    cfg = load_config(config)
    check_teacher(cfg, task)  # before anything is written, a log included
    setup_logging(cfg.output_dir / "logs" / "teacher.log")
    with mirrored(cfg):  # the log
        teachers = fine_tuned(cfg, task)
    results: dict[str, Any] = {
        name: {"metrics": ft.metrics, "path": str(ft.path), "cached": cached, "fingerprint": ft.fingerprint}
        for name, (ft, cached) in teachers.items()
    }
    average = glue_average({k: v["metrics"] for k, v in results.items()})
    name = resolve(cfg.teacher.name).name
    emit(
        {"teacher": name, "tasks": results, "glue_average": average},
        as_json,
        render.teachers(name, results, average),
    )


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
    setup_logging()
    t = get_task(task)
    if predictions is not None and predictions.exists() and any(predictions.iterdir()):
        raise UserError(f"{predictions}: predictions folder exists and is not empty")
    settings = TrainSettings(
        epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, train_limit=train_limit, seed=seed
    )
    source = resolve(model)
    if not source.has_weights:
        raise UserError(f"{model}: has no weights to fine-tune or score (a folder with a config.json alone)")
    check_weights(source)
    result, figures, written = evaluate_model(
        source,
        t,
        settings,
        glue_dir_or_env(glue_dir),
        cache_dir or default_cache_dir(),
        train,
        predictions,
    )
    emit(
        {
            "model": model,
            "task": t.name,
            "metrics": result.metrics,
            "train": figures,
            "predictions": [str(w) for w in written],
        },
        as_json,
        render.metrics(f"{model} on {t.name} (dev)", result.metrics),
    )


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
    """Measure latency (trimmed mean of forward passes), parameters and FLOPs of MODEL's encoder as it is
    served (SDPA attention; a NAS-BERT student in its deployed form)."""
    setup_logging()
    positive(
        ("--repeats", repeats),
        ("--threads", threads),
        ("--seq-len", seq_len),
        *(("--batch", b) for b in batch or []),
    )
    if warmup < 0 or not 0 <= trim < 0.5:
        raise UserError("--warmup must not be negative and --trim must be in [0, 0.5)")
    if threads is not None:
        torch.set_num_threads(threads)
    source = resolve(model)
    net = serving_encoder(source, allow_random=True)
    within_positions(net, seq_len)
    params = count_parameters(net)
    rows = profile(net, batch or [1, 32], seq_len, warmup, repeats, trim)
    emit(
        {"model": model, "parameters": params, "random_weights": not source.has_weights, "latency": rows},
        as_json,
        render.latency(model, params, rows),
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
    positive(("--batch", batch), ("--seq-len", seq_len))
    spec = student if student.is_dir() else load_student_file(student)
    setup_logging()
    out = inspect_student(spec, measure, batch, seq_len)
    emit(out, as_json, render.inspected(out, batch, seq_len, measure))
