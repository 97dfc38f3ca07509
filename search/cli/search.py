"""``distilnas search`` (mapping, joint, supernet, extract), ``distilnas fidelity``, ``distilnas space``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distilnas.distill.errors import UserError
from distilnas.search.cli import render
from distilnas.search.cli.app import (
    AddressOpt,
    JsonOpt,
    ResumeOpt,
    app,
    emit,
    err,
    search_app,
    setup_logging,
    space_app,
    stdout_to_stderr,
)
from distilnas.search.config import load_config
from distilnas.search.mirror import mirrored
from distilnas.search.preflight import check_joint_search, check_mapping_search, check_supernet_search
from distilnas.search.rundir import RunFolder
from distilnas.search.stages.fidelity import run_fidelity
from distilnas.search.stages.joint import run_joint_search
from distilnas.search.stages.mapping import run_mapping_search
from distilnas.search.stages.supernet import (
    extract_student,
    nas_space,
    run_supernet_search,
    space_summary,
)
from distilnas.search.stages.supernet_fidelity import run_supernet_fidelity


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
    cfg = load_config(config)
    with stdout_to_stderr():
        check_mapping_search(cfg, resume, address)  # before anything is written, a log included
    setup_logging(RunFolder.of(cfg).mapping / "search.log")
    with stdout_to_stderr(), mirrored(cfg):
        results = run_mapping_search(cfg, resume=resume, address=address)
    emit(results, as_json, render.mapping_search(results))


@search_app.command("joint")
def search_joint(
    config: Annotated[
        Path,
        typer.Argument(
            help="Run config (YAML): search.joint, search.mapping.constraints, proxy, final.latency."
        ),
    ],
    address: AddressOpt = None,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Search a plain BERT student's shape (depth, width, heads, FFN size, start) and its layer mapping
    together: NSGA-II (DEAP) on (proxy score, parameters, predicted latency), or every valid student once
    when the space fits the budget. Latency is predicted from a table of BERT layers timed here at
    final.latency's setting; the front's students are timed whole to report the prediction's error."""
    cfg = load_config(config)
    with stdout_to_stderr():
        check_joint_search(cfg, resume, address)  # before anything is written, a log included
    setup_logging(RunFolder.of(cfg).joint / "search.log")
    with stdout_to_stderr(), mirrored(cfg):
        results = run_joint_search(cfg, resume=resume, address=address)
    emit(results, as_json, render.joint_search(results))


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
    cfg = load_config(config)
    with stdout_to_stderr():
        check_supernet_search(cfg, resume, address)  # before anything is written, a log included
    setup_logging(RunFolder.of(cfg).supernet / "search.log")
    with stdout_to_stderr(), mirrored(cfg):
        results = run_supernet_search(cfg, resume=resume, address=address)
    emit(results, as_json, render.supernet_search(results))


@search_app.command("extract")
def search_extract(
    run: Annotated[Path, typer.Argument(help="A run folder whose supernet blocks are trained.")],
    path: Annotated[
        str,
        typer.Argument(
            help='A path of the space, block by block: "256:mha,ffn,id,id|128:conv3,...", or a '
            'hand-designed BERT\'s shape, "2L-96" (its attention and feed-forward layers over the blocks).'
        ),
    ],
    to: Annotated[Path, typer.Option(help="Where to save the student (a new folder).")],
) -> None:
    """Extract any path of a trained supernet as a standalone student with the supernet's weights: a
    transformers folder (NAS-BERT model, tokenizer) that loads with AutoModel once distilnas is
    imported, and distils and fine-tunes like any student."""
    setup_logging()
    with stdout_to_stderr():
        out = extract_student(run, path, to)
    err.print(f"saved {out['path']} ({out['params'] / 1e6:.2f} M parameters as deployed) in {to}")


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
            help="mapping: the layer-mapping search's proxy; joint: the joint search's; supernet: the "
            "supernet's inherited weights against students distilled alone."
        ),
    ] = "mapping",
    as_json: JsonOpt = False,
) -> None:
    """Check a search's cheap scores against expensive ones and report Kendall tau and Spearman rho.

    mapping (or joint): re-score the search's candidates in the full setting (the config's `fidelity`
    section: more corpus, whole task training sets), overall and per rung of successive halving.
    supernet: distil re-scored students alone from their initial weights (`fidelity.general_steps`) and
    fine-tune them on the `fidelity` tasks. Trials land in the run's Optuna storage; running it again
    continues where it stopped."""
    folder = RunFolder(run)
    if stage == "supernet":
        if config is not None:
            raise UserError("--config: the supernet's fidelity setting is the run's own `fidelity` section")
        setup_logging(folder.supernet / "fidelity.log" if folder.supernet.path.is_dir() else None)
        with stdout_to_stderr():
            results = run_supernet_fidelity(run, top, random_k, address)
        emit(results, as_json, render.supernet_fidelity(results))
        return
    if stage not in ("mapping", "joint"):
        raise UserError(f"--stage {stage!r}: choose mapping, joint or supernet")
    searched = folder.joint if stage == "joint" else folder.mapping
    setup_logging(searched / "fidelity.log" if searched.path.is_dir() else None)
    with stdout_to_stderr():
        results = run_fidelity(run, top, random_k, address, config, stage)
    emit(results, as_json, render.mapping_fidelity(results))


@space_app.command("count")
def space_count(
    config: Annotated[Path, typer.Argument(help="Run config (YAML): teacher and search.supernet.")],
    as_json: JsonOpt = False,
) -> None:
    """Count the paths of the config's architecture space exactly: per block and in total."""
    cfg = load_config(config)
    try:
        space = nas_space(cfg)
    except UserError as exc:
        raise UserError(f"{config}: {exc}") from None
    summary = space_summary(space)
    emit(summary, as_json, render.space(cfg.teacher.name, summary))
