"""NAS-BERT's weight-sharing supernet, block by block, and extraction of a path into a standalone student.

Each supernet block is a :class:`~distilnas.distill.nas_bert.NasBlock` at the space's widest hidden size
holding every operation at every layer position; a smaller size runs on the leading slices of the same
tensors. Blocks are trained apart (each from the teacher's hidden states at its boundaries), so the
supernet is a list of block state dicts, and :func:`extract` builds a student from them by copying each
tensor's leading slice under the same name.

Initialisation (ours; NAS-BERT starts from random weights): the first block's embedding tables are the
teacher's, rotated onto the principal directions of its word embeddings, so the first h columns are the
best rank-h start at every size; a later block's input projection maps the teacher's hidden state onto
its principal directions at that boundary (centred), and every output projection starts as the inverse
map. A fresh supernet is thus near the teacher's states at every size from the first step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from distilnas.distill.nas_bert import NasBertConfig, NasBertModel, NasBlock
from distilnas.spaces.nas_space import BlockPath, NasSpace


def supernet_block(space: NasSpace, position: int, eps: float = 1e-12) -> NasBlock:
    """Block ``position`` of the supernet: every operation at every layer, at the widest size."""
    width = max(space.hidden_sizes)
    return NasBlock(
        width,
        [space.operations] * space.block_layers,
        space.teacher_hidden,
        space.embeddings if position == 0 else None,
        eps,
    )


def principal_directions(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the rows of ``x`` (n, d) and its principal directions as columns (d, d), by variance."""
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vh.T.contiguous()


@torch.no_grad()
def initialise(
    block: NasBlock,
    teacher: PreTrainedModel | None = None,
    inputs: torch.Tensor | None = None,
) -> None:
    """Start ``block`` from the teacher (see the module docstring).

    ``teacher``: the teacher encoder (for the first block's embeddings); ``inputs``: a sample of the
    teacher's hidden states at the block's input boundary, (tokens, teacher_hidden) (later blocks).
    """
    width = block.out.in_features
    inp: Any = block.inp
    if block.first and teacher is not None:
        table: Any = teacher.get_input_embeddings()
        emb = table.weight.float()
        _, rotation = principal_directions(emb)  # uncentred use: (w + p + t) R = wR + pR + tR
        rotation = rotation[:, :width]
        tables: Any = teacher.base_model.embeddings
        inp.word.weight.copy_(emb @ rotation)
        positions = tables.position_embeddings.weight.float()[: inp.position.num_embeddings]
        inp.position.weight.copy_(positions @ rotation)
        segments = tables.token_type_embeddings.weight.float()[: inp.segment.num_embeddings]
        inp.segment.weight.copy_(segments @ rotation)
        block.out.weight.copy_(rotation)
        block.out.bias.zero_()
    elif inputs is not None:
        mean, directions = principal_directions(inputs.float())
        directions = directions[:, :width]
        inp.weight.copy_(directions.T)
        inp.bias.copy_(-(mean @ directions))
        block.out.weight.copy_(directions)
        block.out.bias.copy_(mean)


def nas_config(space: NasSpace, path: Sequence[BlockPath], **extra: Any) -> NasBertConfig:
    """The NAS-BERT student config of ``path`` (blocks, the teacher's width and vocabulary)."""
    return NasBertConfig(
        blocks=space.student_blocks(path),
        hidden_size=space.teacher_hidden,
        vocab_size=space.vocab_size,
        max_position_embeddings=space.max_positions,
        type_vocab_size=space.type_vocab,
        path=NasSpace.format(path),
        teacher_boundaries=space.boundaries(),
        **extra,
    )


@torch.no_grad()
def extract(
    space: NasSpace,
    path: Sequence[BlockPath],
    blocks: Sequence[dict[str, torch.Tensor]],
    **config: Any,
) -> NasBertModel:
    """The standalone student of ``path`` carrying the supernet's weights (``blocks``: each supernet
    block's state dict)."""
    model = NasBertModel(nas_config(space, path, **config))
    state = {}
    for name, tensor in model.state_dict().items():
        _, position, rest = name.split(".", 2)  # blocks.<i>.<name inside the block>
        source = blocks[int(position)][rest]
        state[name] = source[tuple(slice(0, n) for n in tensor.shape)].clone()
    model.load_state_dict(state)
    return model.eval()
