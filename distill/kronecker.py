"""Kronecker-factored layers (KroneckerBERT, Tahaei et al. 2022) and a registered Kronecker BERT.

A linear map W (out x in) is replaced by a sum of r Kronecker products, W ≈ Σᵢ Aᵢ ⊗ Bᵢ with Aᵢ (m1 x n1)
and Bᵢ (m2 x n2), m1·m2 = out and n1·n2 = in. The forward never builds W: with the input x of length
n1·n2 read as X (n1 x n2), (A ⊗ B)x = vec(A·X·Bᵀ) in row-major order (the column-major vec(B·X·Aᵀ) of the
paper, transposed). Factors start from a dense weight by the nearest Kronecker product (Van Loan and
Pitsianis): rearranging W so that every Kronecker product becomes a rank-one matrix, the best r-term
approximation in Frobenius norm is the truncated SVD of the rearrangement.

A Kronecker embedding is a lookup table A (vocab x d/k) kron a small B (1 x k): a token's vector is its row
of A kron the row of B; only A's row is read.

:class:`KroneckerBertModel` is a BERT whose word embeddings, attention maps (query, key, value, output)
and feed-forward maps are Kronecker-factored as its config's ``kronecker`` says; everything else (position
and segment embeddings, LayerNorms, biases, the pooler) stays dense. It is registered with the Auto
classes (``model_type`` ``kronecker-bert``) and round-trips through save_pretrained/from_pretrained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

from distilnas.distill.errors import UserError
from distilnas.distill.utils import register_student

MODEL_TYPE = "kronecker-bert"
KINDS = ("embedding", "attention", "ffn_in", "ffn_out")
"""What can be factored: the word embeddings, the four attention maps, the FFN's up and down maps."""


def rearrange(w: torch.Tensor, a_shape: Sequence[int], b_shape: Sequence[int]) -> torch.Tensor:
    """Van Loan–Pitsianis rearrangement: A ⊗ B becomes vec(A) vec(B)ᵀ, (m1·n1) x (m2·n2)."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    return w.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def check_shapes(shape: Sequence[int], a_shape: Sequence[int], b_shape: Sequence[int], where: str) -> None:
    (m, n), (m1, n1), (m2, n2) = shape, a_shape, b_shape
    if m1 * m2 != m or n1 * n2 != n:
        raise UserError(
            f"{where}: factors {m1}x{n1} and {m2}x{n2} make a {m1 * m2}x{n1 * n2} matrix, "
            f"the layer is {m}x{n}"
        )


def nearest_kronecker(
    w: torch.Tensor, a_shape: Sequence[int], b_shape: Sequence[int], rank: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rank, m1, n1) and B (rank, m2, n2) minimising ||W - Σ Aᵢ ⊗ Bᵢ||_F (truncated SVD)."""
    check_shapes(tuple(w.shape), a_shape, b_shape, "kronecker")
    u, s, vh = torch.linalg.svd(rearrange(w.double(), a_shape, b_shape), full_matrices=False)
    root = s[:rank].sqrt()
    a = (u[:, :rank] * root).T.reshape(rank, *a_shape)
    b = (vh[:rank] * root[:, None]).reshape(rank, *b_shape)
    return a.to(w.dtype), b.to(w.dtype)


