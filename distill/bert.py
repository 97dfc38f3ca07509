"""BERT students: real transformers BERTs built from (layers, hidden, heads, intermediate), and their
initialisation from a teacher.

- ``random``: the BERT initialisation.
- ``copy``: the embeddings and, for student layer m, teacher layer g(m) (layers are whole copies), when
  the widths match.
- ``extract`` (Extract-Then-Distill): when the student is narrower, keep the teacher's most important
  heads and feed-forward neurons (importance as in DynaBERT: |dL/dmask| accumulated over batches, a
  first-order estimate of the loss change when the head or neuron is removed) and the most important
  hidden dimensions (by the L2 norm of their word-embedding column), then slice every weight.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    PretrainedConfig,
    PreTrainedModel,
)

from distilnas.distill.capture import capture, recording
from distilnas.distill.data import LengthBucketBatches, collate
from distilnas.distill.errors import UserError
from distilnas.distill.factorised import check_embedding_size

log = logging.getLogger(__name__)

Init = Literal["random", "copy", "extract"]


@dataclass(frozen=True)
class BertShape:
    """The shape of a BERT student: depth, width, heads, feed-forward size and, when its word embeddings
    are factorised (:mod:`distilnas.distill.factorised`), their table's width."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    embedding: int | None = field(default=None, kw_only=True)
    """The factorised word-embedding table's width E (None: a dense vocab x hidden table)."""

    def __post_init__(self) -> None:
        if min(self.layers, self.hidden, self.heads, self.intermediate) < 1:
            raise UserError(f"student {self.layers}L-{self.hidden}: every size must be positive")
        if self.hidden % self.heads:
            raise UserError(f"student: hidden size {self.hidden} is not a multiple of {self.heads} heads")
        if self.embedding is not None:
            check_embedding_size(self.embedding, self.hidden, f"student {self.size_name}: embedding size")

    @classmethod
    def like(cls, teacher: PretrainedConfig, layers: int, hidden: int | None = None) -> BertShape:
        """A student with the teacher's head size and FFN ratio at the given depth and width."""
        h = hidden or teacher.hidden_size
        head_dim = teacher.hidden_size // teacher.num_attention_heads
        heads = max(1, h // head_dim)
        ratio = teacher.intermediate_size / teacher.hidden_size
        return cls(layers, h, heads, round(h * ratio))

    @property
    def size_name(self) -> str:
        return f"{self.layers}L-{self.hidden}" + (f"-e{self.embedding}" if self.embedding else "")

    def parameters(self, teacher: PretrainedConfig) -> int:
        """Exact parameters of this shape's ``BertModel`` (embeddings, encoder, pooler) with the teacher's
        vocabulary, positions and token types; a task head adds its own."""
        h, f, e = self.hidden, self.intermediate, self.embedding
        words = teacher.vocab_size * h if e is None else (teacher.vocab_size + h) * e  # table (x projection)
        embeddings = words + (teacher.max_position_embeddings + teacher.type_vocab_size) * h + 2 * h
        attention = 4 * (h * h + h) + 2 * h  # query, key, value, output; LayerNorm
        feed_forward = 2 * h * f + f + h + 2 * h  # up, down; LayerNorm
        return embeddings + self.layers * (attention + feed_forward) + h * h + h  # + the pooler


def bert_config(spec: BertShape, teacher: PretrainedConfig, num_labels: int | None = None) -> BertConfig:
    """A BertConfig for ``spec`` sharing the teacher's vocabulary, positions and activation."""
    cfg = BertConfig(
        vocab_size=teacher.vocab_size,
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.intermediate,
        hidden_act=teacher.hidden_act,
        max_position_embeddings=teacher.max_position_embeddings,
        type_vocab_size=teacher.type_vocab_size,
        layer_norm_eps=teacher.layer_norm_eps,
        pad_token_id=teacher.pad_token_id,
    )
    if num_labels is not None:
        if teacher.num_labels == num_labels:  # a fine-tuned teacher names its labels: keep the names
            names: Any = teacher.id2label
            cfg.id2label = {int(k): str(v) for k, v in names.items()}
            cfg.label2id = {str(v): int(k) for k, v in names.items()}
            cfg.problem_type = teacher.problem_type
        else:
            cfg.num_labels = num_labels
    cfg._attn_implementation = "eager"
    return cfg


def _bert(model: PreTrainedModel) -> BertModel:
    return model if isinstance(model, BertModel) else model.bert  # type: ignore[return-value]


def build_student(
    spec: BertShape,
    teacher: PreTrainedModel,
    init: Init = "random",
    layer_sources: Sequence[int | None] | None = None,
    num_labels: int | None = None,
    importance_batches: Iterable[dict[str, torch.Tensor]] | None = None,
    seed: int = 0,
    importance_scores: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PreTrainedModel:
    """Build a student (``BertModel``, or ``BertForSequenceClassification`` with ``num_labels``).

    ``layer_sources[m-1]`` is the teacher layer (1-based) copied into student layer m for ``copy`` and
    ``extract``; None falls back to the uniform choice. ``importance_batches`` (model inputs, with
    ``labels`` when the teacher has a head) drive head and neuron importance for ``extract``.
    """
    torch.manual_seed(seed)
    tcfg = teacher.config
    cfg = bert_config(spec, tcfg, num_labels)
    student: PreTrainedModel = BertForSequenceClassification(cfg) if num_labels else BertModel(cfg)
    if init == "random":
        return student
    sources = _layer_sources(spec.layers, tcfg.num_hidden_layers, layer_sources)
    check_build(spec, tcfg, init)
    if init == "copy":
        keep = _Keep.all(tcfg, sources)
    else:
        if importance_scores is None and importance_batches is not None:
            importance_scores = importance(teacher, importance_batches)
        keep = _Keep.by_importance(teacher, spec, sources, importance_scores)
    _transplant(teacher, student, sources, keep)
    return student


def check_build(spec: BertShape, tcfg: PretrainedConfig, init: str) -> None:
    """Whether a student of ``spec`` can start ``init`` from the teacher of config ``tcfg`` (no weights
    needed): copied and extracted layers are slices of the teacher's, so never wider; a copy is whole; an
    extraction keeps whole heads."""
    if init not in ("copy", "extract"):
        return
    wider = [
        f"{n} {getattr(spec, k)} > {getattr(tcfg, a)}"
        for k, a, n in (
            ("hidden", "hidden_size", "hidden"),
            ("heads", "num_attention_heads", "heads"),
            ("intermediate", "intermediate_size", "intermediate"),
        )
        if getattr(spec, k) > getattr(tcfg, a)
    ]
    if wider:
        raise UserError(
            f"student {spec.size_name} is wider than its teacher ({'; '.join(wider)}): cannot {init} weights"
        )
    same_width = (spec.hidden, spec.heads, spec.intermediate) == (
        tcfg.hidden_size,
        tcfg.num_attention_heads,
        tcfg.intermediate_size,
    )
    if init == "copy" and not same_width:
        raise UserError(
            f"copy initialisation needs the teacher's widths ({tcfg.hidden_size} hidden, "
            f"{tcfg.num_attention_heads} heads, {tcfg.intermediate_size} FFN); "
            f"use 'extract' for {spec.size_name}"
        )
    if init == "extract" and spec.hidden // spec.heads != tcfg.hidden_size // tcfg.num_attention_heads:
        raise UserError(
            f"extract keeps whole heads: the student's head size ({spec.hidden // spec.heads}) "
            f"must equal the teacher's ({tcfg.hidden_size // tcfg.num_attention_heads})"
        )


def _layer_sources(m: int, n: int, given: Sequence[int | None] | None) -> list[int]:
    if m > n and given is None:
        raise UserError(f"a {m}-layer student is deeper than its {n}-layer teacher: name the source layers")
    uniform = [max(1, (i + 1) * n // m) for i in range(m)]
    if given is None:
        return uniform
    if len(given) != m:
        raise UserError(f"{len(given)} source layers given for a {m}-layer student")
    return [u if g is None else g for g, u in zip(given, uniform, strict=True)]


@dataclass
class _Keep:
    """Which teacher units survive: hidden dimensions, and per copied layer its heads and FFN neurons."""

    hidden: torch.Tensor
    heads: dict[int, torch.Tensor]  # teacher layer (0-based) -> kept head ids
    neurons: dict[int, torch.Tensor]

    @classmethod
    def all(cls, cfg: PretrainedConfig, sources: Sequence[int]) -> _Keep:
        return cls(
            torch.arange(cfg.hidden_size),
            {s - 1: torch.arange(cfg.num_attention_heads) for s in sources},
            {s - 1: torch.arange(cfg.intermediate_size) for s in sources},
        )

    @classmethod
    def by_importance(
        cls,
        teacher: PreTrainedModel,
        spec: BertShape,
        sources: Sequence[int],
        scores: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> _Keep:
        head_imp, neuron_imp = scores if scores is not None else (None, None)
        if head_imp is None:
            log.warning("no importance batches: keeping the first heads and neurons of each layer")
        emb = _bert(teacher).embeddings.word_embeddings.weight.detach()
        hidden = torch.sort(torch.topk(emb.norm(dim=0), spec.hidden).indices).values
        heads, neurons = {}, {}
        for s in sources:
            layer = s - 1
            if head_imp is None or neuron_imp is None:
                heads[layer] = torch.arange(spec.heads)
                neurons[layer] = torch.arange(spec.intermediate)
            else:
                heads[layer] = torch.sort(torch.topk(head_imp[layer], spec.heads).indices).values
                neurons[layer] = torch.sort(torch.topk(neuron_imp[layer], spec.intermediate).indices).values
        return cls(hidden, heads, neurons)


def sample_batches(data: Dataset, n: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """``n`` seeded length-bucketed batches of 16 rows of ``data`` (tokenized text): what importance is
    measured on."""
    batches = itertools.islice(LengthBucketBatches(data["length"], 16, shuffle=True, seed=0), n)
    cols = [c for c in ("input_ids", "token_type_ids") if c in data.column_names]
    rows = data.select_columns(cols)
    return [collate([rows[i] for i in b], pad_id) for b in batches]


def importance(
    teacher: PreTrainedModel, batches: Iterable[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """DynaBERT importance of every head and FFN neuron: sum over batches of |dL/dmask|.

    L is the task loss when the batches carry labels and the teacher has a head; otherwise the mean
    squared norm of the last hidden state (a label-free sensitivity of the representation).
    Returns (layers, heads) and (layers, intermediate) tensors.
    """
    cfg = teacher.config
    device = next(teacher.parameters()).device
    bert: Any = _bert(teacher)
    head_masks = {
        i: torch.ones(cfg.num_attention_heads, device=device, requires_grad=True)
        for i in range(cfg.num_hidden_layers)
    }
    neuron_masks = [
        torch.ones(cfg.intermediate_size, device=device, requires_grad=True) for _ in bert.encoder.layer
    ]
    hooks = [
        layer.intermediate.register_forward_hook(lambda _m, _i, out, k=k: out * neuron_masks[k])
        for k, layer in enumerate(bert.encoder.layer)
    ]
    head_imp = torch.zeros(cfg.num_hidden_layers, cfg.num_attention_heads)
    neuron_imp = torch.zeros(cfg.num_hidden_layers, cfg.intermediate_size)
    was_training = teacher.training
    teacher.eval()
    try:
        with recording(teacher):
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                with capture(record_qkv=False, head_masks=head_masks):
                    if "labels" in batch and hasattr(teacher, "classifier"):
                        loss = teacher(**batch).loss
                    else:
                        batch.pop("labels", None)
                        out = bert(**batch)
                        m = batch["attention_mask"].unsqueeze(-1).float()
                        loss = (out.last_hidden_state.pow(2) * m).sum() / m.sum()
                grads = torch.autograd.grad(loss, [*head_masks.values(), *neuron_masks])
                n = cfg.num_hidden_layers
                head_imp += torch.stack([g.abs().cpu() for g in grads[:n]])
                neuron_imp += torch.stack([g.abs().cpu() for g in grads[n:]])
    finally:
        for h in hooks:
            h.remove()
        teacher.train(was_training)
    return head_imp, neuron_imp


def _copy(dst: Any, src: Any, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Copy ``src``'s weight (and bias) into ``dst``, keeping the given output rows and input columns."""
    w = src.weight.detach()
    if rows is not None:
        w = w.index_select(0, rows)
    if cols is not None and w.dim() == 2:
        w = w.index_select(1, cols)
    dst.weight.data.copy_(w)
    bias = getattr(src, "bias", None)
    if bias is not None and getattr(dst, "bias", None) is not None:
        b = bias.detach()
        dst.bias.data.copy_(b.index_select(0, rows) if rows is not None else b)


@torch.no_grad()
def _transplant(
    teacher: PreTrainedModel, student: PreTrainedModel, sources: Sequence[int], keep: _Keep
) -> None:
    """Copy the kept slices of the teacher into the student."""
    tb: Any = _bert(teacher)
    sb: Any = _bert(student)
    hid = keep.hidden
    te, se = tb.embeddings, sb.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        getattr(se, name).weight.data.copy_(getattr(te, name).weight.detach().index_select(1, hid))
    _copy(se.LayerNorm, te.LayerNorm, rows=hid)
    head_dim = teacher.config.hidden_size // teacher.config.num_attention_heads
    for m, s in enumerate(sources):
        tl, sl = tb.encoder.layer[s - 1], sb.encoder.layer[m]
        heads = keep.heads[s - 1]
        units = (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)
        for proj in ("query", "key", "value"):
            _copy(getattr(sl.attention.self, proj), getattr(tl.attention.self, proj), rows=units, cols=hid)
        _copy(sl.attention.output.dense, tl.attention.output.dense, rows=hid, cols=units)
        _copy(sl.attention.output.LayerNorm, tl.attention.output.LayerNorm, rows=hid)
        neurons = keep.neurons[s - 1]
        _copy(sl.intermediate.dense, tl.intermediate.dense, rows=neurons, cols=hid)
        _copy(sl.output.dense, tl.output.dense, rows=hid, cols=neurons)
        _copy(sl.output.LayerNorm, tl.output.LayerNorm, rows=hid)
    if tb.pooler is not None and sb.pooler is not None:
        _copy(sb.pooler.dense, tb.pooler.dense, rows=hid, cols=hid)
    t_head: Any = getattr(teacher, "classifier", None)
    s_head: Any = getattr(student, "classifier", None)
    if t_head is not None and s_head is not None and s_head.out_features == t_head.out_features:
        _copy(s_head, t_head, cols=hid)
