"""Block-wise supernet training with progressive shrinking: what one block's Ray Tune trial runs.

Block n learns to map the teacher's hidden state at its input boundary to the teacher's hidden state at
its output boundary (MSE over real tokens), one uniformly sampled path per step, fed from the
teacher-output cache (block 1 starts from the token ids: it holds the embeddings). Blocks never see each
other, so each is its own trial and they train in parallel.

Progressive shrinking (NAS-BERT, Sec. 3.3): after ``warmup_epochs``, the block's paths are cut into
``bins`` quantile bins by parameters and as many by predicted latency, and ``paths_per_bin`` are drawn
into each. After every later epoch, each bin's paths are scored on the held-out batches and the worse
half is dropped, until ``keep_per_bin`` remain; training samples only the surviving paths meanwhile.
Binning by both keeps good paths at every size and every speed for the selection to combine. (NAS-BERT
bins by each; keeping both binnings side by side is our reading.)

A block checkpoints after every epoch (weights in safetensors, optimizer, shrinking state) and a rerun
continues from there; a finished block writes ``result.json`` and is never trained again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoModel

from distilnas.distill.data import LengthBucketBatches
from distilnas.distill.nas_bert import NasBlock
from distilnas.distill.optim import adamw
from distilnas.distill.utils import atomic_dir, atomic_write_json, default_device, seed_everything
from distilnas.proxies.block_proxy import BlockProxy
from distilnas.proxies.latency import LatencyTable
from distilnas.search.config import SupernetSearchConfig
from distilnas.spaces.nas_space import BlockPath, NasSpace
from distilnas.spaces.supernet import initialise, supernet_block

log = logging.getLogger(__name__)

ENUMERATE_AT_MOST = 200_000
"""A block with at most this many paths is binned over all of them; a larger one (NAS-BERT's one block of a
6-layer teacher has about 1.5e9) over a seeded uniform sample of this many, whose quantiles stand for the
space's, so memory stays bounded."""


