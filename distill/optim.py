"""The distiller's optimizer: AdamW, with the word-embedding table updated from a sparse gradient.

A BERT student's word embeddings are most of its parameters (30522 rows: 3.9M of a 2L-128 student's
4.3M), yet a batch of 32 sentences touches a few hundred rows. With a dense gradient every step writes
zeros for the whole table, and clipping and AdamW pass over all of it. With a sparse one
(``nn.Embedding(sparse=True)``) :class:`TableAdamW` updates the table in one of two ways:

- exact (``embedding_updates: dense``, on CPU): every row gets AdamW's own update. A row no batch has
  touched yet has zero moments, so its update is the weight decay alone, which one multiply of the
  table gives. The touched rows (at most a run's vocabulary: 11.6k of 30522 rows for SST-2 train) get
  the full update in one fused AdamW call, their moments kept packed. Only the summation order may
  differ from a dense step (fp32 rounding; ``tests/distill/test_step_speed.py`` states the tolerance).
  On a GPU the distiller keeps the dense gradient: its step is bound by kernel launches, which the
  rows' bookkeeping would add to (not measured on a GPU yet).
- lazy (``embedding_updates: rows``): only the rows in the batch are updated, as TensorFlow's LazyAdam
  does: their weights and moments wait, undecayed, until a batch has them. That is a change of what is
  learned, so it is a setting, checked on dev scores by seed (``bench/step_quality.py``).

``state_dict`` writes the state as AdamW's (``step``, full-table ``exp_avg`` and ``exp_avg_sq``): a
checkpoint is the same whichever way the table was trained, and one of a dense AdamW (written before
the table was trained by rows) resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim.adam import adam


def adamw(
    params: Iterable[nn.Parameter] | list[dict], lr: float, weight_decay: float = 0.0
) -> torch.optim.AdamW:
    """AdamW, fused where torch has a fused kernel for the device (about 7x faster on CPU here)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class TableAdamW(torch.optim.AdamW):
    """Fused AdamW that updates a parameter with a sparse gradient (a table) by its rows: exactly (every
    row gets AdamW's update) or, with ``lazy``, only the rows in the gradient (LazyAdam).

    A table's moments are kept for its touched rows only, packed in the order the rows came (so the
    exact update reads them without gathering); :meth:`state_dict` writes them as AdamW's full tables.
    """

    def __init__(
        self, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0, lazy: bool = False
    ) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=True)
        self.lazy = lazy
        self._tables: dict[torch.Tensor, _Rows] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    self._table_step(p, group)
                    p.grad = None  # the fused step below skips it
                elif p.grad is not None and "rows" in self.state[p]:  # dense now: AdamW's own state
                    self.state[p] = _Rows.expanded(self.state[p], p)
                    self._tables.pop(p, None)
        return super().step(closure)

    def state_dict(self) -> dict:
        packed = super().state_dict()
        ids = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        for p, state in self.state.items():
            if "rows" in state:  # a new dict: packed["state"] shares this optimizer's own
                packed["state"][ids[id(p)]] = _Rows.expanded(state, p)
        return packed

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._tables.clear()  # packed again from the loaded AdamW state at the next step

    def _table_step(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad.coalesce()  # type: ignore[union-attr]  # repeated rows summed, as dense
        rows, g = grad.indices()[0], grad.values()
        table = self._tables.get(p)
        if table is None:
            table = self._tables[p] = _Rows(self.state[p], p)
        at = table.add(rows)
        if self.lazy:
            weights = p.index_select(0, rows)
            m, v = table.avg.index_select(0, at), table.avg_sq.index_select(0, at)
            _adamw(weights, g, m, v, table.step, group, group["weight_decay"])
            p.index_copy_(0, rows, weights)
            table.avg.index_copy_(0, at, m)
            table.avg_sq.index_copy_(0, at, v)
            return
        if group["weight_decay"]:  # every row decays; a never-touched row's update is that alone
            p.mul_(1 - group["lr"] * group["weight_decay"])
        n = len(table.rows)
        weights = p.index_select(0, table.rows)
        grads = torch.zeros_like(weights)
        grads.index_copy_(0, at, g)
        _adamw(weights, grads, table.avg[:n], table.avg_sq[:n], table.step, group, 0.0)
        p.index_copy_(0, table.rows, weights)


class _Rows:
    """A table's AdamW state by rows: the rows touched so far (some batch has had them), in the order
    they came, and their moments packed in that order (row i of ``avg`` is ``rows[i]``'s); a row never
    touched has zero moments. Lives in the optimizer's state as ``step``, ``rows``, ``row_avg`` and
    ``row_avg_sq`` (the attributes here are the same tensors); a loaded AdamW state (full ``exp_avg``
    tables) is packed at its first step."""

    def __init__(self, state: dict, p: torch.Tensor) -> None:
        if "rows" not in state:
            full = state.pop("exp_avg", None), state.pop("exp_avg_sq", None)
            state.setdefault("step", torch.zeros((), dtype=torch.float32, device=p.device))
            state["rows"] = torch.empty(0, dtype=torch.long, device=p.device)
            state["row_avg"], state["row_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            if full[0] is not None and full[1] is not None:
                m, v = full
                rows = ((m != 0) | (v != 0)).any(1).nonzero().flatten()
                state["rows"] = rows
                state["row_avg"][: len(rows)] = m[rows]
                state["row_avg_sq"][: len(rows)] = v[rows]
        self.state = state
        self.rows: torch.Tensor = state["rows"]
        self.avg, self.avg_sq, self.step = state["row_avg"], state["row_avg_sq"], state["step"]
        self.position = torch.full((p.shape[0],), -1, dtype=torch.long, device=p.device)
        self.position[self.rows] = torch.arange(len(self.rows), device=p.device)

    def add(self, rows: torch.Tensor) -> torch.Tensor:
        """Record ``rows`` (unique) as touched; their positions among all touched rows."""
        new = rows[self.position[rows] < 0]
        if new.numel():
            n = len(self.rows)
            self.position[new] = torch.arange(n, n + len(new), device=rows.device)
            self.rows = self.state["rows"] = torch.cat([self.rows, new])
        return self.position[rows]

    @staticmethod
    def expanded(state: dict, p: torch.Tensor) -> dict:
        """``state`` as AdamW's: ``step`` and full-table moments."""
        rows, n = state["rows"], len(state["rows"])
        out = {"step": state["step"]}
        for name, packed in (("exp_avg", state["row_avg"]), ("exp_avg_sq", state["row_avg_sq"])):
            out[name] = torch.zeros_like(p).index_copy_(0, rows, packed[:n])
        return out


def _adamw(
    weights: torch.Tensor,
    grad: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step: torch.Tensor,
    group: dict,
    weight_decay: float,
) -> None:
    """One fused AdamW step of ``weights`` and their moments, in place (``step`` counted up)."""
    beta1, beta2 = group["betas"]
    adam(
        [weights],
        [grad],
        [m],
        [v],
        [],
        [step],
        fused=True,
        decoupled_weight_decay=True,
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=group["lr"],
        weight_decay=weight_decay,
        eps=group["eps"],
        maximize=False,
    )


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
