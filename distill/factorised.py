"""A factorised word embedding (ALBERT, Lan et al. 2020) and a registered BERT that has one.

A small student of a wide-vocabulary teacher is mostly its word-embedding table: a 2-layer student of
MiniLM keeps 30522 x 384 (11.7M of its 14.4M parameters). The factorised embedding replaces the table W
(vocab x hidden) by a table T (vocab x E) and a projection P (E x hidden), a token's vector its row of T
times P: (vocab + hidden) x E parameters. It starts from the dense table it replaces by truncated SVD, W
≈ U_E S_E V_Eᵀ with T = U_E S_E and P = V_Eᵀ, the best rank-E approximation in Frobenius norm (Eckart and
Young): the error is the norm of the singular values it leaves out.

Unlike ALBERT, the position and segment embeddings and the LayerNorm stay at the hidden width, after the
projection, so the factorised embedding equals the dense one whenever T·P equals W (and a BERT's
embeddings module is otherwise unchanged). :class:`FactorisedBertModel` is registered with the Auto
classes (``model_type`` ``factorised-bert``) and round-trips through save_pretrained/from_pretrained.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

from distilnas.distill.errors import UserError
from distilnas.distill.utils import register_student

MODEL_TYPE = "factorised-bert"


def check_embedding_size(size: int, hidden: int, where: str = "embedding") -> None:
    """A factorised table is narrower than the width it projects to (else it only adds parameters)."""
    if not 0 < size < hidden:
        raise UserError(f"{where}: {size} is not between 0 and the hidden size {hidden} (exclusive)")


class FactorisedEmbedding(nn.Module):
    """A token's vector: its row of ``table`` (vocab x E), projected to the hidden width (E x hidden)."""

    def __init__(self, num_embeddings: int, size: int, hidden: int, padding_idx: int | None = None) -> None:
        super().__init__()
        check_embedding_size(size, hidden)
        self.table = nn.Embedding(num_embeddings, size, padding_idx=padding_idx)
        self.projection = nn.Linear(size, hidden, bias=False)

    @classmethod
    def from_embedding(cls, dense: nn.Embedding, size: int) -> FactorisedEmbedding:
        """The rank-``size`` truncated SVD of ``dense``'s table (the nearest in Frobenius norm)."""
        out = cls(dense.num_embeddings, size, dense.embedding_dim, dense.padding_idx)
        u, s, vh = torch.linalg.svd(dense.weight.detach().double(), full_matrices=False)
        with torch.no_grad():
            out.table.weight.copy_(u[:, :size] * s[:size])
            out.projection.weight.copy_(vh[:size].T)  # nn.Linear keeps (out, in): hidden x E
        return out

    @property
    def weight(self) -> torch.Tensor:
        """The table it stands for (vocab x hidden), materialised (for tests and inspection only)."""
        return self.projection(self.table.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.projection(self.table(ids))


class FactorisedBertConfig(BertConfig):
    """A BERT config plus ``embedding_size``: the width of the factorised word-embedding table."""

    model_type = MODEL_TYPE

    def __init__(self, embedding_size: int = 128, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding_size = embedding_size


def factorise_embedding(bert: BertModel, size: int, from_dense: bool = True) -> None:
    """Replace ``bert``'s word embeddings by a factorised table of width ``size``, started from the dense
    table by truncated SVD (``from_dense``), or left random (the model is built to receive saved weights)."""
    emb: Any = bert.embeddings
    dense = emb.word_embeddings
    emb.word_embeddings = (
        FactorisedEmbedding.from_embedding(dense, size)
        if from_dense
        else FactorisedEmbedding(dense.num_embeddings, size, dense.embedding_dim, dense.padding_idx)
    )


class FactorisedBertModel(BertModel):
    config_class = FactorisedBertConfig

    def __init__(self, config: FactorisedBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config, add_pooling_layer)
        factorise_embedding(self, config.embedding_size, from_dense=False)


class FactorisedBertForSequenceClassification(BertForSequenceClassification):
    config_class = FactorisedBertConfig

    def __init__(self, config: FactorisedBertConfig) -> None:
        super().__init__(config)
        factorise_embedding(self.bert, config.embedding_size, from_dense=False)


def factorised(model: BertModel, size: int) -> FactorisedBertModel:
    """The converter: ``model`` (a BERT encoder) with its word embeddings factorised to width ``size``
    (truncated SVD of its table), every other weight copied."""
    dense = {k: v for k, v in model.config.to_dict().items() if k != "model_type"}
    cfg = FactorisedBertConfig(embedding_size=size, **dense)
    factorise_embedding(model, size)  # in place on the dense model, then moved into the registered class
    out = FactorisedBertModel(cfg, add_pooling_layer=model.pooler is not None)
    out.load_state_dict(model.state_dict())
    return out


register_student(
    MODEL_TYPE, FactorisedBertConfig, FactorisedBertModel, FactorisedBertForSequenceClassification
)
