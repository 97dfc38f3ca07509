"""NAS-BERT's operations and the standalone NAS-BERT student, a registered transformers model.

Every operation is built at a *width* and runs at any hidden size up to it by slicing its tensors to their
leading rows and columns; that is how the supernet shares weights across sizes (spaces/supernet.py).
A standalone student builds each operation at exactly its block's size, so slicing is the identity there,
and extracting a path from the supernet is copying each tensor's leading slice under the same name.

A student is a chain of blocks, in one of two forms (``NasBertConfig.form``):
- ``distillation`` (how it is trained): block 1 starts from the embeddings at its hidden size; every later
  block starts with a learned projection from the teacher's width, and every block ends with a projection
  back to it, so the hidden state at each block boundary is comparable with the teacher's at the matching
  layer (``hidden_states[b]`` is block b's output; ``hidden_states[0]``, the embedding output, is at
  block 1's size).
- ``deployed`` (what is timed, put on the front and exported): nothing runs at the teacher's width. Block
  b's output projection and block b+1's input projection have nothing between them, so they are fused
  into one map from h_b to h_{b+1}; the last block's output projection is fused into the pooler, which
  reads only [CLS]. :func:`deployed` converts a distilled student exactly (up to float rounding); its
  ``hidden_states[b]`` are at block b's own width.
Layers are post-LayerNorm residual, as in BERT.

Departures from NAS-BERT (Xu et al., KDD 2021), said here once:
- the embeddings belong to block 1 and take its hidden size (NAS-BERT's 5M- and 10M-parameter models
  cannot carry 768-wide embeddings either); the supernet starts them from the teacher's tables rotated
  onto their principal directions, so a slice of the first h columns is the best rank-h start;
- separable convolution is a depthwise convolution (kernel k) then a pointwise linear map, with GELU;
- heads = hidden // 64 (at least 1), the feed-forward inner size 4x hidden, as the issue fixes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

from distilnas.distill.dropout import dropout
from distilnas.distill.utils import register_student

MODEL_TYPE = "nas-bert"
DISTILLATION, DEPLOYED = "distillation", "deployed"
FORMS = (DISTILLATION, DEPLOYED)


def heads_for(hidden: int) -> int:
    return max(1, hidden // 64)


class SlicedLinear(nn.Linear):
    """A linear map that runs on the leading ``in_features`` inputs and ``out_features`` outputs."""

    def forward(self, x: torch.Tensor, out_features: int | None = None) -> torch.Tensor:
        o = out_features or self.out_features
        return F.linear(x, self.weight[:o, : x.shape[-1]], self.bias[:o])


class SlicedLayerNorm(nn.LayerNorm):
    """LayerNorm over the input's width, with the leading slice of its scale and shift."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1]
        return F.layer_norm(x, (h,), self.weight[:h], self.bias[:h], self.eps)


