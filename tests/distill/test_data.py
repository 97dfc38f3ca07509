"""Length-bucketed batching and dynamic padding."""

from __future__ import annotations

import numpy as np
import torch

from distilnas.distill.data import LengthBucketBatches, collate


def test_buckets_cover_every_row_once_and_are_seeded() -> None:
    lengths = np.random.default_rng(0).integers(5, 120, size=1003)
    sampler = LengthBucketBatches(lengths, batch_size=32, seed=7, pool=4)
    batches = list(sampler)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1003))
    assert len(batches) == len(sampler) == 32
    assert batches == list(LengthBucketBatches(lengths, batch_size=32, seed=7, pool=4))
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order each epoch
    # bucketing pads less than random batches would
    pad = sum(lengths[b].max() * len(b) for b in map(np.asarray, batches))
    assert pad < 0.8 * lengths.max() * len(lengths)


def test_eval_order_is_sorted_by_length() -> None:
    lengths = [9, 3, 7, 1]
    assert list(LengthBucketBatches(lengths, batch_size=2, shuffle=False)) == [[3, 1], [2, 0]]


def test_collate_pads_to_longest_row() -> None:
    rows = [
        {"input_ids": [101, 7, 102], "token_type_ids": [0, 0, 0], "label": 1},
        {"input_ids": [101, 102], "token_type_ids": [0, 0], "label": 0},
    ]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].dtype == torch.long
    assert collate(rows, pad_to=5)["input_ids"].shape == (2, 5)
    reg = collate([{"input_ids": [1], "token_type_ids": [0], "label": 2.5}])
    assert reg["labels"].dtype == torch.float32
