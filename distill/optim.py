"""The distiller's optimizer: AdamW, and optionally a word-embedding table trained by the rows a batch has.

A BERT student's word embeddings are most of its parameters (30522 rows: 3.9M of a 2L-128 student's
4.3M), yet a batch of 32 sentences touches a few hundred rows. Dense, every step writes a zero gradient
for the whole table, and AdamW and clipping pass over all of it. With ``embedding_updates: rows`` the
table's gradient is sparse (``nn.Embedding(sparse=True)``) and :class:`RowAdamW` updates only the rows in
it, as TensorFlow's LazyAdam does: those rows get exactly AdamW's update, weight decay included, while
the others (their weights and moments) wait until a batch has them instead of decaying. That is a change
of what is learned, so it is a setting, checked on dev scores by seed (``bench/step_quality.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


def adamw(
    params: Iterable[nn.Parameter] | list[dict], lr: float, weight_decay: float = 0.0
) -> torch.optim.AdamW:
    """AdamW, fused where torch has a fused kernel for the device (about 7x faster on CPU here)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class RowAdamW(torch.optim.AdamW):
    """AdamW (fused for dense gradients) that updates a parameter with a sparse gradient by its rows only.

    A sparse parameter's state has AdamW's names and types (``step``, ``exp_avg``, ``exp_avg_sq``), so
    ``state_dict`` and checkpoints hold it as they hold any other; its step counts the steps it was
    updated, which is every step, since a batch always has some rows.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    self._rows_step(p, group)
                    p.grad = None  # the fused step below skips it
        return super().step(closure)

    def _rows_step(self, p: torch.Tensor, group: dict) -> None:
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        grad = p.grad.coalesce()  # type: ignore[union-attr]
        rows, g = grad.indices()[0], grad.values()
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = float(state["step"])
        m = state["exp_avg"][rows].lerp_(g, 1 - beta1)
        v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        state["exp_avg"][rows] = m
        state["exp_avg_sq"][rows] = v
        denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
        p[rows] = (p[rows] * (1 - lr * decay)).addcdiv_(m, denom, value=-lr / (1 - beta1**t))


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (foreach), where some gradients may be sparse: the total norm
    counts each sparse gradient's summed rows, and every gradient is scaled alike."""
    sparse = [p for p in params if p.grad is not None and p.grad.is_sparse]
    if not sparse:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    for p in sparse:
        p.grad = p.grad.coalesce()  # type: ignore[union-attr]  # repeated rows summed, as dense
    dense = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
    norms = [torch.linalg.vector_norm(p.grad._values()) for p in sparse]  # type: ignore[union-attr]
    norms += list(torch._foreach_norm(dense)) if dense else []
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    if dense:
        torch._foreach_mul_(dense, scale)
    for p in sparse:
        p.grad._values().mul_(scale)  # type: ignore[union-attr]
    return total
