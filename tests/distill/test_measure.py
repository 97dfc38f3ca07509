"""Parameters, FLOPs and latency against hand-computed values."""

from __future__ import annotations

import time

import pytest
import torch
from helpers import bert_flops, bert_params
from transformers import BertConfig, BertModel

from distilnas.distill.config import LatencyConfig
from distilnas.distill.measure import (
    count_flops,
    count_parameters,
    measure_latency,
    serving_device,
    stopwatch,
    timed,
    trimmed_mean,
)
from distilnas.distill.utils import default_device


def tiny(layers: int = 2, h: int = 32, i: int = 64) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=1000,
        hidden_size=h,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=i,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return BertModel(cfg)


def test_parameter_count_matches_hand_formula() -> None:
    assert count_parameters(tiny()) == bert_params(1000, 64, 2, 32, 64, 2)
    assert count_parameters(tiny(3, 48, 96)) == bert_params(1000, 64, 2, 48, 96, 3)


@pytest.mark.parametrize(("b", "s"), [(1, 16), (4, 32)])
def test_flops_match_hand_formula(b: int, s: int) -> None:
    assert count_flops(tiny(), b, s) == bert_flops(b, s, 32, 64, 2)


def test_trimmed_mean() -> None:
    assert trimmed_mean([1.0, 2.0, 3.0, 4.0, 100.0], 0.2) == pytest.approx(3.0)
    assert trimmed_mean([5.0], 0.4) == 5.0


def test_latency_records_its_settings() -> None:
    lat = measure_latency(tiny(), batch_size=2, seq_len=16, warmup=2, repeats=7, trim=0.2)
    assert lat.ms > 0 and lat.median_ms > 0 and lat.std_ms >= 0
    assert (lat.batch_size, lat.seq_len, lat.warmup, lat.repeats) == (2, 16, 2, 7)
    assert lat.threads == torch.get_num_threads() and lat.device.startswith(("cpu", "cuda"))
    assert lat.dtype == "float32"


def test_the_stopwatch_times_one_call_in_milliseconds() -> None:
    clock = stopwatch(torch.device("cpu"))
    ms = [clock(lambda: time.sleep(0.02)) for _ in range(3)]
    assert all(20 <= m < 2000 for m in ms), ms


def test_students_are_timed_where_they_will_be_served() -> None:
    """``final.latency.device`` picks the device; empty is CUDA where present (the stage's machine)."""
    assert serving_device(LatencyConfig()) == default_device()
    assert serving_device(LatencyConfig(device="cpu")) == torch.device("cpu")
    figures = timed(tiny(), LatencyConfig(device="cpu", seq_len=16, repeats=3))
    assert figures["latency"]["device"].startswith("cpu:") and figures["latency"]["seq_len"] == 16