class Operation(nn.Module):
    """One layer of the chain: ``LayerNorm(x + dropout(f(x)))`` at the input's width (post-LN, as BERT)."""

    def __init__(self, width: int, eps: float = 1e-12, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = SlicedLayerNorm(width, eps=eps)
        self.dropout = dropout

    def transform(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = dropout(self.transform(x, mask), self.dropout, self.training)
        return self.norm(x + y)

    @staticmethod
    def parameters_at(h: int) -> int:
        """Parameters of the operation built at width ``h`` (its LayerNorm included)."""
        raise NotImplementedError


class MultiHeadAttention(Operation):
    def __init__(self, width: int, eps: float = 1e-12, dropout: float = 0.0) -> None:
        super().__init__(width, eps, dropout)
        self.query = SlicedLinear(width, width)
        self.key = SlicedLinear(width, width)
        self.value = SlicedLinear(width, width)
        self.output = SlicedLinear(width, width)

    def transform(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        n = heads_for(h)

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, n, h // n).transpose(1, 2)

        q, k, v = split(self.query(x, h)), split(self.key(x, h)), split(self.value(x, h))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.output(y.transpose(1, 2).reshape(b, t, h), h)

    @staticmethod
    def parameters_at(h: int) -> int:
        return 4 * (h * h + h) + 2 * h


class FeedForward(Operation):
    def __init__(self, width: int, eps: float = 1e-12, dropout: float = 0.0) -> None:
        super().__init__(width, eps, dropout)
        self.up = SlicedLinear(width, 4 * width)
        self.down = SlicedLinear(4 * width, width)

    def transform(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1]
        return self.down(F.gelu(self.up(x, 4 * h)), h)

    @staticmethod
    def parameters_at(h: int) -> int:
        return 8 * h * h + 7 * h


class SeparableConv(Operation):
    """Depthwise convolution over tokens (padding zeroed first, so it never leaks in), GELU, pointwise."""

    kernel = 3

    def __init__(self, width: int, eps: float = 1e-12, dropout: float = 0.0) -> None:
        super().__init__(width, eps, dropout)
        self.depthwise = nn.Conv1d(width, width, self.kernel, padding=self.kernel // 2, groups=width)
        self.pointwise = SlicedLinear(width, width)

    def transform(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1]
        x = (x * mask[..., None]).transpose(1, 2)
        w, bias = self.depthwise.weight[:h], self.depthwise.bias
        y = F.conv1d(x, w, None if bias is None else bias[:h], padding=self.kernel // 2, groups=h)
        return self.pointwise(F.gelu(y.transpose(1, 2)), h)

    @classmethod
    def parameters_at(cls, h: int) -> int:
        return h * h + (cls.kernel + 4) * h


class SeparableConv3(SeparableConv):
    kernel = 3


class SeparableConv5(SeparableConv):
    kernel = 5


class SeparableConv7(SeparableConv):
    kernel = 7


OPERATIONS: dict[str, type[Operation]] = {
    "mha": MultiHeadAttention,
    "ffn": FeedForward,
    "conv3": SeparableConv3,
    "conv5": SeparableConv5,
    "conv7": SeparableConv7,
}
IDENTITY = "id"


class SlicedEmbeddings(nn.Module):
    """Word, position and segment embeddings summed, then LayerNorm, at a hidden size up to ``width``."""

    def __init__(
        self, vocab: int, positions: int, types: int, width: int, eps: float, dropout: float
    ) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, width)
        self.position = nn.Embedding(positions, width)
        self.segment = nn.Embedding(types, width)
        self.norm = SlicedLayerNorm(width, eps=eps)
        self.dropout = dropout

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, hidden: int) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        x = (
            F.embedding(input_ids, self.word.weight[:, :hidden])
            + F.embedding(pos, self.position.weight[:, :hidden])
            + F.embedding(token_type_ids, self.segment.weight[:, :hidden])
        )
        return dropout(self.norm(x), self.dropout, self.training)

    @staticmethod
    def parameters_at(h: int, vocab: int, positions: int, types: int) -> int:
        return (vocab + positions + types) * h + 2 * h


class NasBlock(nn.Module):
    """A block: its input (embeddings for the first block, else a projection from the teacher's width), a
    chain of layer positions each holding one or more operations, and a projection to the teacher's width.

    The supernet builds it at its widest size with every operation at every position; a standalone student
    builds it at its own size with the one operation each position has. Parameter names are the same in
    both, so extraction copies tensors by name. A deployed block (``entry``: the previous block's width;
    ``projects=False``) enters from the previous block's state and ends at its own width.
    """

    def __init__(
        self,
        width: int,
        choices: Sequence[Sequence[str]],
        teacher_hidden: int,
        embeddings: tuple[int, int, int] | None = None,
        eps: float = 1e-12,
        dropout: float = 0.0,
        entry: int | None = None,
        projects: bool = True,
    ) -> None:
        super().__init__()
        self.first = embeddings is not None
        self.inp: Any = (
            SlicedEmbeddings(*embeddings, width, eps, dropout)
            if embeddings is not None
            else SlicedLinear(entry or teacher_hidden, width)
        )
        self.layers: Any = nn.ModuleList(
            nn.ModuleDict({op: OPERATIONS[op](width, eps, dropout) for op in ops}) for ops in choices
        )
        self.out: Any = SlicedLinear(width, teacher_hidden) if projects else None

    def enter(self, x: torch.Tensor, token_type_ids: torch.Tensor | None, hidden: int) -> torch.Tensor:
        if self.first:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(x)
            return self.inp(x, types, hidden)
        return self.inp(x, hidden)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        hidden: int,
        ops: Sequence[str],
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: token ids (first block) or the teacher-width state; ``ops`` one per position (``id``
        ends the chain). Returns the block's output at the teacher's width."""
        return self.chain(self.enter(x, token_type_ids, hidden), mask, ops)

    def chain(self, y: torch.Tensor, mask: torch.Tensor, ops: Sequence[str]) -> torch.Tensor:
        """The layers after the input (``id`` ends them), then the projection to the teacher's width
        (none in a deployed block)."""
        for layer, op in zip(self.layers, ops, strict=False):  # ops may end before the positions do
            if op == IDENTITY:
                break
            y = layer[op](y, mask)
        return y if self.out is None else self.out(y)


class NasBertConfig(PretrainedConfig):
    """A NAS-BERT student: its path (block by block: hidden size and operations), the teacher's width and
    its form (the module docstring).

    ``hidden_size`` is the teacher's width (every block's output has it in the distillation form, the
    pooler's in both); ``blocks`` is a list of ``{"hidden": h, "ops": [...]}`` without identities.
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        blocks: list[dict[str, Any]] | None = None,
        hidden_size: int = 384,
        vocab_size: int = 30522,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        hidden_dropout_prob: float = 0.1,
        path: str = "",
        teacher_boundaries: list[int] | None = None,
        pad_token_id: int = 0,
        form: str = DISTILLATION,
        **kwargs: Any,
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"form: {form!r}, not one of {', '.join(FORMS)}")
        self.form = form
        self.blocks = blocks or [{"hidden": 128, "ops": ["ffn"]}]
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.path = path
        self.teacher_boundaries = teacher_boundaries or []
        """The teacher layer each block's output stands for (for distillation)."""
        self.num_hidden_layers = len(self.blocks)
        self.num_attention_heads = max(heads_for(int(b["hidden"])) for b in self.blocks)
        super().__init__(pad_token_id=pad_token_id, **kwargs)  # type: ignore[call-arg]


class NasBertPreTrainedModel(PreTrainedModel):
    config_class = NasBertConfig
    base_model_prefix = "nas_bert"
    # attention is always SDPA here, whatever implementation is named (eager, sdpa, the recording one):
    # nothing is recorded, so NAS-BERT students distil block outputs and logits only
    _supports_attention_backend = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Conv1d):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class NasBertModel(NasBertPreTrainedModel):
    """The standalone student encoder: every block at its own size, its output at the teacher's width
    (the distillation form) or at the last block's (the deployed form)."""

    def __init__(self, config: NasBertConfig) -> None:
        super().__init__(config)
        c = config
        emb = (c.vocab_size, c.max_position_embeddings, c.type_vocab_size)
        widths = [int(b["hidden"]) for b in c.blocks]
        deployed = c.form == DEPLOYED
        self.blocks = nn.ModuleList(
            NasBlock(
                widths[i],
                [[op] for op in b["ops"]],
                c.hidden_size,
                emb if i == 0 else None,
                c.layer_norm_eps,
                c.hidden_dropout_prob,
                entry=widths[i - 1] if deployed and i else None,
                projects=not deployed,
            )
            for i, b in enumerate(c.blocks)
        )
        self.post_init()

    @property
    def output_width(self) -> int:
        """The width of ``last_hidden_state``."""
        c = self.config
        return int(c.blocks[-1]["hidden"]) if c.form == DEPLOYED else int(c.hidden_size)

    def get_input_embeddings(self) -> nn.Module:
        first: Any = self.blocks[0]
        return first.inp.word

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput:
        mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).bool()
        x: torch.Tensor = input_ids
        states: list[torch.Tensor] = []
        blocks: list[Any] = list(self.blocks)
        for i, (block, spec) in enumerate(zip(blocks, self.config.blocks, strict=True)):
            h = int(spec["hidden"])
            y = block.enter(x, token_type_ids, h)
            if i == 0:
                states.append(y)
            x = block.chain(y, mask, spec["ops"])
            states.append(x)
        return BaseModelOutput(
            last_hidden_state=x, hidden_states=tuple(states) if output_hidden_states else None
        )


