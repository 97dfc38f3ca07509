"""Reference students (RefBERT, Wang et al. 2021): each input brings the teacher's pre-computed
representation of a similar *other* example, which the student's first layer attends to.

Three parts, all saved with the student so they travel together:

- :class:`ReferenceIndex` retrieves, for each input, the most similar other example of a pool (a task's
  training set) by TF-IDF cosine. It never returns the query itself: the caller names the pool row a
  query comes from (training inputs), and a pool text identical to the query is skipped as well (dev and
  test inputs that repeat a training sentence).
- :class:`ReferenceStore` holds the pool's teacher representations (one teacher layer, the first
  ``tokens`` tokens of each example, fp16), taken once from the teacher-output cache, beside the index.
  It records which teacher and which pool it was made from; a store of another teacher or dataset is
  refused, never silently used.
- :class:`ReferencedBertModel` / :class:`ReferencedBertForSequenceClassification` (``model_type``
  ``referenced-bert``, registered with the Auto classes): a BERT whose first self-attention also attends
  to the reference. The reference states are projected to the student's width (``reference_projection``,
  the only new weights) and go through that layer's own key and value maps, so they become extra keys and
  values; the queries are the input's alone, and every later layer is a plain BERT layer. Inputs name the
  reference by its pool row (``reference_ids``, looked up in the attached store) or give its states
  directly (``reference_states``, ``reference_mask``); without either the model is a plain BERT.

Departures from the paper: retrieval is TF-IDF (not the teacher's own embedding), and the reference enters
the first layer only.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from datasets import Dataset
from sklearn.feature_extraction.text import TfidfVectorizer
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertSelfAttention, eager_attention_forward

from distilnas.distill.data import TokenizedSplit
from distilnas.distill.errors import UserError
from distilnas.distill.glue import GlueTask, load_split
from distilnas.distill.teacher_cache import TeacherCache
from distilnas.distill.utils import atomic_dir, fingerprint, register_student

MODEL_TYPE = "referenced-bert"
STORE_FORMAT = "reference-store-v1"


def pool_fingerprint(texts: Sequence[str]) -> str:
    return fingerprint("reference-pool-v1", list(texts))


class ReferenceIndex:
    """TF-IDF vectors of a pool of texts (rows L2-normalised, so a dot product is the cosine)."""

    def __init__(self, vectorizer: TfidfVectorizer, matrix: sp.csr_matrix, texts: Sequence[str]) -> None:
        self.vectorizer, self.matrix, self.texts = vectorizer, matrix, list(texts)
        self.fingerprint = pool_fingerprint(self.texts)
        self.rows_of: dict[str, list[int]] = {}  # text -> its pool rows (duplicates are never returned)
        for i, t in enumerate(self.texts):
            self.rows_of.setdefault(t, []).append(i)

    @classmethod
    def build(cls, texts: Sequence[str]) -> ReferenceIndex:
        if len(texts) < 2:
            raise UserError("references: a pool needs at least 2 texts (a query never gets itself back)")
        vectorizer = TfidfVectorizer(sublinear_tf=True, lowercase=True)
        matrix = vectorizer.fit_transform(texts).tocsr()
        return cls(vectorizer, matrix, texts)

    def nearest(self, queries: Sequence[str], rows: Sequence[int | None] | None = None) -> np.ndarray:
        """The pool row most similar to each query, never the query's own ``rows[i]`` nor a pool text
        equal to it. Ties go to the lower row."""
        rows = rows if rows is not None else [None] * len(queries)
        scores = (self.vectorizer.transform(queries) @ self.matrix.T).toarray()
        for q, (text, row) in enumerate(zip(queries, rows, strict=True)):
            banned = set(self.rows_of.get(text, []))
            if row is not None:
                banned.add(int(row))
            if len(banned) >= len(self.texts):
                raise UserError("references: every pool text equals the query; no other example to use")
            scores[q, list(banned)] = -np.inf
        return np.argmax(scores, axis=1)

    # ------------------------------------------------------------------ storage

    def save(self, folder: Path) -> None:
        with atomic_dir(folder) as tmp:
            sp.save_npz(tmp / "matrix.npz", self.matrix)
            meta = {
                "fingerprint": self.fingerprint,
                "vocabulary": {k: int(v) for k, v in self.vectorizer.vocabulary_.items()},
                "idf": self.vectorizer.idf_.tolist(),
                "texts": self.texts,
            }
            (tmp / "index.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: Path, texts: Sequence[str] | None = None) -> ReferenceIndex:
        """The index saved in ``folder`` (for the pool ``texts`` when given: another pool's is refused)."""
        meta_file = folder / "index.json"
        if not meta_file.is_file() or not (folder / "matrix.npz").is_file():
            raise UserError(f"{folder}: no reference index here (build it first)")
        meta = json.loads(meta_file.read_text())
        if texts is not None and meta["fingerprint"] != pool_fingerprint(texts):
            raise UserError(f"{folder}: the reference index is for another dataset (fingerprint differs)")
        if pool_fingerprint(meta["texts"]) != meta["fingerprint"]:
            raise UserError(f"{folder}: the reference index's texts do not match its fingerprint (altered)")
        vectorizer = TfidfVectorizer(sublinear_tf=True, lowercase=True, vocabulary=meta["vocabulary"])
        vectorizer.idf_ = np.asarray(meta["idf"])
        return cls(vectorizer, sp.load_npz(folder / "matrix.npz").tocsr(), meta["texts"])


# ---------------------------------------------------------------------- the store


@dataclass(frozen=True)
class StoreKey:
    """What a reference store is made of; a store is used only where all of it matches."""

    teacher: str
    """The (fine-tuned) teacher's identity, as its teacher-output cache names it."""
    pool: str
    """The pool's fingerprint (its texts, in order)."""
    data: str
    """The pool's tokenized rows (their digest, as the teacher-output cache keys them): the stored states
    depend on how the examples were cut (``max_length``) as well as on their texts."""
    layer: int
    """The teacher layer whose hidden states are stored (0: embeddings)."""
    tokens: int
    """At most this many tokens of each example (the first ones, [CLS] included)."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(STORE_FORMAT, self.teacher, self.pool, self.data, self.layer, self.tokens)


class ReferenceStore:
    """The pool's teacher representations and the retrieval index over its texts (one folder).

    Layout: ``states.f16`` (tokens, hidden), ``offsets.i64`` (examples + 1), ``index/`` (the
    :class:`ReferenceIndex`) and ``store.json``, written last: the key, sizes and file sizes.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta_file = self.folder / "store.json"
        if not meta_file.is_file():
            raise UserError(f"{self.folder}: no reference store here (store.json missing)")
        self.meta = json.loads(meta_file.read_text())
        if not (self.folder / "index" / "index.json").is_file():
            raise UserError(f"{self.folder}: the retrieval index (index/) is missing beside the store")
        for name, size in self.meta["files"].items():
            f = self.folder / name
            if not f.is_file() or f.stat().st_size != size:
                raise UserError(f"{f}: missing or truncated ({size} bytes expected); rebuild the store")
        self.key = StoreKey(**self.meta["key"])
        self.index = ReferenceIndex.load(self.folder / "index")
        if self.index.fingerprint != self.key.pool:
            raise UserError(f"{self.folder}: the retrieval index is for another dataset than the store")
        self.offsets = np.fromfile(self.folder / "offsets.i64", dtype=np.int64)
        self.hidden_size = int(self.meta["hidden_size"])
        self.states_map = np.memmap(
            self.folder / "states.f16", np.float16, "r", shape=(int(self.offsets[-1]), self.hidden_size)
        )

    @classmethod
    def build(cls, folder: Path, cache: TeacherCache, index: ReferenceIndex, key: StoreKey) -> ReferenceStore:
        """Write the store of ``index``'s pool from a teacher-output ``cache`` of the same rows (its
        ``hidden`` field), atomically, and open it."""
        if cache.hidden is None:
            raise UserError(f"{cache.path}: the teacher-output cache has no hidden states for references")
        if cache.examples != len(index.texts):
            raise UserError(
                f"references: the teacher cache has {cache.examples} examples, the pool {len(index.texts)}"
            )
        layers = int(cache.hidden.shape[1]) - 1
        if not 0 <= key.layer <= layers:
            raise UserError(f"references.teacher_layer: {key.layer} is not a teacher layer (0..{layers})")
        starts = cache.offsets[:-1]
        keep = np.minimum(cache.offsets[1:] - starts, key.tokens)
        offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
        rows = np.concatenate([np.arange(s, s + k) for s, k in zip(starts, keep, strict=True)])
        with atomic_dir(folder) as tmp:
            states = np.ascontiguousarray(cache.hidden[rows, key.layer])
            states.astype(np.float16).tofile(tmp / "states.f16")
            offsets.tofile(tmp / "offsets.i64")
            index.save(tmp / "index")
            files = ["states.f16", "offsets.i64", "index/index.json", "index/matrix.npz"]
            meta = {
                "format": STORE_FORMAT,
                "key": key.__dict__,
                "fingerprint": key.fingerprint,
                "examples": len(keep),
                "hidden_size": int(cache.hidden.shape[2]),
                "files": {f: (tmp / f).stat().st_size for f in files},
            }
            (tmp / "store.json").write_text(json.dumps(meta, indent=2))
        return cls(folder)

    # ------------------------------------------------------------------ facts

    @property
    def examples(self) -> int:
        return len(self.offsets) - 1

    @property
    def bytes(self) -> int:
        """The store's size on disk: what travels with the student besides its weights."""
        return int(sum(self.meta["files"].values()))

    @property
    def values(self) -> int:
        """Stored numbers (tokens x hidden): the store's size counted as parameters are."""
        return int(self.offsets[-1]) * self.hidden_size

    def check(self, expected: StoreKey) -> None:
        """Refuse a store made from another teacher or dataset, or holding another layer or length."""
        teacher, pool, layer, tokens = expected.teacher, expected.pool, expected.layer, expected.tokens
        if self.key.teacher != teacher:
            raise UserError(
                f"{self.folder}: the reference store is from another teacher ({self.key.teacher})"
            )
        if self.key.pool != pool:
            raise UserError(f"{self.folder}: the reference store is for another dataset (its pool differs)")
        if self.key.data != expected.data:
            raise UserError(f"{self.folder}: the reference store's examples were tokenized otherwise")
        if (self.key.layer, self.key.tokens) != (layer, tokens):
            raise UserError(
                f"{self.folder}: the reference store holds teacher layer {self.key.layer}, "
                f"{self.key.tokens} tokens; the student reads layer {layer}, {tokens} tokens"
            )

    # ------------------------------------------------------------------ reading

    def retrieve(self, texts: Sequence[str], rows: Sequence[int | None] | None = None) -> np.ndarray:
        """The reference row of each text (see :meth:`ReferenceIndex.nearest`)."""
        return self.index.nearest(texts, rows)

    def states(
        self, rows: torch.Tensor | Sequence[int], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored states of pool ``rows``: (batch, tokens, hidden) float32, zero-padded, and the mask
        of real tokens (batch, tokens)."""
        r = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows, dtype=np.int64)
        if r.size and (r.min() < 0 or r.max() >= self.examples):
            bad = int(r[(r < 0) | (r >= self.examples)][0])
            raise UserError(f"reference row {bad} is outside the store's {self.examples} examples")
        starts, lengths = self.offsets[r], self.offsets[r + 1] - self.offsets[r]
        width = int(lengths.max(initial=1))
        mask = np.arange(width)[None, :] < lengths[:, None]
        src = (starts[:, None] + np.arange(width)[None, :])[mask]
        out = np.zeros((len(r), width, self.hidden_size), dtype=np.float32)
        out[mask] = self.states_map[src]
        return torch.from_numpy(out).to(device), torch.from_numpy(mask).to(device)

    def lookup(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One input's reference at inference: retrieval, then its stored states and mask."""
        return self.states(self.retrieve([text]).tolist())

    def copy_to(self, folder: Path) -> None:
        """The store's files under ``folder`` (beside a saved student)."""
        shutil.copytree(self.folder, folder, dirs_exist_ok=True)


def task_store(
    cache: TeacherCache, texts: Sequence[str], teacher: str, layer: int, tokens: int, root: Path
) -> ReferenceStore:
    """The reference store of a task's training ``texts`` (the pool), built once under ``root`` from the
    fine-tuned teacher's output cache of the same rows, and reused after."""
    key = StoreKey(teacher, pool_fingerprint(texts), str(cache.index["data"]), layer, tokens)
    folder = Path(root) / "references" / key.fingerprint
    if (folder / "store.json").is_file():
        store = ReferenceStore(folder)
        store.check(key)
        return store
    return ReferenceStore.build(folder, cache, ReferenceIndex.build(texts), key)


def example_texts(
    task: GlueTask, split: str, glue_dir: str | Path | None, limit: int | None = None
) -> list[str]:
    """A split's examples as retrieval sees them: the text fields joined by a space, in row order (the
    first ``limit`` rows, as :func:`~distilnas.distill.data.tokenize_split` keeps them)."""
    raw = load_split(task, split, glue_dir)
    if limit is not None and limit < len(raw):
        raw = raw.select(range(limit))
    columns = [raw[f] for f in task.text_fields]
    return [" ".join(parts) for parts in zip(*columns, strict=True)]


def with_references(dataset: Dataset, rows: np.ndarray) -> Dataset:
    """``dataset`` with a ``reference`` column (each example's reference row in the store)."""
    if "reference" in dataset.column_names:
        dataset = dataset.remove_columns("reference")
    return dataset.add_column("reference", [int(r) for r in rows])


def referenced_split(
    store: ReferenceStore, split: TokenizedSplit, glue_dir: str | Path | None, limit: int | None = None
) -> TokenizedSplit:
    """``split`` (its first ``limit`` rows, as tokenized) with a ``reference`` column. When the split is
    the store's pool (the training rows it was built from), each row gets another row of it; any other
    split's inputs get their nearest pool example."""
    texts = example_texts(split.task, split.split, glue_dir, limit)
    if len(texts) != len(split):
        raise UserError(
            f"references: {len(split)} rows of {split.task.name}/{split.split}, {len(texts)} texts"
        )
    own = pool_fingerprint(texts) == store.key.pool
    rows = store.retrieve(texts, rows=range(len(texts)) if own else None)
    return TokenizedSplit(split.task, split.split, with_references(split.dataset, rows))


# ---------------------------------------------------------------------- the model


@dataclass
class References:
    """What the first layer attends to besides its input: states in the student's width and their mask."""

    states: torch.Tensor
    """(batch, tokens, hidden)."""
    mask: torch.Tensor
    """(batch, tokens), True where a token is real."""


def extended_mask(
    mask: torch.Tensor | None, refs: torch.Tensor, queries: int, keys: int, dtype: torch.dtype
) -> torch.Tensor:
    """The layer's attention mask with the reference tokens appended as keys.

    ``mask`` is what the model built for the input alone: None (attend everywhere), a boolean mask (SDPA)
    or an additive float mask (eager), shaped (batch, 1, queries, keys).
    """
    b = refs.shape[0]
    if mask is None:
        mask = torch.ones((b, 1, queries, keys), dtype=torch.bool, device=refs.device)
    extra = refs[:, None, None, :].expand(b, 1, mask.shape[2], refs.shape[1])
    if mask.dtype == torch.bool:
        return torch.cat([mask.expand(b, 1, -1, -1), extra], dim=-1)
    additive = torch.zeros(extra.shape, dtype=mask.dtype, device=mask.device)
    additive = additive.masked_fill(~extra, torch.finfo(mask.dtype).min)
    return torch.cat([mask.expand(b, 1, -1, -1), additive], dim=-1)


class ReferencedSelfAttention(BertSelfAttention):
    """BERT self-attention whose keys and values also cover the reference states (queries do not).

    The reference keys come after the input's, so a recorder that keeps the first ``queries`` keys sees
    exactly the input's keys and values (the distillation losses compare those)."""

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        references: References | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, ...]:
        if references is None:
            return super().forward(hidden_states, attention_mask, past_key_values, **kwargs)
        b, t = hidden_states.shape[:2]
        d = self.attention_head_size
        both = torch.cat([hidden_states, references.states.to(hidden_states.dtype)], dim=1)
        query = self.query(hidden_states).view(b, t, -1, d).transpose(1, 2)
        key = self.key(both).view(b, both.shape[1], -1, d).transpose(1, 2)
        value = self.value(both).view(b, both.shape[1], -1, d).transpose(1, 2)
        mask = extended_mask(attention_mask, references.mask.bool(), t, t, hidden_states.dtype)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attend(
            self,
            query,
            key,
            value,
            mask,
            dropout=0.0 if not self.training else self.dropout.p,
            scaling=self.scaling,
            **kwargs,
        )
        return out.reshape(b, t, -1).contiguous(), weights


class ReferencedBertConfig(BertConfig):
    """A BERT config plus where its references come from."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        reference_hidden_size: int = 768,
        reference_layer: int = -1,
        reference_tokens: int = 32,
        reference_store: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reference_hidden_size = reference_hidden_size
        """The teacher's width: what ``reference_projection`` maps from."""
        self.reference_layer = reference_layer
        """The teacher layer the stored states are from (for the record; the store says it too)."""
        self.reference_tokens = reference_tokens
        self.reference_store = reference_store
        """The key of the store the student was trained with (teacher, pool, layer, tokens)."""


class ReferencedStoreMixin:
    """Attaching a store, and saving and loading it in ``references/`` beside the weights."""

    def referenced_encoder(self) -> ReferencedBertModel:
        return self.bert  # type: ignore[attr-defined]

    @property
    def reference_store(self) -> ReferenceStore | None:
        return self.referenced_encoder().store

    def attach(self, store: ReferenceStore | None) -> Any:
        """Use ``store`` for ``reference_ids``. The first store a student gets is recorded in its config
        (``reference_store``); a store of another teacher, dataset, layer or length is refused after."""
        enc = self.referenced_encoder()
        if store is not None:
            if store.hidden_size != enc.config.reference_hidden_size:
                raise UserError(
                    f"{store.folder}: the reference store holds width {store.hidden_size}, the student's "
                    f"reference_projection reads {enc.config.reference_hidden_size}"
                )
            known = enc.config.reference_store
            if known:
                store.check(StoreKey(**known))
            enc.config.reference_store = dict(store.key.__dict__)  # the classifier shares this config
        enc.store = store
        return self

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        out = super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]
        if self.reference_store is not None:
            self.reference_store.copy_to(Path(save_directory) / "references")
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)  # type: ignore[misc]
        folder = Path(str(pretrained_model_name_or_path)) / "references"
        if (folder / "store.json").is_file():
            model.attach(ReferenceStore(folder))
        return model