def masked_mse(y: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real tokens (padding never counts)."""
    return ((y - target) ** 2).mean(-1)[mask].mean()


@dataclass
class Bins:
    """Each bin's surviving block paths (indices into the block's space)."""

    pools: dict[str, list[int]]

    @classmethod
    def draw(
        cls,
        params: np.ndarray,
        latency: np.ndarray,
        bins: int,
        per_bin: int,
        rng: random.Random,
        ids: np.ndarray | None = None,
    ) -> Bins:
        """Quantile bins of the paths ``ids`` (default: 0..n-1) by ``params`` and by ``latency`` (theirs, in
        order), and ``per_bin`` of each drawn."""
        ids = np.arange(len(params)) if ids is None else ids
        pools = {}
        for name, values in (("params", params), ("latency", latency)):
            order = np.argsort(values, kind="stable")
            for i, group in enumerate(np.array_split(order, bins)):
                members = sorted(int(ids[x]) for x in group)
                pools[f"{name}{i}"] = sorted(rng.sample(members, min(per_bin, len(members))))
        return cls(pools)

    def members(self, larger_than: int = 0) -> list[int]:
        """Paths in any bin (holding more than ``larger_than``)."""
        return sorted({i for pool in self.pools.values() if len(pool) > larger_than for i in pool})

    def shrink(self, scores: dict[int, float], keep: int) -> None:
        """Every bin above ``keep`` keeps its better half (lower loss), never fewer than ``keep``."""
        for name, pool in self.pools.items():
            if len(pool) > keep:
                ranked = sorted(pool, key=lambda i: (scores[i], i))
                self.pools[name] = sorted(ranked[: max(keep, math.ceil(len(pool) / 2))])

    def settled(self, keep: int) -> bool:
        return all(len(pool) <= keep for pool in self.pools.values())


@dataclass
class BlockWork:
    """A block trial (picklable: paths, settings and the space)."""

    proxy: BlockProxy
    space: NasSpace
    settings: SupernetSearchConfig
    table: LatencyTable
    folder: str

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        return BlockTrainer(self, int(config["block"])).run()


class BlockTrainer:
    def __init__(self, work: BlockWork, position: int) -> None:
        self.work, self.position = work, position
        self.space, self.s, self.proxy = work.space, work.settings, work.proxy
        self.folder = Path(work.folder) / f"block{position + 1}"
        boundaries = [0, *self.space.boundaries()]
        self.t_in, self.t_out = boundaries[position], boundaries[position + 1]
        self.count = self.space.block_count()
        # the hand-designed students' blocks: trained and kept beside the bins, never dropped
        hand = work.settings.hand_designed
        self.pinned = {self.space.block_index(self.space.parse(p)[position]) for p in hand}
        self.universe = (
            np.arange(self.count)
            if self.count <= ENUMERATE_AT_MOST
            else np.unique(
                np.random.default_rng(self.proxy.seed + position).integers(0, self.count, ENUMERATE_AT_MOST)
            )
        )
        self.params = np.array([self.params_of(int(i)) for i in self.universe])
        self.latency = np.array([self.latency_of(int(i)) for i in self.universe])
        self.cache, self.packed = self.proxy.cache(), self.proxy.rows()
        self.device = default_device()

    def kept(self, bins: Bins) -> list[int]:
        """The paths still trained and scored: the bins' survivors and the hand-designed ones."""
        return sorted(set(bins.members()) | self.pinned)

    def path(self, index: int) -> BlockPath:
        return self.space.block_at(index)

    def params_of(self, index: int) -> int:
        return self.space.block_params(self.position, self.path(index))

    def latency_of(self, index: int) -> float:
        return self.work.table.block(self.position, self.path(index))

    # ------------------------------------------------------------------ data

    def batch(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(input, target, mask, token types): the input is token ids for block 1, else the teacher's
        hidden state at the input boundary."""
        b = self.packed.batch(rows, self.proxy.pad_id)
        mask = b["attention_mask"].bool()
        layers = [self.t_out] if self.position == 0 else [self.t_in, self.t_out]
        views = self.cache.views(rows, mask.shape[1], hidden_layers=layers, device=self.device)
        x = b["input_ids"].to(self.device) if self.position == 0 else views.hidden[self.t_in]
        return x, views.hidden[self.t_out], mask.to(self.device), b["token_type_ids"].to(self.device)

    def loss(self, block: NasBlock, data: tuple, path: BlockPath) -> torch.Tensor:
        x, target, mask, types = data
        return masked_mse(block(x, mask, path.hidden, path.ops, types), target, mask)

    @torch.no_grad()
    def score(self, block: NasBlock, indices: list[int]) -> dict[int, float]:
        """Each path's mean loss over the held-out batches."""
        block.eval()
        out = {
            i: float(np.mean([float(self.loss(block, d, self.path(i))) for d in self.held])) for i in indices
        }
        block.train()
        return out

    # ------------------------------------------------------------------ checkpoint

    def save(self, block: NasBlock, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        with atomic_dir(self.folder / "checkpoint") as tmp:
            save_file(
                {k: v.contiguous().cpu() for k, v in block.state_dict().items()}, tmp / "weights.safetensors"
            )
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
            atomic_write_json(tmp / "state.json", state)

    def load(self, block: NasBlock, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
        ckpt = self.folder / "checkpoint"
        if not (ckpt / "state.json").is_file():
            return None
        block.load_state_dict(load_file(ckpt / "weights.safetensors", device=str(self.device)))
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location=self.device))
        return dict(json.loads((ckpt / "state.json").read_text()))

    def fresh(self) -> NasBlock:
        """The block before training (seeded): its teacher-derived start (spaces/supernet.py)."""
        seed_everything(self.proxy.seed + self.position)
        block = supernet_block(self.space, self.position)
        self.start(block)
        return block.to(self.device)

    def start(self, block: NasBlock) -> None:
        """Embeddings from the teacher's, or projections from PCA of the input boundary."""
        if self.position == 0:
            initialise(block, teacher=AutoModel.from_pretrained(self.proxy.teacher))
        else:  # enough tokens for every principal direction the widest size needs
            width, tokens, rows = max(self.space.hidden_sizes), [], self.proxy.train_rows
            for start in range(0, len(rows), 4 * self.s.batch_size):
                x, _, mask, _ = self.batch(rows[start : start + 4 * self.s.batch_size].tolist())
                tokens.append(x[mask].cpu())
                if sum(len(t) for t in tokens) > width:
                    break
            initialise(block, inputs=torch.cat(tokens))

    # ------------------------------------------------------------------ training

    def run(self) -> dict[str, Any]:
        record = self.folder / "result.json"
        if record.is_file():
            return dict(json.loads(record.read_text()))
        s = self.s
        self.held = [self.batch(rows) for rows in self.proxy.score_batches(s.batch_size, s.score_batches)]
        block = self.fresh()
        opt = adamw(block.parameters(), s.lr)
        state = self.load(block, opt)
        if state is None:
            state = {"epoch": 0, "steps": 0, "seconds": 0.0, "pools": None, "history": []}
        else:
            log.info("block %d resumed after epoch %d", self.position + 1, state["epoch"])
        train = self.proxy.train_rows
        sampler = LengthBucketBatches(self.packed.lengths[train], s.batch_size, seed=self.proxy.seed)
        bins = Bins(state["pools"]) if state["pools"] else None
        block.train()
        while bins is None or not bins.settled(s.keep_per_bin):
            epoch = state["epoch"]
            rng = random.Random(f"{self.proxy.seed}/{self.position}/{epoch}")
            choices = self.kept(bins) if bins else None
            sampler.set_epoch(epoch)
            start, losses = time.perf_counter(), []
            bar = tqdm(sampler, desc=f"block {self.position + 1} epoch {epoch + 1}", unit="step")
            for rows in bar:
                index = rng.choice(choices) if choices else rng.randrange(self.count)
                loss = self.loss(block, self.batch(train[rows].tolist()), self.path(index))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(block.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            state["steps"] += len(losses)
            state["seconds"] += time.perf_counter() - start
            entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
            state["epoch"] = epoch + 1
            if bins is None and state["epoch"] >= s.warmup_epochs:
                bins = Bins.draw(self.params, self.latency, s.bins, s.paths_per_bin, rng, self.universe)
                entry["drawn"] = len(bins.members())
                state["pools"] = bins.pools
            elif bins is not None:
                t0 = time.perf_counter()
                scored = bins.members(larger_than=s.keep_per_bin)
                scores = self.score(block, scored)
                bins.shrink(scores, s.keep_per_bin)
                entry.update(scored=len(scored), score_seconds=time.perf_counter() - t0)
                entry["remaining"] = len(bins.members())
                state["pools"] = bins.pools
            state["history"].append(entry)
            log.info("block %d: %s", self.position + 1, entry)
            self.save(block, opt, state)
        return self.finish(block, bins, state)

    def finish(self, block: NasBlock, bins: Bins, state: dict[str, Any]) -> dict[str, Any]:
        """Score the survivors with the final weights; keep the weights and the candidates."""
        t0 = time.perf_counter()
        members = self.kept(bins)
        scores = self.score(block, members)
        per_path = (time.perf_counter() - t0) / max(len(members), 1)
        candidates = [
            {
                "index": i,
                "path": str(self.path(i)),
                "loss": scores[i],
                "params": int(self.params_of(i)),
                "latency_ms": float(self.latency_of(i)),
                "bins": sorted(name for name, pool in bins.pools.items() if i in pool)
                + (["hand-designed"] if i in self.pinned else []),
            }
            for i in members
        ]
        outcome = {
            "block": self.position + 1,
            "teacher_layers": [self.t_in, self.t_out],
            "score": -float(np.mean(list(scores.values()))),
            "candidates": candidates,
            "epochs": state["epoch"],
            "steps": state["steps"],
            "train_seconds": state["seconds"],
            "score_seconds_per_path": per_path,
            "history": state["history"],
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = self.folder / "weights.safetensors"
        save_file(
            {k: v.contiguous().cpu() for k, v in block.state_dict().items()}, weights.with_suffix(".tmp")
        )
        os.replace(weights.with_suffix(".tmp"), weights)  # whole or absent; result.json comes last
        atomic_write_json(self.folder / "result.json", outcome)
        return outcome
