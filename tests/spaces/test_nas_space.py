"""NAS-BERT's space: exact path counts against brute-force enumeration and the paper's figure, a
bijective encoding, sampling and mutation that stay in the space, and clear errors."""

from __future__ import annotations

import itertools
import random

import pytest

from distilnas.distill.errors import UserError
from distilnas.spaces.nas_space import IDENTITY, OPERATIONS, BlockPath, NasSpace


def brute_block_paths(space: NasSpace) -> set[BlockPath]:
    """Every (size, operation sequence) the rules allow, by trying all of them."""
    out = set()
    for h in space.hidden_sizes:
        for ops in itertools.product([*space.operations, IDENTITY], repeat=space.block_layers):
            depth = sum(op != IDENTITY for op in ops)
            if depth and IDENTITY not in ops[:depth]:
                out.add(BlockPath(h, ops))
    return out


@pytest.mark.parametrize(
    ("layers", "blocks", "sizes", "ops"),
    [(2, 2, (64,), OPERATIONS), (3, 2, (64, 128), ("mha", "ffn")), (4, 2, (32, 64, 96), OPERATIONS[:3])],
)
def test_counts_equal_brute_force(
    layers: int, blocks: int, sizes: tuple[int, ...], ops: tuple[str, ...]
) -> None:
    space = NasSpace(layers, 128, blocks, sizes, ops)
    paths = brute_block_paths(space)
    assert space.block_count() == len(paths)
    assert space.count() == len(paths) ** blocks
    assert {space.block_at(i) for i in range(space.block_count())} == paths  # the encoding is a bijection
    assert all(space.block_at(space.block_index(b)) == b for b in paths)


def test_nas_bert_configuration_has_the_papers_counts() -> None:
    # BERT-base: 12 layers -> 24, 4 blocks of 6, hidden sizes 128..512, five operations and identity
    space = NasSpace(12, 768, 4, (128, 192, 256, 384, 512))
    assert space.block_layers == 6
    assert space.block_count() == 97_650 == 5 * (5 + 25 + 125 + 625 + 3125 + 15625)
    assert space.count() == 97_650**4  # about 10^20
    assert 9e19 < space.count() < 1e20


def test_sampling_mutation_and_strings_stay_in_the_space() -> None:
    space = NasSpace(6, 384, 3, (128, 256, 384))
    rng = random.Random(0)
    path = space.sample_path(rng)
    for _ in range(300):
        path = space.mutate_path(path, rng)
        text = NasSpace.format(path)
        assert space.parse(text) == path
        assert space.decode(space.encode(path)) == path
        assert space.describe(space.read(text)) == text
    # uniform sampling of a block: every depth appears in proportion to its number of paths
    depths = [space.sample_block(rng).depth for _ in range(4000)]
    assert depths.count(4) / 4000 == pytest.approx(625 / 780, abs=0.03)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("128:mha,ffn,id,id|128:ffn,ffn,ffn,ffn|256:mha,id,id,id", "3 blocks, the space has 2"),
        ("128:mha,ffn,id,id|512:ffn,id,id,id", "hidden size 512 not in [128, 256, 384]"),
        ("128:mha,id,ffn,id|128:ffn,id,id,id", "identity only ends a block"),
        ("128:id,id,id,id|128:ffn,id,id,id", "may not be all identity"),
        ("128:mha,ffn,id|128:ffn,id,id,id", "3 layers, a block has 4"),
        ("128:mha,conv9,id,id|128:ffn,id,id,id", "unknown operation 'conv9'"),
        ("mha,ffn,id,id|128:ffn,id,id,id", "must read SIZE:op,op"),
    ],
)
def test_paths_not_in_the_space_are_clear_errors(text: str, message: str) -> None:
    space = NasSpace(4, 384, 2, (128, 256, 384))
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        space.parse(text)


def test_bad_spaces_are_clear_errors() -> None:
    with pytest.raises(UserError, match="blocks: 5 does not divide the 12 layers"):
        NasSpace(6, 384, 5, (128,))
    with pytest.raises(UserError, match=r"hidden_sizes: \[512\] not in 1..384"):
        NasSpace(6, 384, 3, (128, 512))
