"""Parameters, FLOPs and latency against hand-computed values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from distilnas.distill.measure import count_flops, count_parameters, measure_latency, trimmed_mean

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "models"


def bert_params(v: int, p: int, t: int, h: int, i: int, layers: int) -> int:
    """BERT's parameter count by hand: embeddings + layers + pooler."""
    embeddings = (v + p + t) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    return embeddings + layers * layer + (h * h + h)


def bert_flops(b: int, s: int, h: int, i: int, layers: int) -> int:
    """Forward matmul FLOPs (2 per multiply-add): Q, K, V, O projections, the two attention
    products (QK^T and AV, over all heads together), the FFN, and the pooler on [CLS]."""
    per_layer = 4 * 2 * s * h * h + 2 * 2 * s * s * h + 2 * 2 * s * h * i
    return b * (layers * per_layer + 2 * h * h)


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


def test_latency_cli_on_config_only_folder() -> None:
    """BERT-Tiny's real config without weights: built with random weights, measured, counted."""
    folder = SHARED_MODELS / "bert-tiny-config-only"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distilnas",
            "latency",
            str(folder),
            "-b",
            "1",
            "-b",
            "4",
            "--seq-len",
            "32",
            "--repeats",
            "5",
            "--warmup",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["random_weights"] is True
    assert report["parameters"] == bert_params(30522, 512, 2, 128, 512, 2)  # 4.39M, BERT-Tiny's size
    assert [r["batch_size"] for r in report["latency"]] == [1, 4]
    assert report["latency"][1]["flops"] == bert_flops(4, 32, 128, 512, 2)
