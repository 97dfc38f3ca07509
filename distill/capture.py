"""See inside unmodified transformers BERTs: a registered attention function that records Q, K, V.

Models keep their Hugging Face classes; :func:`enable_capture` switches their attention implementation
to ``"distilnas"``, which computes exactly what SDPA computes and, inside a :class:`Capture` context,
records each layer's query, key and value (for attention-score and MiniLM relation losses) and applies
per-head masks (for head importance). Outside a context it costs nothing extra.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from distilnas.distill.dropout import dropout as fast_dropout

IMPLEMENTATION = "distilnas"


@dataclass
class Capture:
    """What one forward pass recorded: per layer (0-based), Q, K, V as (batch, tokens, hidden)."""

    qkv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    record_qkv: bool = True
    head_masks: dict[int, torch.Tensor] = field(default_factory=dict)
    """Optional per-layer masks of shape (heads,) multiplied into each head's output."""


_ACTIVE: contextvars.ContextVar[Capture | None] = contextvars.ContextVar("distilnas_capture", default=None)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, tokens, d) -> (batch, tokens, heads * d)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Scaled dot-product attention (as transformers' SDPA path), recording into the active Capture."""
    rec = _ACTIVE.get()
    out = _attend(query, key, value, attention_mask, scaling, dropout)
    if rec is not None:
        layer = int(module.layer_idx)  # type: ignore[arg-type]  # set by every BERT self-attention
        if rec.record_qkv:  # keys past the queries are a referenced student's reference tokens
            t = query.shape[2]
            rec.qkv[layer] = (_merge(query), _merge(key[:, :, :t]), _merge(value[:, :, :t]))
        mask = rec.head_masks.get(layer)
        if mask is not None:
            out = out * mask.view(1, -1, 1, 1)
    return out.transpose(1, 2).contiguous(), None


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
    p: float,
) -> torch.Tensor:
    """SDPA; with dropout on CPU, SDPA's own math path but with :func:`~distilnas.distill.dropout.dropout`'s
    mask (SDPA would draw it with the slow ``bernoulli_``)."""
    if p == 0 or query.device.type != "cpu":
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=p, scale=scale)
    scores = query @ key.transpose(-1, -2) * (scale if scale is not None else query.shape[-1] ** -0.5)
    if mask is not None:
        scores = (
            scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            if mask.dtype == torch.bool
            else scores + mask
        )
    return fast_dropout(scores.softmax(-1), p) @ value


AttentionInterface.register(IMPLEMENTATION, attention)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def enable_capture(model: PreTrainedModel) -> PreTrainedModel:
    """Switch a BERT-family model to the recording attention (in place); returns it."""
    model.set_attn_implementation(IMPLEMENTATION)
    return model


@contextmanager
def recording(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """Switch ``model`` to the recording attention for the block, then back to what it had."""
    before = model.config._attn_implementation
    enable_capture(model)
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


@contextmanager
def capture(record_qkv: bool = True, head_masks: dict[int, torch.Tensor] | None = None) -> Iterator[Capture]:
    """Record Q/K/V (and apply head masks) for forward passes inside the block."""
    rec = Capture(record_qkv=record_qkv, head_masks=head_masks or {})
    token = _ACTIVE.set(rec)
    try:
        yield rec
    finally:
        _ACTIVE.reset(token)
