"""What tests share beyond fixtures: where the offline data is, and tiny BERTs saved as model folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import BertConfig

from distilnas.spaces.joint_space import JointSpace

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GLUE = SHARED / "glue"
CORPUS = SHARED / "corpus"
VOCAB = SHARED / "models" / "bert-uncased-vocab" / "vocab.txt"
WIKISPLIT = CORPUS / "wikisplit" / "tune.tsv"


@dataclass
class Ran:
    """What a ``distilnas`` command did: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def run_process(*args: str, timeout: int = 1200, env: dict[str, str] | None = None) -> Ran:
    """``python -m distilnas ARGS`` in a process of its own (offline; Ray started by the command)."""
    full = dict(os.environ, HF_HUB_OFFLINE="1", RAY_ADDRESS="", **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "distilnas", *args], capture_output=True, text=True, timeout=timeout, env=full
    )
    return Ran(proc.returncode, proc.stdout, proc.stderr)


Cli = Callable[..., Ran]
"""The ``cli`` fixture: ``cli(*args, process=False, timeout=1200, env=None) -> Ran``."""


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


TEXTS = [
    "the film was a delight from start to finish",
    "a dull and lifeless film",
    "the cast is wonderful and the story moves",
    "i could not wait for it to end",
    "stock prices fell sharply on monday",
    "the market rallied after the report",
    "a warm , funny and moving picture",
    "the plot makes no sense at all",
]


def reference_pool(tiny_teacher, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The tiny teacher's output cache on TEXTS, and its reference store (last layer, 5 tokens)."""
    from distilnas.distill.data import tokenize_texts
    from distilnas.distill.reference_store import task_store
    from distilnas.distill.teacher import wordpiece_tokenizer
    from distilnas.distill.teacher_cache import teacher_cache

    data = tokenize_texts(TEXTS, wordpiece_tokenizer(VOCAB), 32)
    cache = teacher_cache(tiny_teacher, "tiny", data, 32, ["hidden"], tmp_path)
    return cache, task_store(cache, TEXTS, "tiny", 4, 5, tmp_path)


def referenced_student(width: int = 64):  # type: ignore[no-untyped-def]
    """A 2-layer referenced BERT classifier whose projection gives references a visible effect."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from distilnas.distill.referenced_bert import referenced

    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(3)
    model = referenced(BertForSequenceClassification(cfg), width, layer=4, tokens=5).eval()
    with torch.no_grad():  # a visible reference: the projection's BERT initialisation is small
        model.bert.reference_projection.weight.normal_(0, 0.5)
    return model


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


SOURCES_ROWS = {
    "cola": {"train": 8551, "validation": 1043, "test": 1063},
    "sst2": {"train": 67349, "validation": 872, "test": 1821},
    "mrpc": {"train": 3668, "validation": 408, "test": 1725},
    "stsb": {"train": 5749, "validation": 1500, "test": 1379},
    "rte": {"train": 2490, "validation": 277, "test": 3000},
    "wnli": {"train": 635, "validation": 71, "test": 146},
    "qnli": {"validation": 5463, "test": 5463},
    "ax": {"test": 1104},
}


JOINT_TEACHER = BertConfig(
    vocab_size=100, hidden_size=64, num_hidden_layers=6, num_attention_heads=4, intermediate_size=256
)


def joint_space(constraints: list[str] | None = None, **choices: list) -> JointSpace:
    """A joint space over a 6-layer, 64-wide teacher config (no weights)."""
    given = {
        "layers": [1, 2, 3, 4],
        "hidden": [16, 32, 48, 64],
        "heads": [2, 3, 4],
        "intermediate": [64, 256],
        "init": ["random", "copy", "extract"],
    } | choices
    names = ["monotone", "no_repeats", "supervised"] if constraints is None else constraints
    return JointSpace(**given, teacher=JOINT_TEACHER, constraints=names)