class ReferencedBertModel(ReferencedStoreMixin, BertModel):
    """A BERT encoder whose first layer attends to a reference (see the module docstring)."""

    config_class = ReferencedBertConfig

    def __init__(self, config: ReferencedBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config, add_pooling_layer)
        first: Any = self.encoder.layer[0]
        first.attention.self.__class__ = ReferencedSelfAttention  # the same weights, more keys
        self.reference_projection = nn.Linear(config.reference_hidden_size, config.hidden_size)
        self._init_weights(self.reference_projection)
        self.store: ReferenceStore | None = None

    def referenced_encoder(self) -> ReferencedBertModel:
        return self

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        reference_ids: torch.Tensor | None = None,
        reference_states: torch.Tensor | None = None,
        reference_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        device = self.reference_projection.weight.device
        if reference_ids is not None:
            if reference_states is not None:
                raise ValueError("give reference_ids or reference_states, not both")
            if self.store is None:
                raise UserError("reference_ids need a reference store: attach one (model.attach(store))")
            reference_states, reference_mask = self.store.states(reference_ids, device)
        if reference_states is not None:
            if reference_mask is None:
                reference_mask = torch.ones(reference_states.shape[:2], dtype=torch.bool, device=device)
            states = self.reference_projection(
                reference_states.to(device, self.reference_projection.weight.dtype)
            )
            kwargs["references"] = References(states, reference_mask.to(device).bool())
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )


