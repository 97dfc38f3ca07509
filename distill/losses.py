"""Distillation losses in a plain registry (TextBrewer-style); weights come from config.

Every loss reads a :class:`LossContext`: the student's and the teacher's views (hidden states per layer,
Q/K/V per layer, logits), the layer pairs of the mapping, the token mask, and learned projections.
Padding never counts: token-level losses average over real tokens, attention losses over real
(query, key) pairs, so dynamic padding and fixed-length padding give the same value.

Layers are numbered as in hidden states: 0 is the embeddings, k is the output of block k.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Views:
    """What a loss can see of one model on one batch."""

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    """Layer -> (batch, tokens, hidden). Layer 0 is the embedding output."""
    qkv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Layer (1-based, as hidden states) -> Q, K, V, each (batch, tokens, hidden)."""
    logits: torch.Tensor | None = None
    heads: int = 1

    def trimmed(self, width: int) -> Views:
        """The same views cut to the first ``width`` tokens."""
        return Views(
            hidden={k: v[:, :width] for k, v in self.hidden.items()},
            qkv={k: (q[:, :width], k_[:, :width], v[:, :width]) for k, (q, k_, v) in self.qkv.items()},
            logits=self.logits,
            heads=self.heads,
        )


@dataclass
class LossContext:
    student: Views
    teacher: Views
    pairs: Sequence[tuple[int, int]]
    """(student layer, teacher layer), (0, 0) for the embeddings when present."""
    mask: torch.Tensor
    """(batch, tokens) bool: real tokens."""
    projections: nn.ModuleDict
    """Learned maps from the student's width to the teacher's, keyed ``"s{student_layer}"``."""
    labels: torch.Tensor | None = None
    temperature: float = 1.0
    relation_heads: int = 12
    regression: bool = False

    @property
    def layer_pairs(self) -> list[tuple[int, int]]:
        """The pairs without the embeddings."""
        return [(s, t) for s, t in self.pairs if s > 0]

    def project(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        key = f"s{layer}"
        return self.projections[key](x) if key in self.projections else x


LossFn = Callable[[LossContext], torch.Tensor]


@dataclass(frozen=True)
class Loss:
    """A registered loss: the function, and what it needs from the teacher (so caches store only that)."""

    fn: LossFn
    needs: frozenset[str]
    """Teacher fields: ``hidden``, ``qkv``, ``logits``."""
    projects_hidden: bool = False
    """Whether it maps the student's hidden states to the teacher's width (needs projections)."""

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        return self.fn(ctx)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (batch, tokens, ...) over real tokens, averaging trailing dims first."""
    per_token = values.reshape(*values.shape[:2], -1).mean(-1)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1)


def _hidden_mse(ctx: LossContext, pairs: list[tuple[int, int]]) -> torch.Tensor:
    total = ctx.mask.new_zeros((), dtype=torch.float32)
    for s, t in pairs:
        diff = ctx.project(s, ctx.student.hidden[s]) - ctx.teacher.hidden[t].to(torch.float32)
        total = total + masked_mean(diff.pow(2), ctx.mask)
    return total


def embedding_mse(ctx: LossContext) -> torch.Tensor:
    """TinyBERT's embedding loss: MSE(E_s W_e, E_t) over real tokens."""
    return _hidden_mse(ctx, [(0, 0)])


def hidden_mse(ctx: LossContext) -> torch.Tensor:
    """TinyBERT's hidden-state loss: sum over mapped layers of MSE(H_s W_h, H_t) over real tokens."""
    return _hidden_mse(ctx, ctx.layer_pairs)


def hidden_cosine(ctx: LossContext) -> torch.Tensor:
    """Sum over mapped layers of 1 - cos(H_s W_h, H_t), averaged over real tokens."""
    total = ctx.mask.new_zeros((), dtype=torch.float32)
    for s, t in ctx.layer_pairs:
        cos = F.cosine_similarity(
            ctx.project(s, ctx.student.hidden[s]), ctx.teacher.hidden[t].float(), dim=-1
        )
        total = total + masked_mean((1 - cos).unsqueeze(-1), ctx.mask)
    return total


def attention_scores(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Pre-softmax attention scores QK^T / sqrt(d): (batch, heads, tokens, tokens)."""
    b, t, h = q.shape
    d = h // heads
    qh = q.float().view(b, t, heads, d).transpose(1, 2)
    kh = k.float().view(b, t, heads, d).transpose(1, 2)
    return qh @ kh.transpose(-1, -2) / math.sqrt(d)


def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """(batch, 1, tokens, tokens): both query and key are real tokens."""
    return (mask[:, None, :, None] & mask[:, None, None, :]).float()


def attention_mse(ctx: LossContext) -> torch.Tensor:
    """TinyBERT's attention loss: MSE of pre-softmax scores per head, over real (query, key) pairs.

    Student and teacher must have the same number of heads (use ``minilm_relation`` otherwise).
    """
    if ctx.student.heads != ctx.teacher.heads:
        raise ValueError(
            f"attention_mse needs equal head counts "
            f"(student {ctx.student.heads}, teacher {ctx.teacher.heads})"
        )
    pm = _pair_mask(ctx.mask)
    denom = pm.sum().clamp_min(1) * ctx.student.heads
    total = ctx.mask.new_zeros((), dtype=torch.float32)
    for s, t in ctx.layer_pairs:
        sq, sk, _ = ctx.student.qkv[s]
        tq, tk, _ = ctx.teacher.qkv[t]
        diff = attention_scores(sq, sk, ctx.student.heads) - attention_scores(tq, tk, ctx.teacher.heads)
        total = total + (diff.pow(2) * pm).sum() / denom
    return total


def _relation_log_probs(x: torch.Tensor, heads: int, key_bias: torch.Tensor) -> torch.Tensor:
    """MiniLMv2 self-relations: log softmax(X_r X_r^T / sqrt(d_r)) per relation head.

    ``x`` is (..., batch, tokens, hidden); ``key_bias`` is 0 on real keys and -1e9 on padding.
    """
    *lead, t, h = x.shape
    if h % heads:
        raise ValueError(f"relation heads ({heads}) must divide the hidden size ({h})")
    d = h // heads
    xh = x.float().reshape(*lead, t, heads, d).transpose(-2, -3)  # (..., batch, heads, tokens, d)
    scores = torch.matmul(xh, xh.transpose(-1, -2)) / math.sqrt(d)
    return F.log_softmax(scores + key_bias, dim=-1)


def minilm_relation(ctx: LossContext) -> torch.Tensor:
    """MiniLMv2's loss: KL(teacher || student) of the query-query, key-key and value-value relations,
    with ``relation_heads`` heads on both sides, so head counts may differ. Summed over the three relations
    and the mapped layers; averaged over real query rows and relation heads."""
    rows = ctx.mask[:, None, :].float()  # (batch, 1, tokens)
    denom = rows.sum().clamp_min(1) * ctx.relation_heads
    # padded keys get probability exp(-1e9) = 0 on both sides, so they add nothing to the KL
    key_bias = (~ctx.mask).float()[:, None, None, :] * -1e9
    total = ctx.mask.new_zeros((), dtype=torch.float32)
    for s, t in ctx.layer_pairs:
        ls = _relation_log_probs(torch.stack(ctx.student.qkv[s]), ctx.relation_heads, key_bias)
        with torch.no_grad():
            lt = _relation_log_probs(torch.stack(ctx.teacher.qkv[t]), ctx.relation_heads, key_bias)
        kl = (lt.exp() * (lt - ls)).sum(-1)  # (3, batch, heads, tokens)
        total = total + (kl * rows).sum() / denom
    return total


def prediction_ce(ctx: LossContext) -> torch.Tensor:
    """Soft cross-entropy of logits at a temperature (TinyBERT's prediction loss); MSE for regression."""
    assert ctx.student.logits is not None and ctx.teacher.logits is not None
    s, t = ctx.student.logits.float(), ctx.teacher.logits.float()
    if ctx.regression:
        return F.mse_loss(s, t)
    temp = ctx.temperature
    return -(F.softmax(t / temp, -1) * F.log_softmax(s / temp, -1)).sum(-1).mean()


def hard_label(ctx: LossContext) -> torch.Tensor:
    """Cross-entropy with the gold labels, or MSE for regression (STS-B)."""
    assert ctx.student.logits is not None and ctx.labels is not None
    if ctx.regression:
        return F.mse_loss(ctx.student.logits.view(-1).float(), ctx.labels.float())
    return F.cross_entropy(ctx.student.logits.float(), ctx.labels)


LOSSES: dict[str, Loss] = {
    "embedding_mse": Loss(embedding_mse, frozenset({"hidden"}), projects_hidden=True),
    "hidden_mse": Loss(hidden_mse, frozenset({"hidden"}), projects_hidden=True),
    "hidden_cosine": Loss(hidden_cosine, frozenset({"hidden"}), projects_hidden=True),
    "attention_mse": Loss(attention_mse, frozenset({"qkv"})),
    "minilm_relation": Loss(minilm_relation, frozenset({"qkv"})),
    "prediction_ce": Loss(prediction_ce, frozenset({"logits"})),
    "hard_label": Loss(hard_label, frozenset()),
}


def teacher_fields(weights: dict[str, float]) -> frozenset[str]:
    """The teacher outputs a set of weighted losses needs."""
    out: set[str] = set()
    for name, w in weights.items():
        if w:
            out |= LOSSES[name].needs
    return frozenset(out)


def combined(weights: dict[str, float], ctx: LossContext) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the named losses, and each term's value (for logs)."""
    total = ctx.mask.new_zeros((), dtype=torch.float32)
    parts: dict[str, float] = {}
    for name, w in weights.items():
        if not w:
            continue
        value = LOSSES[name](ctx)
        parts[name] = float(value.detach())
        total = total + w * value
    return total, parts
