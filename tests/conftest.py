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
def vocab() -> Path:
    return VOCAB


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    assert CORPUS.is_dir(), f"the shared corpus is missing at {CORPUS}"
    return CORPUS


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT with random weights and the BERT uncased tokenizer, saved as a folder."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), layers=2)


def save_tiny_bert(folder: Path, layers: int, hidden: int = 32, heads: int = 2) -> Path:
    """Save a random-weight BERT of the given shape (FFN 2x hidden) with the BERT uncased tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    from distilnas.distill.teacher import wordpiece_tokenizer

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    wordpiece_tokenizer(VOCAB).save_pretrained(folder)
    return folder


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_teacher():  # type: ignore[no-untyped-def]
    """A 4-layer, hidden-64, 4-head BERT teacher (random weights, eager attention)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return BertModel(cfg).eval()


@pytest.fixture(scope="session")
def sentences(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """96 WikiSplit sentences tokenized with the BERT vocabulary (max 32 tokens)."""
    from distilnas.distill.data import tokenize_texts
    from distilnas.distill.teacher import wordpiece_tokenizer

    lines = (CORPUS / "wikisplit" / "tune.tsv").read_text(encoding="utf-8").splitlines()[:96]
    texts = [line.split("\t")[0] for line in lines]
    return tokenize_texts(texts, wordpiece_tokenizer(VOCAB), 32, tmp_path_factory.mktemp("tok"))