class ReferencedBertForSequenceClassification(ReferencedStoreMixin, BertForSequenceClassification):
    """A referenced BERT with BERT's classification head."""

    config_class = ReferencedBertConfig

    def __init__(self, config: ReferencedBertConfig) -> None:
        super().__init__(config)
        self.bert = ReferencedBertModel(config)


def referenced(
    model: BertModel | BertForSequenceClassification, reference_hidden_size: int, layer: int, tokens: int
) -> ReferencedBertModel | ReferencedBertForSequenceClassification:
    """The converter: ``model`` (a BERT encoder or classifier) as a referenced BERT, every weight copied;
    the reference projection starts from BERT's initialisation."""
    dense = {k: v for k, v in model.config.to_dict().items() if k != "model_type"}
    cfg = ReferencedBertConfig(
        reference_hidden_size=reference_hidden_size, reference_layer=layer, reference_tokens=tokens, **dense
    )
    torch.manual_seed(0)
    out: ReferencedBertModel | ReferencedBertForSequenceClassification
    if isinstance(model, BertModel):
        out = ReferencedBertModel(cfg, add_pooling_layer=model.pooler is not None)
    else:
        out = ReferencedBertForSequenceClassification(cfg)
    missing = out.load_state_dict(model.state_dict(), strict=False).missing_keys
    assert all("reference_projection" in k for k in missing), missing
    return out


register_student(
    MODEL_TYPE, ReferencedBertConfig, ReferencedBertModel, ReferencedBertForSequenceClassification
)
