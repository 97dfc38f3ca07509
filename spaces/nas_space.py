"""NAS-BERT's architecture space (Xu et al., KDD 2021), parameterised.

An N-layer teacher gives a chain of 2N layers (each BERT layer is an attention layer and a feed-forward
layer), split into B blocks of equal length. A block has one hidden size from a list (NAS-BERT: 128, 192,
256, 384, 512 for BERT-base) and each of its layers is one operation at that size: multi-head attention,
feed-forward, separable convolution with kernel 3, 5 or 7, or identity. Identity only ends a block (a
block is its non-identity prefix, so {ffn, id, ffn} and {ffn, ffn, id} are not both in the space) and no
block is all identity. So a block of L layers has |H| * sum_{k=1..L} |O|^k paths: 97,650 for NAS-BERT's
L = 6, five sizes and five operations, and a network has that to the power B.

A path is written block by block, ``"256:mha,ffn,conv3,id,id,id|128:..."``.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from distilnas.distill import nas_bert
from distilnas.distill.errors import UserError
from distilnas.distill.nas_bert import IDENTITY, block_parameters, bridge_parameters
from distilnas.spaces.base import ParamChoices

OPERATIONS: tuple[str, ...] = tuple(nas_bert.OPERATIONS)  # mha, ffn, conv3, conv5, conv7


@dataclass(frozen=True)
class BlockPath:
    """One block's choice: its hidden size and one operation per layer (identities last)."""

    hidden: int
    ops: tuple[str, ...]

    @property
    def depth(self) -> int:
        """Layers that are not identity."""
        return sum(op != IDENTITY for op in self.ops)

    def __str__(self) -> str:
        return f"{self.hidden}:{','.join(self.ops)}"


