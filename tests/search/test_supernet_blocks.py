"""Block-wise supernet training: progressive shrinking halves each bin by held-out score, and a block
killed after any epoch resumes to the result of an uninterrupted run."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from helpers import save_tiny_bert

from distilnas.distill.config import TeacherConfig
from distilnas.proxies.block_proxy import prepare_block_proxy
from distilnas.proxies.latency import measure_table
from distilnas.search.config import SupernetSearchConfig
from distilnas.search.stages.supernet_blocks import Bins, BlockTrainer, BlockWork
from distilnas.spaces.nas_space import NasSpace


def test_bins_halve_by_score_down_to_keep() -> None:
    params = np.arange(12)
    latency = np.arange(12)[::-1].copy()
    bins = Bins.draw(params, latency, bins=2, per_bin=6, rng=random.Random(0))
    assert bins.pools["params0"] == [0, 1, 2, 3, 4, 5] and bins.pools["latency0"] == [6, 7, 8, 9, 10, 11]
    scores = {i: float((i * 7) % 12) for i in range(12)}  # 0:0 1:7 2:2 3:9 4:4 5:11 ...
    bins.shrink(scores, keep=2)
    assert bins.pools["params0"] == [0, 2, 4]  # the better half: ceil(6 / 2)
    bins.shrink(scores, keep=2)
    assert bins.pools["params0"] == [0, 2] and bins.settled(2)
    assert set(bins.members()) == set(bins.pools["params0"]) | set(bins.pools["params1"]) | set(
        bins.pools["latency0"]
    ) | set(bins.pools["latency1"])


@pytest.fixture(scope="module")
def block_setup(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("blocks")
    teacher = save_tiny_bert(tmp / "teacher", layers=4, hidden=64, heads=2)
    lines = (corpus_dir / "wikisplit" / "tune.tsv").read_text(encoding="utf-8").splitlines()[:160]
    texts = [line.split("\t")[0] for line in lines]
    proxy = prepare_block_proxy(TeacherConfig(name=str(teacher)), texts, 1.0, 32, 32, tmp / "cache", tmp, 0)
    space = NasSpace(4, 64, 2, (32, 64), ("mha", "ffn", "conv3"), vocab_size=30522, max_positions=128)
    settings = SupernetSearchConfig(
        blocks=2,
        hidden_sizes=[32, 64],
        operations=["mha", "ffn", "conv3"],
        batch_size=16,
        lr=1e-3,
        warmup_epochs=1,
        bins=2,
        paths_per_bin=8,
        keep_per_bin=2,
        score_batches=2,
    )
    table = measure_table(space, seq_len=32, repeats=3, warmup=1)
    return proxy, space, settings, table, tmp


def test_block_training_shrinks_and_resumes_where_it_stopped(block_setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]

    proxy, space, settings, table, tmp = block_setup
    whole = BlockWork(proxy, space, settings, table, str(tmp / "whole"))({"block": 1})
    # the warm-up epoch draws 8 paths per bin; each later epoch scores the bins and halves them (to 4, 2)
    history = whole["history"]
    assert whole["epochs"] == 3 and "drawn" in history[0] and history[1]["scored"] == history[0]["drawn"]
    assert history[2]["scored"] == history[1]["remaining"] >= history[2]["remaining"]
    assert 1 <= len(whole["candidates"]) <= 2 * 2 * settings.bins
    for c in whole["candidates"]:
        assert c["params"] == space.block_params(1, space.block_at(c["index"]))
        assert c["latency_ms"] == pytest.approx(table.block(1, space.block_at(c["index"])))
    assert whole["history"][-1]["train_loss"] < whole["history"][0]["train_loss"]

    real_save = BlockTrainer.save
    work = BlockWork(proxy, space, settings, table, str(tmp / "killed"))
    for kill_at in (1, 2):  # killed after the warm-up epoch (bins just drawn), then after a shrink
        saves = []

        def save_then_die(self, *args, kill_at=kill_at, saves=saves):  # type: ignore[no-untyped-def]
            real_save(self, *args)
            saves.append(1)
            if len(saves) == kill_at:
                raise KeyboardInterrupt  # as if killed right after this epoch's checkpoint

        monkeypatch.setattr(BlockTrainer, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            work({"block": 1})
        assert not (tmp / "killed" / "block2" / "result.json").exists()
    monkeypatch.setattr(BlockTrainer, "save", real_save)
    resumed = work({"block": 1})
    assert resumed["steps"] == whole["steps"] and resumed["epochs"] == 3
    assert [c["index"] for c in resumed["candidates"]] == [c["index"] for c in whole["candidates"]]
    np.testing.assert_allclose(
        [c["loss"] for c in resumed["candidates"]], [c["loss"] for c in whole["candidates"]], rtol=1e-4
    )
    assert work({"block": 1}) == resumed  # finished: read back, never trained again


def test_a_block_too_large_to_enumerate_is_binned_over_a_sample(block_setup) -> None:  # type: ignore[no-untyped-def]
    """One block over the whole teacher: about a million paths, never all built; the bins are drawn from a
    seeded uniform sample and hold real paths of the space."""
    from distilnas.search.stages import supernet_blocks

    proxy, _, settings, _, tmp = block_setup
    space = NasSpace(4, 64, 1, (32, 64), vocab_size=30522, max_positions=128)
    table = measure_table(space, seq_len=8, repeats=1, warmup=0)
    trainer = BlockTrainer(BlockWork(proxy, space, settings, table, str(tmp / "big")), 0)
    assert space.block_count() == 2 * sum(5**k for k in range(1, 9)) > supernet_blocks.ENUMERATE_AT_MOST
    assert len(trainer.universe) <= supernet_blocks.ENUMERATE_AT_MOST
    assert len(trainer.params) == len(trainer.universe) == len(trainer.latency)
    bins = Bins.draw(trainer.params, trainer.latency, 4, 5, random.Random(0), trainer.universe)
    members = bins.members()
    assert 5 <= len(members) <= 40 and all(0 <= i < space.block_count() for i in members)
    assert all(trainer.params_of(i) == space.block_params(0, space.block_at(i)) for i in members)
    # the parameter bins are ordered: every path of the first is no larger than any of the last
    assert max(trainer.params_of(i) for i in bins.pools["params0"]) <= min(
        trainer.params_of(i) for i in bins.pools["params3"]
    )
