"""The GLUE tasks: a registry, two sources (a local ``glue_data`` folder or the HF hub), and scoring.

Both sources give the same ``datasets.Dataset`` columns, named as on the hub (``nyu-mll/glue``):
the task's text fields, ``label`` (class id, a float for STS-B, -1 where the split has no labels)
and ``idx`` (the row's index; for test splits, the file's own index column, which submissions use).

The local reader reads the files exactly as the GLUE tools do: lines split on ``\\n``, fields on
``\\t``, no quote processing. CoLA's train and dev files have no header; MRPC's headers start with a
UTF-8 byte-order mark; MNLI has matched and mismatched dev and test files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Value, load_dataset

from distilnas.distill.errors import DataError, UserError
from distilnas.distill.metrics import METRICS
from distilnas.distill.utils import atomic_write_text, read_text

Column = str | int  # a header name, or a position in a file without a header


@dataclass(frozen=True)
class TsvLayout:
    """Where one split's fields are in its TSV file."""

    file: str
    texts: tuple[Column, ...]
    label: Column | None = None
    index: Column | None = None  # the file's own row id (test files); else the row number is used
    header: bool = True
    n_fields: int | None = None  # files without a header state their width


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its columns, labels, metrics and files."""

    name: str
    folder: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...] | None  # None: a regression task (STS-B)
    metrics: tuple[str, ...]
    layouts: Mapping[str, TsvLayout]
    submission: Mapping[str, str]  # test split -> the GLUE server's file name
    train_split: str | None = "train"
    eval_splits: tuple[str, ...] = ("validation",)
    tsv_label_names: tuple[str, ...] | None = None  # label strings in the TSV when they are not ids
    metric_suffix: Mapping[str, str] = field(default_factory=dict)  # eval split -> suffix (MNLI m/mm)

    @property
    def hub_config(self) -> str:
        """The config name on the hub (``nyu-mll/glue``): the task's own name."""
        return self.name

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(self.submission)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.layouts)


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")


def _standard(texts: tuple[str, ...], label: str, index: str = "index") -> dict[str, TsvLayout]:
    """The usual layout: train.tsv and dev.tsv with a header and a label column, test.tsv with an index."""
    return {
        "train": TsvLayout("train.tsv", texts=texts, label=label),
        "validation": TsvLayout("dev.tsv", texts=texts, label=label),
        "test": TsvLayout("test.tsv", texts=texts, index=index),
    }


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask(
            name="cola",
            folder="CoLA",
            text_fields=("sentence",),
            label_names=("unacceptable", "acceptable"),
            metrics=("mcc",),
            layouts={
                "train": TsvLayout("train.tsv", texts=(3,), label=1, header=False, n_fields=4),
                "validation": TsvLayout("dev.tsv", texts=(3,), label=1, header=False, n_fields=4),
                "test": TsvLayout("test.tsv", texts=("sentence",), index="index"),
            },
            submission={"test": "CoLA.tsv"},
        ),
        GlueTask(
            name="sst2",
            folder="SST-2",
            text_fields=("sentence",),
            label_names=("negative", "positive"),
            metrics=("accuracy",),
            layouts=_standard(("sentence",), "label"),
            submission={"test": "SST-2.tsv"},
        ),
        GlueTask(
            name="mrpc",
            folder="MRPC",
            text_fields=("sentence1", "sentence2"),
            label_names=("not_equivalent", "equivalent"),
            metrics=("f1", "accuracy"),
            layouts=_standard(("#1 String", "#2 String"), "Quality"),
            submission={"test": "MRPC.tsv"},
        ),
        GlueTask(
            name="stsb",
            folder="STS-B",
            text_fields=("sentence1", "sentence2"),
            label_names=None,
            metrics=("pearson", "spearman"),
            layouts=_standard(("sentence1", "sentence2"), "score"),
            submission={"test": "STS-B.tsv"},
        ),
        GlueTask(
            name="qqp",
            folder="QQP",
            text_fields=("question1", "question2"),
            label_names=("not_duplicate", "duplicate"),
            metrics=("f1", "accuracy"),
            layouts=_standard(("question1", "question2"), "is_duplicate", "id"),
            submission={"test": "QQP.tsv"},
        ),
        GlueTask(
            name="mnli",
            folder="MNLI",
            text_fields=("premise", "hypothesis"),
            label_names=_NLI3,
            tsv_label_names=_NLI3,
            metrics=("accuracy",),
            layouts={
                "train": TsvLayout("train.tsv", texts=("sentence1", "sentence2"), label="gold_label"),
                "validation_matched": TsvLayout(
                    "dev_matched.tsv", texts=("sentence1", "sentence2"), label="gold_label"
                ),
                "validation_mismatched": TsvLayout(
                    "dev_mismatched.tsv", texts=("sentence1", "sentence2"), label="gold_label"
                ),
                "test_matched": TsvLayout(
                    "test_matched.tsv", texts=("sentence1", "sentence2"), index="index"
                ),
                "test_mismatched": TsvLayout(
                    "test_mismatched.tsv", texts=("sentence1", "sentence2"), index="index"
                ),
            },
            eval_splits=("validation_matched", "validation_mismatched"),
            metric_suffix={"validation_matched": "_m", "validation_mismatched": "_mm"},
            submission={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
        ),
        GlueTask(
            name="qnli",
            folder="QNLI",
            text_fields=("question", "sentence"),
            label_names=_NLI2,
            tsv_label_names=_NLI2,
            metrics=("accuracy",),
            layouts=_standard(("question", "sentence"), "label"),
            submission={"test": "QNLI.tsv"},
        ),
        GlueTask(
            name="rte",
            folder="RTE",
            text_fields=("sentence1", "sentence2"),
            label_names=_NLI2,
            tsv_label_names=_NLI2,
            metrics=("accuracy",),
            layouts=_standard(("sentence1", "sentence2"), "label"),
            submission={"test": "RTE.tsv"},
        ),
        GlueTask(
            name="wnli",
            folder="WNLI",
            text_fields=("sentence1", "sentence2"),
            label_names=("not_entailment", "entailment"),
            metrics=("accuracy",),
            layouts=_standard(("sentence1", "sentence2"), "label"),
            submission={"test": "WNLI.tsv"},
        ),
        GlueTask(
            name="ax",
            folder="diagnostic",
            text_fields=("premise", "hypothesis"),
            label_names=_NLI3,  # scored with an MNLI model; labels are not public
            metrics=("mcc",),
            layouts={"test": TsvLayout("diagnostic.tsv", texts=("sentence1", "sentence2"), index="index")},
            train_split=None,
            eval_splits=(),
            submission={"test": "AX.tsv"},
        ),
    ]
}


