"""Typed settings of the training core (pydantic v2). Unknown fields are errors, so typos fail early."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from distilnas.distill.glue import get_task
from distilnas.distill.losses import LOSSES


def error_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's location tuple as a field path: ``('final', 'tasks', 2)`` -> ``final.tasks[2]``."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic marks a bad dict key after the key itself
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def describe(exc: ValidationError) -> str:
    """The first error as ``path: reason`` on one line, and how many more there are."""
    errors = exc.errors()
    first = errors[0]
    reason = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "extra_forbidden":
        reason = "unknown field"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{error_path(first['loc'])}: {reason}{more}"


class Strict(BaseModel):
    """Base of every config model: unknown fields are rejected, values are validated on assignment, and a
    nested section given in part keeps its default's other settings (``task: {prediction: {steps: 100}}``
    keeps the prediction stage's ``prediction_ce``): sections merge field by field, never replace."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @model_validator(mode="before")
    @classmethod
    def _merge_with_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, spec in cls.model_fields.items():
            default, given = spec.default, merged.get(name)
            if isinstance(default, BaseModel) and isinstance(given, dict):
                merged[name] = {**default.model_dump(exclude_unset=True), **given}
        return merged


def check_task(name: str) -> str:
    """Validate and normalise a GLUE task name (raises ValueError naming the known tasks)."""
    try:
        return get_task(name).name
    except ValueError as exc:
        raise ValueError(str(exc)) from None


TaskName = Annotated[str, AfterValidator(check_task)]
"""A GLUE task name, normalised (``SST-2`` -> ``sst2``); an unknown one fails with the known list."""


class TrainSettings(Strict):
    """How a model is fine-tuned on a GLUE task."""

    epochs: float = Field(3.0, gt=0)
    """Passes over the training set (fractions allowed)."""
    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps, whatever ``epochs`` says."""
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int = Field(128, gt=0)
    lr: float = Field(5e-5, gt=0)
    """Peak learning rate of AdamW (reached after warm-up, then linear decay to 0)."""
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(128, ge=8, le=512)
    """Sequences are truncated to this many tokens; batches are padded only to their longest row."""
    train_limit: int | None = Field(None, gt=0)
    """Use only the first N training rows (quick runs)."""
    seed: int = 42


class TeacherConfig(Strict):
    """The teacher: a HF BERT-family name or folder, or ``minilm-l6`` (bundled, offline)."""

    name: str = "minilm-l6"
    train: TrainSettings = TrainSettings()
    """Fine-tuning settings for every task..."""
    overrides: dict[TaskName, dict[str, Any]] = {}
    """...and per-task changes to them, e.g. ``{sst2: {epochs: 1}}``."""

    @field_validator("overrides")
    @classmethod
    def _valid_overrides(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for task, changes in v.items():
            try:
                TrainSettings.model_validate({**TrainSettings().model_dump(), **changes})
            except ValidationError as exc:
                raise ValueError(f"{task}.{describe(exc)}") from None
        return v

    def settings_for(self, task: str) -> TrainSettings:
        """The training settings for one task: ``train`` with the task's overrides applied."""
        changes = self.overrides.get(task, {})
        return TrainSettings.model_validate({**self.train.model_dump(), **changes})


class CorpusConfig(Strict):
    """Raw text for task-agnostic distillation: local files, or a HF dataset when online."""

    files: list[Path] = []
    """Text files (.txt, .raw: one example per line or paragraph; .tsv: the first column)."""
    hf_dataset: str | None = None
    """A HF dataset name (e.g. ``wikitext``), used when ``files`` is empty."""
    hf_config: str | None = None
    hf_split: str = "train"
    text_column: str = "text"
    unit: Literal["line", "paragraph"] = "line"
    min_chars: int = Field(20, ge=0)
    """Lines or paragraphs shorter than this are dropped (WikiText's fragments)."""

    @model_validator(mode="after")
    def _has_source(self) -> CorpusConfig:
        if not self.files and not self.hf_dataset:
            raise ValueError("give corpus files or an hf_dataset")
        return self


class DataConfig(Strict):
    """Where data comes from and where derived data is cached."""

    glue_dir: Path | None = None
    """A local GLUE folder in the classic ``glue_data/<TASK>/*.tsv`` layout; empty: the HF hub."""
    corpus: CorpusConfig | None = None
    cache_dir: Path | None = None
    """Tokenized data, fine-tuned teachers, teacher outputs. Empty: $DISTILNAS_CACHE or ~/.cache/distilnas."""


def _known_losses(weights: dict[str, float]) -> dict[str, float]:
    for name, w in weights.items():
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
        if w < 0:
            raise ValueError(f"{name}: a loss weight cannot be negative")
    if not any(weights.values()):
        raise ValueError("at least one loss needs a positive weight")
    return weights


LossWeights = Annotated[dict[str, float], AfterValidator(_known_losses)]
"""Loss name -> weight, names from ``distilnas.distill.losses.LOSSES``."""


class DistillSettings(Strict):
    """One distillation stage: what is matched (loss weights) and how the student is optimised."""

    losses: LossWeights = {"embedding_mse": 1.0, "hidden_mse": 1.0, "minilm_relation": 1.0}
    steps: int | None = Field(None, gt=0)
    """Optimizer steps; empty: ``epochs`` passes over the data."""
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    temperature: float = Field(1.0, gt=0)
    """Softens both distributions in ``prediction_ce``."""
    relation_heads: int = Field(8, gt=0)
    """MiniLMv2 relation heads; must divide both the student's and the teacher's hidden size."""
    pad_to: int | None = Field(None, gt=0)
    """Pad every batch to this length; empty: dynamic padding with length-bucketed batches."""
    checkpoint_every: int = Field(200, ge=0)
    """Save a resumable checkpoint every N steps (0: only at the end)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Matrix products of the student (and a live teacher) in bf16 autocast, weights and optimizer in
    fp32; ``auto``: bf16 where the device has it natively (CUDA, CPUs with AVX512-BF16 or AMX)."""
    embedding_updates: Literal["dense", "rows"] = "dense"
    """``dense``: every row of the word-embedding table gets AdamW's update (on CPU computed from the
    rows batches have touched, to fp32 rounding); ``rows``: only the rows each batch has, the others
    waiting (LazyAdam, which learns differently; :mod:`distilnas.distill.optim`)."""
    seed: int = 0


