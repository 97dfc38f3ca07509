"""The one distillation path: what ``distilnas distill`` and the final stage run (stage by stage, saved
and read back) and what the proxy runs (step budgets) are the same recipe, and give the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import WIKISPLIT
from test_students import nas_folder

from distilnas.distill.config import DistillConfig, TeacherConfig
from distilnas.distill.distiller import Distiller
from distilnas.distill.prepared import PreparedData, prepare
from distilnas.distill.recipes import Budget, Distillation, distil
from distilnas.distill.students import StudentRecord, StudentSpec, student_spec

DISTILL = DistillConfig.model_validate(
    {
        "student": {"layers": 1, "hidden": 16, "init": "extract", "importance_batches": 1},
        "max_length": 32,
        "train_limit": 32,
        "general": {"losses": {"embedding_mse": 1, "hidden_mse": 1}, "steps": 3, "batch_size": 16},
        "task": {
            "intermediate": {"losses": {"hidden_mse": 1}, "steps": 2, "batch_size": 16},
            "prediction": {"losses": {"prediction_ce": 1}, "steps": 2, "batch_size": 16},
        },
    }
)
PAIRS = [(0, 0), (1, 2)]


@pytest.fixture(scope="module")
def data(tiny_bert: Path, glue_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    tmp = tmp_path_factory.mktemp("recipes")
    texts = [line.split("\t")[0] for line in WIKISPLIT.read_text(encoding="utf-8").splitlines()[:64]]
    teacher = TeacherConfig.model_validate(
        {
            "name": str(tiny_bert),
            "train": {"epochs": 1, "train_limit": 32, "batch_size": 16, "max_length": 32},
        }
    )
    return prepare(
        teacher, DISTILL, ["rte"], texts, glue_dir, tmp / "cache", tmp, 0,
        corpus_fraction=1.0, train_limit=32, task_caches=True,
    )  # fmt: skip


def figures(outcome: dict) -> dict:
    """An outcome without its timings (the numbers a seed decides)."""
    return {k: v for k, v in outcome.items() if not k.endswith("seconds")}


def record(data: PreparedData) -> StudentRecord:
    from transformers import AutoConfig

    spec = student_spec(DISTILL.student, AutoConfig.from_pretrained(data.teacher))
    return StudentRecord("s", spec, "extract", "2/2", ["test"])


def test_stage_by_stage_equals_the_whole_run_and_is_read_back(
    data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = distil(record(data), PAIRS, data, DISTILL, ["rte"], folder=tmp_path / "whole")
    trials = Distillation(record(data), PAIRS, data, DISTILL, tmp_path / "trials")
    general = trials.general()  # as the final stage's general trial, then its task trial (a new process)
    task = Distillation(record(data), PAIRS, data, DISTILL, tmp_path / "trials").saved_task("rte", False)
    assert general["steps"] == 3 and figures(task) == figures(whole["rte"])
    stages = ("intermediate", "prediction")
    assert set(task) == {"score", "metrics", *(f"{s}_{f}" for s in stages for f in ("loss", "seconds"))}
    for saved in ("general/model.safetensors", "general/general.json", "rte/model.safetensors"):
        assert (tmp_path / "whole" / saved).is_file(), saved
    monkeypatch.setattr(Distiller, "fit", lambda *a, **k: pytest.fail("a finished stage trained again"))
    again = distil(record(data), PAIRS, data, DISTILL, ["rte"], folder=tmp_path / "whole")
    assert again == whole  # read back: the same outcome, timings included


def test_a_budget_is_the_same_recipe_at_fewer_steps(data: PreparedData) -> None:
    budgeted = distil(record(data), PAIRS, data, DISTILL, ["rte"], budget=Budget(2, 1, "distil"))
    stage = {"steps": 1, "checkpoint_every": 0}
    spelled_out = DISTILL.model_copy(
        update={
            "general": DISTILL.general.model_copy(update={"steps": 2, "checkpoint_every": 0}),
            "task": DISTILL.task.model_copy(
                update={
                    "intermediate": DISTILL.task.intermediate.model_copy(update=stage),
                    "prediction": DISTILL.task.prediction.model_copy(update=stage),
                }
            ),
        }
    )
    plain = distil(record(data), PAIRS, data, spelled_out, ["rte"])
    assert budgeted["rte"]["metrics"] == plain["rte"]["metrics"]
    assert budgeted["rte"]["intermediate_loss"] == pytest.approx(plain["rte"]["intermediate_loss"])
    finetuned = distil(record(data), PAIRS, data, DISTILL, ["rte"], budget=Budget(None, 2, "finetune"))
    assert set(finetuned["rte"]) >= {"score", "metrics", "steps"}  # labels only: no teacher stage figures


def test_a_budgets_rows_are_the_first_of_the_prepared_rows(
    data: PreparedData, tiny_bert: Path, glue_dir: Path, tmp_path: Path
) -> None:
    """Half the rows of a 32-row task (a lower rung's) is the same recipe as a task prepared with 16."""
    half = distil(record(data), PAIRS, data, DISTILL, ["rte"], budget=Budget(2, 2, "distil", 0.5))
    texts = [line.split("\t")[0] for line in WIKISPLIT.read_text(encoding="utf-8").splitlines()[:64]]
    teacher = TeacherConfig.model_validate(
        {
            "name": str(tiny_bert),
            "train": {"epochs": 1, "train_limit": 32, "batch_size": 16, "max_length": 32},
        }
    )  # the same teacher (fine-tuned on 32 rows); its student's task rows are the first 16
    sixteen = prepare(
        teacher, DISTILL, ["rte"], texts, glue_dir, Path(data.cache_dir), tmp_path, 0,
        corpus_fraction=1.0, train_limit=16, task_caches=True,
    )  # fmt: skip
    whole = distil(record(sixteen), PAIRS, sixteen, DISTILL, ["rte"], budget=Budget(2, 2, "distil"))
    assert figures(half["rte"]) == figures(whole["rte"])
    full = distil(record(data), PAIRS, data, DISTILL, ["rte"], budget=Budget(2, 2, "distil"))
    assert full["rte"]["intermediate_loss"] != half["rte"]["intermediate_loss"]  # the rows made a difference


def test_a_nas_student_takes_the_same_path_at_its_block_boundaries(
    data: PreparedData, tmp_path: Path
) -> None:
    folder = nas_folder(tmp_path)
    spec = StudentSpec(2, 64, 1, 256, nas={"path": "p", "folder": str(folder)})
    nas = StudentRecord("nas", spec, "supernet", "2,2/2", ["supernet"])
    run = Distillation(nas, [(0, 0), (1, 2), (2, 2)], data, DISTILL, tmp_path / "nas-run")
    assert run.pairs == [(1, 2), (2, 2)]  # its embeddings stand for no teacher layer
    assert run.stage(DISTILL.general, None).losses == {"hidden_mse": 1}  # what it can serve of the losses
    outcome = run.saved_task("rte", predictions=True)
    assert 0 <= outcome["score"] <= 100
    assert (tmp_path / "nas-run" / "rte" / "predictions" / "RTE.tsv").is_file()


def test_a_saved_stage_made_from_other_inputs_is_trained_again(
    data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    distil(record(data), PAIRS, data, DISTILL, ["rte"], folder=folder)
    general = (folder / "general" / "model.safetensors").read_bytes()
    trained: list[str] = []
    fit = Distiller.fit

    def counted(self: Distiller, *args: object, **kwargs: object) -> object:
        trained.append(str(kwargs.get("desc")))
        return fit(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Distiller, "fit", counted)
    # other task settings: the general stage is read back, the task stages are trained again
    prediction = DISTILL.task.prediction.model_copy(update={"steps": 3})
    task = DISTILL.model_copy(update={"task": DISTILL.task.model_copy(update={"prediction": prediction})})
    again = distil(record(data), PAIRS, data, task, ["rte"], folder=folder)
    assert trained == ["distil: layers", "distil: prediction"]
    assert (folder / "general" / "model.safetensors").read_bytes() == general
    fresh = distil(record(data), PAIRS, data, task, ["rte"], folder=tmp_path / "fresh")
    assert figures(again["rte"]) == figures(fresh["rte"])  # as if it had never been trained otherwise
    # other general settings: every stage is trained again
    trained.clear()
    steps = task.model_copy(update={"general": DISTILL.general.model_copy(update={"steps": 2})})
    distil(record(data), PAIRS, data, steps, ["rte"], folder=folder)
    assert trained == ["general distillation", "distil: layers", "distil: prediction"]
    assert (folder / "general" / "model.safetensors").read_bytes() != general
