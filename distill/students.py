"""The student kinds, in one registry: a plain BERT, a Kronecker-factored BERT (KroneckerBERT), a referenced
BERT (RefBERT) and a NAS-BERT supernet student.

What tells the kinds apart lives here and nowhere else: how a student of the kind is resolved from the
config and built, how it gets a task head, what its task stages add (a referenced student's reference
store and splits), which losses it can serve, what makes its checkpoints its own, what shares its timing
and how it is measured, and how its architecture is recorded. Everything else asks the registry:
``kind_of(spec)`` for a described student, ``kind_of_model(model)`` for a built one.

A student is described by a :class:`StudentSpec` (shape and the kind's options) and recorded by a
:class:`StudentRecord` (the spec, its name, initialisation, layer mapping and origin): what the final
stage writes and ``results/`` reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    PretrainedConfig,
    PreTrainedModel,
)

from distilnas.distill import nas_bert
from distilnas.distill.bert import BertShape, bert_config, build_student, check_build
from distilnas.distill.config import LatencyConfig, StudentConfig
from distilnas.distill.data import TokenizedSplit
from distilnas.distill.errors import UserError
from distilnas.distill.factorised import check_embedding_size, factorised
from distilnas.distill.kronecker import check_factors, kroneckerise
from distilnas.distill.measure import retrieval_latency, timed
from distilnas.distill.reference_store import ReferenceStore, referenced_split, task_store
from distilnas.distill.referenced_bert import referenced
from distilnas.distill.teacher import ModelSource, load_encoder, load_pretrained
from distilnas.distill.teacher_cache import TeacherCache
from distilnas.distill.utils import fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentSpec(BertShape):
    """What a student is: its shape and its kind's options (at most one is set; none: a plain BERT).

    A NAS-BERT student's sizes are for the record: its blocks, its widest block, that block's heads and
    feed-forward size."""

    kronecker: dict[str, Any] | None = field(default=None, hash=False)
    """Layer kind -> {"a", "b", "rank"} (see :mod:`distilnas.distill.kronecker`)."""
    references: dict[str, Any] | None = field(default=None, hash=False)
    """{"teacher_layer", "tokens"}: a plain BERT encoder that takes references from its task stages on."""
    nas: dict[str, str] | None = field(default=None, hash=False)
    """A supernet student: its ``path`` and the ``folder`` of its extracted weights."""
    # ``embedding`` (BertShape's): a factorised word-embedding table's width, the factorised kind's option

    def __post_init__(self) -> None:
        if self.nas is None:  # a NAS-BERT student's sizes are a summary of its blocks
            super().__post_init__()

    @property
    def kind(self) -> StudentKind:
        return kind_of(self)

    @property
    def name(self) -> str:
        return self.size_name + self.kind.suffix


@dataclass
class StudentRecord:
    """A student as the final stage distils it and ``results/`` reads it: name, spec, initialisation,
    layer mapping (a mapping string; a supernet student's pairs each block with a teacher layer) and
    where it came from. Its JSON is flat (the spec's fields beside the others)."""

    name: str
    spec: StudentSpec
    init: str
    mapping: str
    origin: list[str] = field(default_factory=list)

    @property
    def kind(self) -> StudentKind:
        return self.spec.kind

    def options(self) -> dict[str, Any]:
        """The BERT options of the spec (an export's ``student.json`` records them)."""
        return {
            "kronecker": self.spec.kronecker,
            "references": self.spec.references,
            "embedding": self.spec.embedding,
        }

    def to_json(self) -> dict[str, Any]:
        spec = {f.name: getattr(self.spec, f.name) for f in fields(StudentSpec)}
        return {
            "name": self.name,
            **{k: spec[k] for k in ("layers", "hidden", "heads", "intermediate")},
            "init": self.init,
            "mapping": self.mapping,
            "origin": list(self.origin),
            **{k: spec[k] for k in ("embedding", "kronecker", "references", "nas")},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudentRecord:
        spec = StudentSpec(**{f.name: data.get(f.name) for f in fields(StudentSpec)})  # type: ignore[arg-type]
        return cls(data["name"], spec, data["init"], data["mapping"], list(data.get("origin", [])))


@dataclass
class TaskInputs:
    """What a task stage trains and scores a student on: its training rows and its eval and test splits
    (a referenced student's carry their references)."""

    train: TokenizedSplit
    evals: list[TokenizedSplit]
    tests: list[TokenizedSplit]


def label_as(cfg: PretrainedConfig, teacher_config: PretrainedConfig) -> None:
    """Name ``cfg``'s labels as the (fine-tuned) teacher names them."""
    names: Any = teacher_config.id2label
    cfg.id2label = {int(k): str(v) for k, v in names.items()}
    cfg.label2id = {str(v): int(k) for k, v in names.items()}
    cfg.problem_type = teacher_config.problem_type


class StudentKind:
    """A kind of student (see the module docstring); the base is what the kinds share."""

    name: ClassVar[str]
    model_type: ClassVar[str]
    """transformers' ``model_type`` of the kind's models."""
    label: ClassVar[str]
    """How ``distilnas inspect`` names the kind."""
    suffix: ClassVar[str] = ""
    """Added to the student's size in its name (``2L-96-kron``)."""
    architecture: ClassVar[str] = "bert"
    """``architecture.type`` in an exported ``student.json``."""
    serves: ClassVar[frozenset[str] | None] = None
    """The losses a student of the kind can be distilled with (None: every loss)."""
    matches_embeddings: ClassVar[bool] = True
    """Whether its embedding output is matched with the teacher's (layer pair (0, 0))."""
    builds_from_teacher: ClassVar[bool] = True
    """Whether building it reads the teacher's weights (copied or extracted layers)."""

    option: ClassVar[str | None] = None
    """The field of the spec (and of ``distill.student``) that makes a student of this kind."""

    # ------------------------------------------------------------------ describing

    def applies(self, spec: StudentSpec) -> bool:
        """Whether ``spec`` describes a student of this kind."""
        return self.option is not None and getattr(spec, self.option) is not None

    def configured(self, config: StudentConfig) -> bool:
        """Whether the ``distill.student`` section asks for this kind."""
        return self.option is not None and getattr(config, self.option, None) is not None

    def options(self, config: StudentConfig, shape: BertShape, teacher: PretrainedConfig) -> dict[str, Any]:
        """The spec's options from the config, checked against the teacher's config (one-line errors)."""
        return {}

    def proxy_form(self, spec: StudentSpec) -> StudentSpec:
        """The student a proxy trial distils in its place (the same, but for a referenced student)."""
        return spec

    # ------------------------------------------------------------------ building

    def build(
        self,
        spec: StudentSpec,
        teacher: PreTrainedModel,
        init: str,
        layer_sources: Sequence[int | None] | None = None,
        scores: tuple[torch.Tensor, torch.Tensor] | None = None,
        seed: int = 0,
    ) -> PreTrainedModel:
        """The student's encoder before distillation."""
        dense = build_student(spec, teacher, init, layer_sources, seed=seed, importance_scores=scores)  # type: ignore[arg-type]
        assert isinstance(dense, BertModel)  # an encoder: no task head yet
        return self.converted(dense, spec)

    def converted(self, dense: BertModel, spec: StudentSpec) -> PreTrainedModel:
        """The kind's model made from the dense BERT of its shape (built or random), its weights started
        from the dense ones (a Kronecker or factorised student); the dense BERT itself by default."""
        return dense

    def check_start(self, spec: StudentSpec, teacher: PretrainedConfig, init: str) -> None:
        """Refuse a start the teacher cannot give (copied or extracted layers wider than its), from its
        config alone, before any work."""
        check_build(spec, teacher, init)

    def random_encoder(self, spec: StudentSpec, teacher: PretrainedConfig) -> PreTrainedModel:
        """The encoder as deployed, with random weights (its size and speed do not depend on them)."""
        return self.converted(BertModel(bert_config(spec, teacher)), spec)

    def with_head(self, encoder: PreTrainedModel, teacher_config: PretrainedConfig) -> PreTrainedModel:
        """A sequence-classification student whose encoder is ``encoder``'s weights, labelled as the
        teacher: the kind's registered head."""
        cfg = type(encoder.config).from_dict(encoder.config.to_dict())
        label_as(cfg, teacher_config)
        torch.manual_seed(0)
        head = AutoModelForSequenceClassification.from_config(cfg)
        head.base_model.load_state_dict(encoder.state_dict())
        return head

    # ------------------------------------------------------------------ task stages

    def task_fields(self, spec: StudentSpec) -> set[str]:
        """Teacher outputs its task stages need in the task's cache beyond its losses'."""
        return set()

    def task_store(
        self, spec: StudentSpec, cache: TeacherCache, texts: Callable[[], list[str]], root: Path
    ) -> ReferenceStore | None:
        """What the kind keeps beside a task's teacher cache (a referenced student's reference store)."""
        return None

    def for_task(
        self,
        model: PreTrainedModel,
        spec: StudentSpec,
        inputs: TaskInputs,
        store: str,
        teacher_width: int,
        glue_dir: str | Path | None,
        train_limit: int | None,
    ) -> tuple[PreTrainedModel, TaskInputs]:
        """The task model and its inputs (a referenced student attends to references on every split)."""
        return model, inputs

    def settings(self, losses: dict[str, float]) -> dict[str, float]:
        """A stage's loss weights for this kind (those it can serve)."""
        return losses

    def check_losses(self, losses: Iterable[str], pairs: Sequence[tuple[int, int]]) -> None:
        """Refuse losses the kind cannot serve, before any training."""
        if self.serves is None:
            return
        other = sorted(set(losses) - self.serves)
        if other or (not self.matches_embeddings and any(s == 0 for s, _ in pairs)):
            raise UserError(
                f"a {self.name} student distils {', '.join(sorted(self.serves))} over its layer pairs; "
                f"not {other or 'the embeddings (pair 0)'}"
            )

    def checkpoint_options(self, config: PretrainedConfig) -> dict[str, Any]:
        """What tells this kind's checkpoints from a plain student's of the same shape."""
        return {}

    def split_inputs(
        self, model: PreTrainedModel, glue_dir: str | Path | None
    ) -> Callable[[TokenizedSplit, int | None], TokenizedSplit] | None:
        """How a saved model of this kind reads a split (a referenced student retrieves references)."""
        return None

    def stored_per_example(self, config: PretrainedConfig) -> dict[str, int] | None:
        """What the kind stores beside its weights for each pool example (None: nothing)."""
        return None

    # ------------------------------------------------------------------ measuring and recording

    def shape_key(self, record: StudentRecord) -> str:
        """Students with the same key share one timing (latency depends on the architecture alone)."""
        s = record.spec
        return f"{s.layers}L-{s.hidden}H-{s.heads}A-{s.intermediate}F"

    def shape_label(self, record: StudentRecord) -> str:
        """The results table's ``shape`` column (and an export folder's name)."""
        return record.spec.size_name

    def saved_size(self, config: PretrainedConfig, folder: Path) -> str:
        """How ``distilnas inspect`` names the size of a saved student."""
        return f"{config.num_hidden_layers}L-{config.hidden_size}"

    def deployed(self, model: PreTrainedModel) -> PreTrainedModel:
        """``model`` as it is timed, put on the front and exported: itself, but for a NAS-BERT student."""
        return model

    def deploy_folder(self, folder: Path) -> None:
        """Rewrite the model saved in ``folder`` (an export's copy) in its deployed form."""

    def measure(self, folder: Path, tasks: Sequence[str], latency: LatencyConfig) -> dict[str, Any] | None:
        """Parameters and latency of a distilled student (``folder``: its general encoder and task models),
        as deployed (SDPA attention); None when nothing is saved yet."""
        general = folder / "general"
        if not (general / "config.json").is_file():
            return None
        return timed(serving_encoder(ModelSource(str(general), str(general), True, True)), latency)

    def architecture_record(self, record: StudentRecord) -> dict[str, Any]:
        s = record.spec
        return {
            "type": self.architecture,
            "layers": s.layers,
            "hidden": s.hidden,
            "heads": s.heads,
            "intermediate": s.intermediate,
            "init": record.init,
        }


class PlainBert(StudentKind):
    name = "plain"
    model_type = "bert"
    label = "bert"

    def applies(self, spec: StudentSpec) -> bool:
        return not any(k.applies(spec) for k in KINDS.values() if k is not self)

    def with_head(self, encoder: PreTrainedModel, teacher_config: PretrainedConfig) -> PreTrainedModel:
        cfg = BertConfig.from_dict(encoder.config.to_dict())
        label_as(cfg, teacher_config)
        cfg._attn_implementation = "eager"
        torch.manual_seed(0)
        model = BertForSequenceClassification(cfg)
        model.bert.load_state_dict(encoder.state_dict())
        return model


class KroneckerBert(StudentKind):
    name = "kronecker"
    model_type = "kronecker-bert"
    label = "kronecker"
    suffix = "-kron"
    option = "kronecker"

    def options(self, config: StudentConfig, shape: BertShape, teacher: PretrainedConfig) -> dict[str, Any]:
        assert config.kronecker is not None
        factors = config.kronecker.factors()
        try:
            check_factors(factors, int(teacher.vocab_size), shape.hidden, shape.intermediate)
        except UserError as exc:
            raise UserError(f"distill.student.{exc}") from None
        return {"kronecker": factors}

    def converted(self, dense: BertModel, spec: StudentSpec) -> PreTrainedModel:
        return kroneckerise(dense, spec.kronecker or {})

    def checkpoint_options(self, config: PretrainedConfig) -> dict[str, Any]:
        factors = getattr(config, "kronecker", None)
        return {"kronecker": factors} if factors else {}

    def shape_key(self, record: StudentRecord) -> str:
        return super().shape_key(record) + f"-kron{fingerprint(record.spec.kronecker)[:6]}"


class ReferencedBert(StudentKind):
    name = "referenced"
    model_type = "referenced-bert"
    label = "referenced"
    suffix = "-ref"
    option = "references"

    def options(self, config: StudentConfig, shape: BertShape, teacher: PretrainedConfig) -> dict[str, Any]:
        assert config.references is not None
        refs = config.references.model_dump()
        layers = int(teacher.num_hidden_layers)
        if refs["teacher_layer"] is not None and refs["teacher_layer"] > layers:
            raise UserError(
                f"distill.student.references.teacher_layer: {refs['teacher_layer']} is not a teacher layer "
                f"(0..{layers})"
            )
        refs["teacher_layer"] = layers if refs["teacher_layer"] is None else refs["teacher_layer"]
        return {"references": refs}

    def proxy_form(self, spec: StudentSpec) -> StudentSpec:
        """References are a final-stage option: proxy trials distil the plain student of the same shape
        (there are no reference stores for the proxy tasks)."""
        return replace(spec, references=None)

    def random_encoder(self, spec: StudentSpec, teacher: PretrainedConfig) -> PreTrainedModel:
        refs = spec.references or {}
        encoder = super().random_encoder(spec, teacher)
        return referenced(encoder, int(teacher.hidden_size), refs["teacher_layer"], refs["tokens"])  # type: ignore[arg-type]

    def task_fields(self, spec: StudentSpec) -> set[str]:
        return {"hidden"}  # the reference store is taken from the cache's hidden states

    def task_store(
        self, spec: StudentSpec, cache: TeacherCache, texts: Callable[[], list[str]], root: Path
    ) -> ReferenceStore | None:
        refs = spec.references or {}
        teacher = str(cache.index["teacher"])
        return task_store(cache, texts(), teacher, refs["teacher_layer"], refs["tokens"], root)

    def for_task(
        self,
        model: PreTrainedModel,
        spec: StudentSpec,
        inputs: TaskInputs,
        store: str,
        teacher_width: int,
        glue_dir: str | Path | None,
        train_limit: int | None,
    ) -> tuple[PreTrainedModel, TaskInputs]:
        refs = spec.references or {}
        references = ReferenceStore(Path(store))
        model = referenced(model, teacher_width, refs["teacher_layer"], refs["tokens"]).attach(references)  # type: ignore[arg-type]
        return model, TaskInputs(
            referenced_split(references, inputs.train, glue_dir, train_limit),
            [referenced_split(references, e, glue_dir) for e in inputs.evals],
            [referenced_split(references, e, glue_dir) for e in inputs.tests],
        )

    def checkpoint_options(self, config: PretrainedConfig) -> dict[str, Any]:
        store = getattr(config, "reference_store", None)
        return {"reference_store": store} if store else {}

    def split_inputs(
        self, model: PreTrainedModel, glue_dir: str | Path | None
    ) -> Callable[[TokenizedSplit, int | None], TokenizedSplit] | None:
        store = getattr(model, "reference_store", None)
        if store is None:
            return None
        return lambda split, limit: referenced_split(store, split, glue_dir, limit)

    def stored_per_example(self, config: PretrainedConfig) -> dict[str, int] | None:
        values = int(config.reference_tokens) * int(config.reference_hidden_size)
        return {
            "tokens": int(config.reference_tokens),
            "teacher_layer": int(config.reference_layer),
            "values_per_example": values,
            "bytes_per_example": 2 * values,  # fp16
        }

    def shape_key(self, record: StudentRecord) -> str:
        return super().shape_key(record) + f"-ref{fingerprint(record.spec.references)[:6]}"

    def measure(self, folder: Path, tasks: Sequence[str], latency: LatencyConfig) -> dict[str, Any] | None:
        """The encoder (reference projection included) timed with a full-length reference, plus the time
        to retrieve one input's reference, averaged over the tasks' stores (each task has its own pool);
        the stores' sizes are recorded apart from the parameters."""
        saved = [folder / t for t in tasks if (folder / t / "config.json").is_file()]
        if not saved:  # not distilled on any task yet
            return None
        figures = timed(AutoModel.from_pretrained(saved[0], attn_implementation="sdpa"), latency)
        retrieval, stores = {}, {}
        for path in saved:  # each task's store beside its model (the weights are not needed for this)
            store = ReferenceStore(path / "references")
            retrieval[path.name] = retrieval_latency(store.lookup, store.index.texts[:200])["ms"]
            stores[path.name] = store.bytes
        mean = sum(retrieval.values()) / len(retrieval)
        lat = {**figures["latency"], "model_ms": figures["latency"]["ms"], "retrieval_ms": mean}
        lat["ms"] += mean
        return {**figures, "latency": lat, "retrieval_ms": retrieval, "store_bytes": stores}


class FactorisedBert(StudentKind):
    name = "factorised"
    model_type = "factorised-bert"
    label = "factorised"
    option = "embedding"

    def options(self, config: StudentConfig, shape: BertShape, teacher: PretrainedConfig) -> dict[str, Any]:
        assert config.embedding is not None
        check_embedding_size(config.embedding, shape.hidden, "distill.student.embedding")
        return {"embedding": config.embedding}

    def converted(self, dense: BertModel, spec: StudentSpec) -> PreTrainedModel:
        """The dense student (copied, extracted or random), its table then factorised by truncated SVD."""
        assert spec.embedding is not None
        return factorised(dense, spec.embedding)

    def checkpoint_options(self, config: PretrainedConfig) -> dict[str, Any]:
        return {"embedding_size": config.embedding_size}

    def shape_key(self, record: StudentRecord) -> str:
        return super().shape_key(record) + f"-E{record.spec.embedding}"

    def saved_size(self, config: PretrainedConfig, folder: Path) -> str:
        return super().saved_size(config, folder) + f"-e{config.embedding_size}"

    def architecture_record(self, record: StudentRecord) -> dict[str, Any]:
        return {**super().architecture_record(record), "embedding": record.spec.embedding}


NAS_LOSSES = frozenset({"hidden_mse", "hidden_cosine", "prediction_ce", "hard_label"})


class NasBert(StudentKind):
    name = "nas-bert"
    model_type = "nas-bert"
    label = "supernet path"
    architecture = "nas-bert"
    option = "nas"
    serves = NAS_LOSSES
    """Block outputs and logits: a NAS-BERT student has no attention maps to match."""
    matches_embeddings = False
    """Its embeddings are at block 1's width and stand for no teacher layer."""
    builds_from_teacher = False
    """It starts from the weights it inherited from the supernet."""

    def build(
        self,
        spec: StudentSpec,
        teacher: PreTrainedModel,
        init: str,
        layer_sources: Sequence[int | None] | None = None,
        scores: tuple[torch.Tensor, torch.Tensor] | None = None,
        seed: int = 0,
    ) -> PreTrainedModel:
        """Its inherited weights, extracted from the supernet (where its distillation starts)."""
        assert spec.nas is not None
        return AutoModel.from_pretrained(spec.nas["folder"])

    def check_start(self, spec: StudentSpec, teacher: PretrainedConfig, init: str) -> None:
        pass  # it starts from the supernet's weights

    def settings(self, losses: dict[str, float]) -> dict[str, float]:
        """Its losses among those it can serve, or hidden-state MSE at the block boundaries when none
        of them can."""
        kept = {k: v for k, v in losses.items() if k in NAS_LOSSES and v}
        return kept or {"hidden_mse": 1.0}

    def checkpoint_options(self, config: PretrainedConfig) -> dict[str, Any]:
        return {"path": config.path}

    def shape_key(self, record: StudentRecord) -> str:
        return record.name  # its name carries its path's digest

    def shape_label(self, record: StudentRecord) -> str:
        return record.name

    def saved_size(self, config: PretrainedConfig, folder: Path) -> str:
        return str(config.path)

    def deployed(self, model: PreTrainedModel) -> PreTrainedModel:
        """Its deployed form (block widths only; distill/nas_bert.py): exact, and what serving runs."""
        return nas_bert.deployed(model)  # type: ignore[arg-type]

    def deploy_folder(self, folder: Path) -> None:
        config = AutoConfig.from_pretrained(folder)
        if config.form == nas_bert.DEPLOYED:
            return
        heads = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
        model = load_pretrained(AutoModelForSequenceClassification if heads else AutoModel, str(folder))
        self.deployed(model).save_pretrained(folder)

    def architecture_record(self, record: StudentRecord) -> dict[str, Any]:
        out = super().architecture_record(record)
        path = (record.spec.nas or {})["path"]
        return {"type": out.pop("type"), "path": path, "form": nas_bert.DEPLOYED, **out}


KINDS: dict[str, StudentKind] = {
    k.name: k for k in (KroneckerBert(), ReferencedBert(), FactorisedBert(), NasBert(), PlainBert())
}
"""Every student kind, by name; the first that applies to a spec is its kind (plain comes last)."""
BY_MODEL_TYPE: dict[str, StudentKind] = {k.model_type: k for k in KINDS.values()}


def kind_of(spec: StudentSpec) -> StudentKind:
    return next(k for k in KINDS.values() if k.applies(spec))


def serving_encoder(source: ModelSource, allow_random: bool = False) -> PreTrainedModel:
    """A saved encoder as it is served and timed: SDPA attention, in its kind's deployed form."""
    model = load_encoder(source, allow_random=allow_random, attention="sdpa")
    return kind_of_model(model).deployed(model)


def kind_of_model(model: PreTrainedModel | PretrainedConfig, strict: bool = False) -> StudentKind:
    """The kind of a built (or saved) student, by its ``model_type``; another model is a plain one, or
    with ``strict`` an error."""
    config = model if isinstance(model, PretrainedConfig) else model.config
    kind = BY_MODEL_TYPE.get(str(config.model_type))
    if kind is None and strict:
        raise UserError(f"a {config.model_type!r} model is not a distilnas student")
    return kind or KINDS["plain"]


def student_spec(config: StudentConfig, teacher: PretrainedConfig) -> StudentSpec:
    """The configured student; sizes left empty follow the teacher's head size and FFN ratio, and the
    kind's options are checked against the teacher's config (no weights needed)."""
    base = BertShape.like(teacher, config.layers, config.hidden)
    shape = BertShape(
        config.layers, base.hidden, config.heads or base.heads, config.intermediate or base.intermediate
    )
    options: dict[str, Any] = {}
    for kind in KINDS.values():
        if kind.configured(config):
            options |= kind.options(config, shape, teacher)
    return StudentSpec(shape.layers, shape.hidden, shape.heads, shape.intermediate, **options)