class NasBertForSequenceClassification(NasBertPreTrainedModel):
    """The encoder, BERT's pooler (tanh dense on [CLS], to the teacher's width), and a classifier."""

    def __init__(self, config: NasBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nas_bert = NasBertModel(config)
        self.pooler = nn.Linear(self.nas_bert.output_width, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, int(config.num_labels or 2))
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        out = self.nas_bert(
            input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states
        )
        pooled = torch.tanh(self.pooler(out.last_hidden_state[:, 0]))
        pooled = dropout(pooled, self.config.hidden_dropout_prob, self.training)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.float())
            else:
                loss = F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


@torch.no_grad()
def deployed(model: NasBertModel | NasBertForSequenceClassification) -> PreTrainedModel:
    """``model`` (distillation form) in its deployed form: block b's output projection fused with block
    b+1's input projection (``W_in @ W_out``, bias ``W_in @ b_out + b_in``) and the last block's fused into
    the pooler. Exact up to float rounding, since nothing sits between the fused maps; an encoder alone
    loses its last projection (its output is then at the last block's width)."""
    config = model.config
    if config.form == DEPLOYED:
        return model
    cfg = NasBertConfig.from_dict({**config.to_dict(), "form": DEPLOYED})
    cfg._attn_implementation = config._attn_implementation
    target: Any = type(model)(cfg)
    source = model.state_dict()
    prefix = "nas_bert." if isinstance(model, NasBertForSequenceClassification) else ""
    keys = target.state_dict().keys()
    state = {k: v for k, v in source.items() if k in keys}

    def fused(outer: str, inner: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``outer`` after ``inner`` as one linear map (computed in float64, then the model's dtype)."""
        wo, bo = source[f"{outer}.weight"].double(), source[f"{outer}.bias"].double()
        wi, bi = source[f"{inner}.weight"].double(), source[f"{inner}.bias"].double()
        dtype = source[f"{outer}.weight"].dtype
        return (wo @ wi).to(dtype), (wo @ bi + bo).to(dtype)

    for b in range(1, len(config.blocks)):
        name = f"{prefix}blocks.{b}.inp"
        state[f"{name}.weight"], state[f"{name}.bias"] = fused(name, f"{prefix}blocks.{b - 1}.out")
    if prefix:
        last = f"nas_bert.blocks.{len(config.blocks) - 1}.out"
        state["pooler.weight"], state["pooler.bias"] = fused("pooler", last)
    target.load_state_dict(state)
    return target.to(next(model.parameters())).train(model.training)  # its device and dtype


def block_parameters(hidden: int, ops: Sequence[str], embeddings: tuple[int, int, int] | None) -> int:
    """Exact parameters of one deployed block without its input projection (the bridge from the previous
    block, which depends on both): its embeddings (the first block) and operations; identities are free."""
    n = SlicedEmbeddings.parameters_at(hidden, *embeddings) if embeddings is not None else 0
    return n + sum(OPERATIONS[op].parameters_at(hidden) for op in ops if op != IDENTITY)


def bridge_parameters(before: int, after: int) -> int:
    """The deployed map from one block's width to the next's (weight and bias)."""
    return before * after + after


register_student(MODEL_TYPE, NasBertConfig, NasBertModel, NasBertForSequenceClassification)