@dataclass(frozen=True)
class NasSpace:
    """The space for a teacher of ``teacher_layers`` BERT layers and width ``teacher_hidden``."""

    teacher_layers: int
    teacher_hidden: int
    blocks: int
    hidden_sizes: tuple[int, ...]
    operations: tuple[str, ...] = OPERATIONS
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab: int = 2

    def __post_init__(self) -> None:
        if self.blocks < 1 or (2 * self.teacher_layers) % self.blocks:
            raise UserError(
                f"blocks: {self.blocks} does not divide the {2 * self.teacher_layers} layers "
                f"of a {self.teacher_layers}-layer teacher"
            )
        if not self.hidden_sizes:
            raise UserError("hidden_sizes: at least one size is needed")
        wider = [h for h in self.hidden_sizes if h > self.teacher_hidden or h < 1]
        if wider:
            raise UserError(
                f"hidden_sizes: {wider} not in 1..{self.teacher_hidden} (the teacher's hidden size)"
            )
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown or not self.operations:
            raise UserError(f"operations: unknown {unknown}; known: {', '.join(OPERATIONS)}")
        for name, values in (("hidden_sizes", self.hidden_sizes), ("operations", self.operations)):
            if len(set(values)) != len(values):
                raise UserError(f"{name}: {list(values)} repeats a value")
        if "mha" in self.operations:
            split = [h for h in self.hidden_sizes if h % nas_bert.heads_for(h)]
            if split:
                raise UserError(
                    f"hidden_sizes: {split} do not split into heads of 64 (mha uses hidden // 64 heads)"
                )

    @property
    def layers(self) -> int:
        return 2 * self.teacher_layers

    @property
    def block_layers(self) -> int:
        return self.layers // self.blocks

    # ------------------------------------------------------------------ counting

    def block_count(self) -> int:
        """Paths of one block: a hidden size, then k >= 1 operations followed by identities."""
        o, n = len(self.operations), self.block_layers
        return len(self.hidden_sizes) * sum(o**k for k in range(1, n + 1))

    def count(self) -> int:
        """Paths of the whole network (blocks choose independently)."""
        return self.block_count() ** self.blocks

    # ------------------------------------------------------------------ sizes

    @property
    def embeddings(self) -> tuple[int, int, int]:
        return (self.vocab_size, self.max_positions, self.type_vocab)

    def block_params(self, position: int, block: BlockPath) -> int:
        """Exact parameters of ``block`` at block ``position`` (0: with the embeddings) as deployed, less
        the bridge from the block before (it depends on both blocks: :meth:`params` adds it)."""
        emb = self.embeddings if position == 0 else None
        return block_parameters(block.hidden, block.ops, emb)

    def params(self, path: Sequence[BlockPath]) -> int:
        """Exact parameters of the deployed student (the encoder; a task head adds its own): its blocks
        and the bridges between them (nas_bert's module docstring)."""
        bridges = sum(bridge_parameters(a.hidden, b.hidden) for a, b in itertools.pairwise(path))
        return bridges + sum(self.block_params(i, b) for i, b in enumerate(path))

    def boundaries(self) -> list[int]:
        """The teacher layer each block's output stands for. Block boundaries must fall between teacher
        layers (an even number of layers per block): the cache holds hidden states only there."""
        if self.block_layers % 2:
            raise UserError(
                f"blocks: {self.blocks} blocks of {self.block_layers} layers end inside a teacher layer; "
                f"choose a block count that divides the teacher's {self.teacher_layers} layers"
            )
        return [(i + 1) * self.block_layers // 2 for i in range(self.blocks)]

    def student_blocks(self, path: Sequence[BlockPath]) -> list[dict[str, object]]:
        """The path as a NAS-BERT student config's ``blocks`` (identities dropped)."""
        return [{"hidden": b.hidden, "ops": list(b.ops[: b.depth])} for b in path]

    # ------------------------------------------------------------------ paths

    def check_block(self, block: BlockPath, where: str = "block") -> BlockPath:
        if block.hidden not in self.hidden_sizes:
            raise UserError(f"{where}: hidden size {block.hidden} not in {list(self.hidden_sizes)}")
        if len(block.ops) != self.block_layers:
            raise UserError(f"{where}: {len(block.ops)} layers, a block has {self.block_layers}")
        for op in block.ops:
            if op != IDENTITY and op not in self.operations:
                raise UserError(f"{where}: unknown operation {op!r}")
        if block.depth == 0:
            raise UserError(f"{where}: a block may not be all identity")
        if IDENTITY in block.ops[: block.depth]:
            raise UserError(f"{where}: identity only ends a block ({block})")
        return block

    def parse(self, text: str) -> list[BlockPath]:
        """A path from its string, or a hand-designed BERT's path from its shape (``2L-96``:
        :meth:`bert_path`); anything not in the space is a clear error."""
        shape = re.fullmatch(r"\s*(\d+)L-(\d+)\s*", text)
        if shape:
            return self.bert_path(int(shape[1]), int(shape[2]))
        parts = text.strip().split("|")
        if len(parts) != self.blocks:
            raise UserError(f"path {text!r}: {len(parts)} blocks, the space has {self.blocks}")
        out = []
        for i, part in enumerate(parts):
            size, sep, ops = part.partition(":")
            if not sep or not size.strip().isdigit():
                raise UserError(f"path {text!r}: block {i + 1} must read SIZE:op,op,...")
            block = BlockPath(int(size), tuple(op.strip() for op in ops.split(",")))
            out.append(self.check_block(block, f"path {text!r}, block {i + 1}"))
        return out

    def bert_path(self, layers: int, hidden: int) -> list[BlockPath]:
        """The hand-designed BERT of ``layers`` layers at width ``hidden`` as a path: its chain of
        attention and feed-forward layers (no projection inside a block) cut into the space's blocks as
        evenly as the chain allows, so the search can always reach what a person would design. Its
        deployed form is that BERT plus a ``hidden`` -> ``hidden`` bridge between blocks (no pooler)."""
        chain = ("mha", "ffn") * layers
        where = f"student {layers}L-{hidden}"
        missing = [op for op in ("mha", "ffn") if op not in self.operations]
        if missing:
            raise UserError(f"{where}: the space's operations lack {', '.join(missing)}")
        if hidden not in self.hidden_sizes:
            raise UserError(f"{where}: hidden size {hidden} not in the space's {list(self.hidden_sizes)}")
        if not self.blocks <= len(chain) <= self.layers:
            raise UserError(
                f"{where}: its {len(chain)} attention and feed-forward layers do not fill {self.blocks} "
                f"blocks of at most {self.block_layers} ({-(-self.blocks // 2)}..{self.teacher_layers} BERT "
                "layers fit)"
            )
        base, extra = divmod(len(chain), self.blocks)
        path, start = [], 0
        for b in range(self.blocks):
            n = base + (b < extra)
            ops = chain[start : start + n] + (IDENTITY,) * (self.block_layers - n)
            path.append(self.check_block(BlockPath(hidden, ops), where))
            start += n
        return path

    @staticmethod
    def format(path: Sequence[BlockPath]) -> str:
        return "|".join(str(b) for b in path)

    def block_index(self, block: BlockPath) -> int:
        """The block's rank in 0..block_count()-1 (hidden size, then depth, then operations)."""
        self.check_block(block)
        o = len(self.operations)
        per_size = self.block_count() // len(self.hidden_sizes)
        index = self.hidden_sizes.index(block.hidden) * per_size
        index += sum(o**k for k in range(1, block.depth))
        digits = 0
        for op in block.ops[: block.depth]:
            digits = digits * o + self.operations.index(op)
        return index + digits

    def block_at(self, index: int) -> BlockPath:
        """The inverse of :meth:`block_index`."""
        if not 0 <= index < self.block_count():
            raise UserError(f"block index {index} not in 0..{self.block_count() - 1}")
        o = len(self.operations)
        per_size = self.block_count() // len(self.hidden_sizes)
        size, rest = divmod(index, per_size)
        depth = 1
        while rest >= o**depth:
            rest -= o**depth
            depth += 1
        ops = []
        for _ in range(depth):
            rest, digit = divmod(rest, o)
            ops.append(self.operations[digit])
        ops.reverse()
        return BlockPath(self.hidden_sizes[size], tuple(ops) + (IDENTITY,) * (self.block_layers - depth))

    def encode(self, path: Sequence[BlockPath]) -> list[int]:
        if len(path) != self.blocks:
            raise UserError(f"path: {len(path)} blocks, the space has {self.blocks}")
        return [self.block_index(b) for b in path]

    def decode(self, genome: Sequence[int]) -> list[BlockPath]:
        if len(genome) != self.blocks:
            raise UserError(f"genome: {len(genome)} blocks, the space has {self.blocks}")
        return [self.block_at(i) for i in genome]

    def sample_block(self, rng: random.Random) -> BlockPath:
        """Uniform over the block's paths."""
        return self.block_at(rng.randrange(self.block_count()))

    def sample_path(self, rng: random.Random) -> list[BlockPath]:
        """Uniform over the network's paths (blocks are independent)."""
        return [self.sample_block(rng) for _ in range(self.blocks)]

    def mutate_path(self, path: Sequence[BlockPath], rng: random.Random) -> list[BlockPath]:
        """Change one block: its hidden size, one of its operations, or its depth; stays in the space."""
        out = list(path)
        i = rng.randrange(self.blocks)
        block = out[i]
        kind = rng.choice(("hidden", "op", "depth"))
        if kind == "hidden" and len(self.hidden_sizes) > 1:
            hidden = rng.choice([h for h in self.hidden_sizes if h != block.hidden])
            out[i] = BlockPath(hidden, block.ops)
        elif kind == "op":
            ops = list(block.ops)
            j = rng.randrange(block.depth)
            ops[j] = rng.choice(self.operations)
            out[i] = BlockPath(block.hidden, tuple(ops))
        else:
            depth = rng.randint(1, self.block_layers)
            ops = [*block.ops[: min(depth, block.depth)]]
            ops += [rng.choice(self.operations) for _ in range(depth - len(ops))]
            out[i] = BlockPath(block.hidden, tuple(ops) + (IDENTITY,) * (self.block_layers - depth))
        return out

    # ------------------------------------------------------------------ the SearchSpace protocol

    def sample(self, rng: random.Random) -> list[int]:
        return self.encode(self.sample_path(rng))

    def mutate(self, genome: Sequence[int], rng: random.Random) -> list[int]:
        return self.encode(self.mutate_path(self.decode(genome), rng))

    def describe(self, genome: Sequence[int]) -> str:
        return self.format(self.decode(genome))

    def read(self, text: str) -> list[int]:
        return self.encode(self.parse(text))

    def valid(self, genome: Sequence[int]) -> bool:
        return len(genome) == self.blocks and all(0 <= g < self.block_count() for g in genome)

    def size(self) -> int:
        return self.count()

    def smallest(self) -> list[int]:
        """Each block's smallest one-layer path (at the smallest width, which also makes the smallest
        bridges between blocks)."""
        out = []
        for position in range(self.blocks):
            blocks = [
                BlockPath(h, (op,) + (IDENTITY,) * (self.block_layers - 1))
                for h in self.hidden_sizes
                for op in self.operations
            ]
            out.append(self.block_index(min(blocks, key=lambda b: self.block_params(position, b))))
        return out

    def trial_params(self, genome: Sequence[int]) -> dict[str, tuple[int | str, ParamChoices]]:
        """``block<n>``: the index of block n's path (:meth:`block_at`)."""
        choices = range(self.block_count())
        return {f"block{b}": (int(g), choices) for b, g in enumerate(genome, start=1)}