def kron_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σᵢ Aᵢ ⊗ Bᵢ, materialised (for tests and inspection only)."""
    return sum((torch.kron(a[i], b[i]) for i in range(a.shape[0])), torch.zeros(()))


class KroneckerLinear(nn.Module):
    """y = (Σᵢ Aᵢ ⊗ Bᵢ) x + bias, computed factor by factor (W is never built)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        a_shape: Sequence[int],
        b_shape: Sequence[int],
        rank: int = 1,
    ) -> None:
        super().__init__()
        check_shapes((out_features, in_features), a_shape, b_shape, "kronecker")
        self.in_features, self.out_features = in_features, out_features
        self.a = nn.Parameter(torch.empty(rank, *a_shape))
        self.b = nn.Parameter(torch.empty(rank, *b_shape))
        self.bias = nn.Parameter(torch.zeros(out_features))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.a, -math.sqrt(bound), math.sqrt(bound))
        nn.init.uniform_(self.b, -math.sqrt(bound), math.sqrt(bound))

    @classmethod
    def from_linear(cls, linear: nn.Linear, a_shape: Sequence[int], b_shape: Sequence[int], rank: int = 1):
        out = cls(linear.in_features, linear.out_features, a_shape, b_shape, rank)
        a, b = nearest_kronecker(linear.weight.detach().float(), a_shape, b_shape, rank)
        with torch.no_grad():
            out.a.copy_(a)
            out.b.copy_(b)
            if linear.bias is not None:
                out.bias.copy_(linear.bias)
        return out

    @property
    def weight(self) -> torch.Tensor:
        return kron_sum(self.a, self.b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, m1, n1 = self.a.shape
        _, m2, n2 = self.b.shape
        xs = x.reshape(*x.shape[:-1], n1, n2)
        # (..., n1, n2) -> X Bᵢᵀ (..., r, n1, m2) -> Aᵢ X Bᵢᵀ (..., r, m1, m2) -> Σᵢ
        t = torch.einsum("...jk,rlk->...rjl", xs, self.b)
        y = torch.einsum("rij,...rjl->...il", self.a, t)
        return y.reshape(*x.shape[:-1], m1 * m2) + self.bias

    def extra_repr(self) -> str:
        shapes = f"A={tuple(self.a.shape)}, B={tuple(self.b.shape)}"
        return f"in={self.in_features}, out={self.out_features}, {shapes}"


class KroneckerEmbedding(nn.Module):
    """Rows of A (vocab x d/k) kron B (1 x k): a lookup of A, then a product with B's one row."""

    def __init__(self, num_embeddings: int, embedding_dim: int, b_cols: int, padding_idx: int | None = None):
        super().__init__()
        if embedding_dim % b_cols:
            raise UserError(f"kronecker.embedding: {b_cols} does not divide the hidden size {embedding_dim}")
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.a = nn.Parameter(torch.randn(num_embeddings, embedding_dim // b_cols) * 0.02)
        self.b = nn.Parameter(torch.ones(1, b_cols))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, b_cols: int):
        out = cls(emb.num_embeddings, emb.embedding_dim, b_cols, emb.padding_idx)
        a, b = nearest_kronecker(
            emb.weight.detach().float(), (emb.num_embeddings, emb.embedding_dim // b_cols), (1, b_cols)
        )
        with torch.no_grad():
            out.a.copy_(a[0])
            out.b.copy_(b[0])
        return out

    @property
    def weight(self) -> torch.Tensor:
        return torch.kron(self.a, self.b)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.a)  # (..., d/k)
        return (rows[..., :, None] * self.b[0]).flatten(-2)


class KroneckerBertConfig(BertConfig):
    """A BERT config plus ``kronecker``: per kind (``embedding``, ``attention``, ``ffn_in``, ``ffn_out``)
    the factor shapes, e.g. ``{"attention": {"a": [2, 2], "b": [192, 192], "rank": 1}, "embedding": {"b":
    [1, 4]}}``; kinds left out stay dense."""

    model_type = MODEL_TYPE

    def __init__(self, kronecker: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kronecker = kronecker or {}


def _shapes(cfg: KroneckerBertConfig, kind: str) -> tuple[list[int], list[int], int]:
    spec = cfg.kronecker[kind]
    return list(spec["a"]), list(spec["b"]), int(spec.get("rank", 1))


def factorise(bert: BertModel, cfg: KroneckerBertConfig, from_dense: bool = True) -> None:
    """Replace ``bert``'s layers by Kronecker ones as ``cfg.kronecker`` says, each started from the dense
    weight it replaces by the nearest Kronecker product (``from_dense``), or left random (the model is
    being built to receive saved weights: no SVD is spent on random ones)."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    check_factors(cfg.kronecker, cfg.vocab_size, h, inter)
    if "embedding" in cfg.kronecker:
        b_cols = int(cfg.kronecker["embedding"]["b"][1])
        emb: Any = bert.embeddings
        dense_emb = emb.word_embeddings
        emb.word_embeddings = (
            KroneckerEmbedding.from_embedding(dense_emb, b_cols)
            if from_dense
            else KroneckerEmbedding(
                dense_emb.num_embeddings, dense_emb.embedding_dim, b_cols, dense_emb.padding_idx
            )
        )

    def factored(linear: nn.Linear, kind: str) -> KroneckerLinear:
        a, b, r = _shapes(cfg, kind)
        if from_dense:
            return KroneckerLinear.from_linear(linear, a, b, r)
        return KroneckerLinear(linear.in_features, linear.out_features, a, b, r)

    layers: list[Any] = list(bert.encoder.layer)
    for layer in layers:
        attn = layer.attention
        if "attention" in cfg.kronecker:
            for owner, name in (
                (attn.self, "query"),
                (attn.self, "key"),
                (attn.self, "value"),
                (attn.output, "dense"),
            ):
                setattr(owner, name, factored(getattr(owner, name), "attention"))
        if "ffn_in" in cfg.kronecker:
            layer.intermediate.dense = factored(layer.intermediate.dense, "ffn_in")
        if "ffn_out" in cfg.kronecker:
            layer.output.dense = factored(layer.output.dense, "ffn_out")


class KroneckerBertModel(BertModel):
    config_class = KroneckerBertConfig

    def __init__(self, config: KroneckerBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config, add_pooling_layer)
        factorise(self, config, from_dense=False)


class KroneckerBertForSequenceClassification(BertForSequenceClassification):
    config_class = KroneckerBertConfig

    def __init__(self, config: KroneckerBertConfig) -> None:
        super().__init__(config)
        factorise(self.bert, config, from_dense=False)


def kroneckerise(
    model: BertModel | BertForSequenceClassification, kronecker: dict[str, Any]
) -> KroneckerBertModel | KroneckerBertForSequenceClassification:
    """The converter: ``model`` (a BERT encoder or classifier) with its layers factored as ``kronecker``
    says, every other weight copied; factors start from the dense weights (nearest Kronecker product)."""
    dense = {k: v for k, v in model.config.to_dict().items() if k != "model_type"}
    cfg = KroneckerBertConfig(kronecker=kronecker, **dense)
    encoder = model if isinstance(model, BertModel) else model.bert
    factorise(encoder, cfg)  # in place on the dense model, then moved into the registered class
    out: KroneckerBertModel | KroneckerBertForSequenceClassification
    if isinstance(model, BertModel):
        out = KroneckerBertModel(cfg, add_pooling_layer=model.pooler is not None)
    else:
        out = KroneckerBertForSequenceClassification(cfg)
    out.load_state_dict(model.state_dict())
    return out


def check_factors(kronecker: dict[str, Any], vocab: int, hidden: int, intermediate: int) -> None:
    """Every factor pair makes its layer's shape (a clear error before any work otherwise)."""
    shapes = {
        "attention": (hidden, hidden),
        "ffn_in": (intermediate, hidden),
        "ffn_out": (hidden, intermediate),
    }
    for kind, spec in kronecker.items():
        if kind == "embedding":
            if int(spec["b"][0]) != 1:
                raise UserError("kronecker.embedding: B is one row (1 x k), a token reads its row of A")
            b_cols = int(spec["b"][1])
            a = spec.get("a") or [vocab, hidden // max(b_cols, 1)]
            check_shapes((vocab, hidden), a, spec["b"], "kronecker.embedding")
            if int(spec.get("rank", 1)) != 1:
                raise UserError("kronecker.embedding: one term (rank 1)")
        elif kind in shapes:
            if not spec.get("a"):
                raise UserError(f"kronecker.{kind}: A's shape `a` is needed")
            check_shapes(shapes[kind], spec["a"], spec["b"], f"kronecker.{kind}")
            (m1, n1), (m2, n2) = spec["a"], spec["b"]
            if int(spec.get("rank", 1)) > min(m1 * n1, m2 * n2):
                raise UserError(
                    f"kronecker.{kind}: rank {spec['rank']} is more than the {min(m1 * n1, m2 * n2)} "
                    "terms these factors can hold"
                )
        else:
            raise UserError(f"kronecker: unknown {kind!r}; known: {', '.join(KINDS)}")


register_student(MODEL_TYPE, KroneckerBertConfig, KroneckerBertModel, KroneckerBertForSequenceClassification)