class TaskDistillConfig(Strict):
    """TinyBERT's task distillation: intermediate layers first, then the prediction layer."""

    intermediate: DistillSettings = DistillSettings(
        losses={"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_mse": 1.0}, epochs=3
    )
    prediction: DistillSettings = DistillSettings(losses={"prediction_ce": 1.0}, epochs=3, lr=5e-5)


class KroneckerFactors(Strict):
    """One kind of layer as Σᵢ Aᵢ ⊗ Bᵢ: A is ``a`` (rows x columns), B is ``b``, ``rank`` terms. The
    products of the factors' rows and of their columns must equal the layer's output and input sizes."""

    a: tuple[PositiveInt, PositiveInt] | None = None
    """A's shape (for ``embedding``: vocabulary x hidden/k, implied by ``b`` when left out)."""
    b: tuple[PositiveInt, PositiveInt]
    rank: int = Field(1, gt=0)


class KroneckerConfig(Strict):
    """KroneckerBERT: which layers of the student are Kronecker-factored, and how (empty: dense)."""

    embedding: KroneckerFactors | None = None
    """The word embeddings as A (vocabulary x hidden/k) ⊗ B (1 x k)."""
    attention: KroneckerFactors | None = None
    """Query, key, value and output maps (hidden x hidden)."""
    ffn_in: KroneckerFactors | None = None
    """The feed-forward up map (intermediate x hidden)."""
    ffn_out: KroneckerFactors | None = None
    """The feed-forward down map (hidden x intermediate)."""

    def factors(self) -> dict[str, dict[str, Any]]:
        """As the Kronecker model's config holds them."""
        return self.model_dump(mode="json", exclude_none=True)


class ReferencesConfig(Strict):
    """RefBERT: each input brings the fine-tuned teacher's representation of the most similar other
    training example (TF-IDF cosine), which the student's first layer attends to as extra keys and values.
    Used in task distillation and scoring; general distillation has no references."""

    teacher_layer: int | None = Field(None, ge=0)
    """The teacher layer whose hidden states are stored (0: embeddings; empty: the last layer)."""
    tokens: int = Field(32, gt=0)
    """The first this-many tokens of each reference are stored and attended to."""


class StudentShape(Strict):
    """A BERT student's sizes; empty ones follow the teacher (its head size and FFN ratio)."""

    layers: int = Field(4, gt=0)
    hidden: int | None = Field(None, gt=0)
    heads: int | None = Field(None, gt=0)
    intermediate: int | None = Field(None, gt=0)


class StudentConfig(StudentShape):
    """A BERT student; empty sizes follow the teacher (its head size and FFN ratio)."""

    init: Literal["random", "copy", "extract"] = "extract"
    """How the student starts: random, a copy of the mapped teacher layers, or extracted from them."""
    importance_batches: int = Field(8, ge=0)
    """Batches that rank heads and neurons for ``extract``."""
    kronecker: KroneckerConfig | None = None
    """Kronecker-factor the student's layers (KroneckerBERT), started from its initial dense weights."""
    references: ReferencesConfig | None = None
    """Give the student reference samples (RefBERT) in its task stages."""
    embedding: int | None = Field(None, gt=0)
    """Factorise the word embeddings (ALBERT-style) to a table this wide and a projection to the hidden
    size, started by truncated SVD of the initial table."""

    @model_validator(mode="after")
    def _one_option(self) -> StudentConfig:
        chosen = [k for k in ("kronecker", "references", "embedding") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} cannot be combined yet; choose one")
        return self


class DistillConfig(Strict):
    """How one student is distilled: general distillation on the corpus, then task distillation."""

    student: StudentConfig = StudentConfig()
    mapping: str = "uniform"
    """``uniform`` (TinyBERT), ``last`` (the top layers), or a mapping string such as ``2,4,6/6``."""
    max_length: int = Field(128, ge=8, le=512)
    corpus_fraction: float = Field(1.0, gt=0, le=1)
    """Fraction of the corpus used for general distillation (seeded)."""
    general: DistillSettings = DistillSettings(epochs=1)
    task: TaskDistillConfig = TaskDistillConfig()
    train_limit: int | None = Field(None, gt=0)
    """Use only the first N training rows of a task (both for distillation and the plain baseline)."""
    baseline: TrainSettings = TrainSettings(epochs=3, lr=1e-4)
    """Fine-tuning of the same student on gold labels, without a teacher (the comparison)."""


class LatencyConfig(Strict):
    """How students and the teacher are timed: batch 1, sequence 128 on this device by default."""

    batch_size: int = Field(1, gt=0)
    seq_len: int = Field(128, gt=0)
    threads: int | None = Field(None, gt=0)
    """torch CPU threads (default: torch's)."""
    device: Literal["cpu", "cuda"] | None = None
    """The device that will serve the students, where they are timed (CUDA: with CUDA events, after a
    warm-up); default: CUDA where the machine running the stage has it, else its CPU."""
    repeats: int = Field(50, gt=0)
