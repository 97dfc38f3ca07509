"""Shared fixtures: the offline data beside the repo and tiny BERTs built from config (no download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GLUE = SHARED / "glue"
CORPUS = SHARED / "corpus"
VOCAB = SHARED / "models" / "bert-uncased-vocab" / "vocab.txt"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    assert GLUE.is_dir(), f"the shared GLUE copy is missing at {GLUE}"
    return GLUE


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    assert CORPUS.is_dir(), f"the shared corpus is missing at {CORPUS}"
    return CORPUS


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT with random weights and the BERT uncased tokenizer, saved as a folder."""
    import torch
    from transformers import BertConfig, BertModel

    from distilnas.distill.teacher import wordpiece_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    wordpiece_tokenizer(VOCAB).save_pretrained(folder)
    return folder


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