def get_task(name: str) -> GlueTask:
    """Look a task up by name, forgiving case and dashes (``SST-2`` -> ``sst2``)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise UserError(f"unknown GLUE task {name!r}; known: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


# --------------------------------------------------------------------------- local files


def _read_lines(path: Path) -> list[str]:
    # utf-8-sig drops MRPC's byte-order mark; no quote processing, as in the GLUE tools.
    text = read_text(path, encoding="utf-8-sig")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _position(col: Column, header: Sequence[str] | None, path: Path) -> int:
    if isinstance(col, int):
        return col
    assert header is not None
    try:
        return list(header).index(col)
    except ValueError:
        raise DataError(f"{path}:1: header has no column {col!r} (columns: {', '.join(header)})") from None


def _label_value(task: GlueTask, raw: str, path: Path, lineno: int) -> float | int:
    try:
        if task.is_regression:
            return float(raw)
        if task.tsv_label_names is not None:
            return task.tsv_label_names.index(raw)
        value = int(raw)
        if not 0 <= value < task.num_labels:
            raise ValueError
        return value
    except ValueError:
        raise DataError(f"{path}:{lineno}: bad label {raw!r} for {task.name}") from None


def read_tsv_split(task: GlueTask, split: str, folder: Path) -> dict[str, list]:
    """Read one split of a task from ``folder`` (the task's own folder) into columns."""
    if split not in task.layouts:
        raise UserError(f"{task.name} has no split {split!r}; splits: {', '.join(task.layouts)}")
    layout = task.layouts[split]
    path = folder / layout.file
    if not path.is_file():
        raise DataError(f"{path}: missing ({task.name} {split} split)")
    lines = _read_lines(path)
    header: list[str] | None = None
    start = 0
    if layout.header:
        if not lines:
            raise DataError(f"{path}: empty file, expected a header")
        header = lines[0].split("\t")
        start = 1
    width = len(header) if header is not None else layout.n_fields
    text_pos = [_position(c, header, path) for c in layout.texts]
    label_pos = None if layout.label is None else _position(layout.label, header, path)
    index_pos = None if layout.index is None else _position(layout.index, header, path)

    columns: dict[str, list] = {f: [] for f in task.text_fields}
    labels: list[float | int] = []
    idx: list[int] = []
    for i, line in enumerate(lines[start:]):
        lineno = start + i + 1
        fields = line.split("\t")
        if len(fields) != width:
            raise DataError(f"{path}:{lineno}: expected {width} tab-separated fields, got {len(fields)}")
        for name, pos in zip(task.text_fields, text_pos, strict=True):
            columns[name].append(fields[pos])
        labels.append(-1 if label_pos is None else _label_value(task, fields[label_pos], path, lineno))
        if index_pos is None:
            idx.append(i)
        else:
            try:
                idx.append(int(fields[index_pos]))
            except ValueError:
                raise DataError(f"{path}:{lineno}: bad index {fields[index_pos]!r}") from None
    columns["label"] = labels
    columns["idx"] = idx
    return columns


def features(task: GlueTask) -> Features:
    cols = {f: Value("string") for f in task.text_fields}
    cols["label"] = Value("float32") if task.is_regression else Value("int64")
    cols["idx"] = Value("int64")
    return Features(cols)


def task_folder(task: GlueTask, glue_dir: str | Path) -> Path:
    root = Path(glue_dir)
    if not root.is_dir():
        raise DataError(f"{root}: GLUE folder not found")
    folder = root / task.folder
    if not folder.is_dir():
        raise DataError(f"{folder}: missing (no {task.folder} folder for task {task.name})")
    return folder


def load_split(task: GlueTask | str, split: str, glue_dir: str | Path | None = None) -> Dataset:
    """One split as a Dataset: from ``glue_dir`` when given, else from the HF hub (``nyu-mll/glue``)."""
    task = get_task(task) if isinstance(task, str) else task
    if glue_dir is not None:
        cols = read_tsv_split(task, split, task_folder(task, glue_dir))
        return Dataset.from_dict(cols, features=features(task))
    return load_hub_split(task, split)


def load_hub_split(task: GlueTask, split: str) -> Dataset:
    """Load a split from the hub. Needs network access (or a warm HF datasets cache)."""
    try:
        ds = load_dataset("nyu-mll/glue", task.hub_config, split=split)
    except Exception as exc:
        raise DataError(f"nyu-mll/glue/{task.hub_config} {split}: cannot load from the hub ({exc})") from exc
    keep = [*task.text_fields, "label", "idx"]
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
    return ds.cast(features(task))


def count_rows(glue_dir: str | Path) -> dict[str, dict[str, int]]:
    """Rows per task and split for every task folder present in ``glue_dir`` (the header not counted).

    Every file is parsed, so a malformed row is reported with its file and line.
    """
    root = Path(glue_dir)
    if not root.is_dir():
        raise DataError(f"{root}: GLUE folder not found")
    counts: dict[str, dict[str, int]] = {}
    for task in GLUE_TASKS.values():
        folder = root / task.folder
        if not folder.is_dir():
            continue
        counts[task.name] = {
            split: len(read_tsv_split(task, split, folder)["idx"])
            for split, layout in task.layouts.items()
            if (folder / layout.file).is_file()
        }
    return counts


# --------------------------------------------------------------------------- scoring


def compute_metrics(task: GlueTask, preds: np.ndarray, labels: np.ndarray, split: str | None = None) -> dict:
    """The task's official metrics for one eval split (0-100); MNLI's carry an ``_m``/``_mm`` suffix."""
    suffix = task.metric_suffix.get(split or "", "")
    return {f"{name}{suffix}": METRICS[name](preds, labels) for name in task.metrics}


def predictions_to_labels(task: GlueTask, logits: np.ndarray) -> np.ndarray:
    """Class ids (argmax) for classification, the score itself for regression."""
    return logits.reshape(-1) if task.is_regression else logits.argmax(-1)


def write_submission(
    task: GlueTask,
    split: str,
    idx: Sequence[int] | np.ndarray,
    preds: Sequence[float] | np.ndarray,
    out_dir: str | Path,
) -> Path:
    """Write test-set predictions in the GLUE server's format (``index\\tprediction``), atomically."""
    if split not in task.submission:
        raise UserError(f"{task.name}: {split!r} is not a test split ({', '.join(task.submission)})")
    lines = ["index\tprediction"]
    for i, p in zip(idx, preds, strict=True):
        if task.label_names is None:
            value = f"{min(max(float(p), 0.0), 5.0):.3f}"  # STS-B scores live in [0, 5]
        elif task.tsv_label_names is not None or task.name == "ax":
            value = task.label_names[int(p)]  # NLI tasks are submitted as label strings
        else:
            value = str(int(p))
        lines.append(f"{i}\t{value}")
    path = Path(out_dir) / task.submission[split]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
