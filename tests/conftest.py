"""Shared fixtures: the offline data beside the repo, tiny BERTs built from config (no download), and the
one way tests run the ``distilnas`` command (``cli``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from helpers import CORPUS, GLUE, VOCAB, Cli, Ran, run_process, s3_server, save_tiny_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture()
def cli(capfd: pytest.CaptureFixture[str]) -> Cli:
    """Run a ``distilnas`` command: in this process (fast: imports are paid once), or with
    ``process=True`` in its own (commands that start Ray, or that a test kills)."""

    def run(*args: str, process: bool = False, timeout: int = 1200, env: dict[str, str] | None = None) -> Ran:
        if process:
            return run_process(*args, timeout=timeout, env=env)
        from distilnas.search.cli import main

        capfd.readouterr()
        saved = dict(os.environ)
        os.environ.update(env or {})
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
        finally:
            os.environ.clear()
            os.environ.update(saved)
        out = capfd.readouterr()
        return Ran(code, out.out, out.err)

    return run


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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The query that points a run-storage URI at an S3 server of the test session's own."""
    pytest.importorskip("moto.server", reason="moto (the dev extra) serves S3 here")
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture()
def s3_folder(s3_endpoint: str) -> str:
    """A URI of an empty folder in a bucket of its own, on the session's S3 server."""
    bucket = f"t{uuid.uuid4().hex[:12]}"
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?{s3_endpoint}&allow_bucket_creation=true")
    fs.create_dir(bucket)
    return f"s3://{bucket}/runs/a?{s3_endpoint}"
