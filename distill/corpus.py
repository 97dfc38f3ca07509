"""Raw text for task-agnostic distillation: local files or a HF dataset, and seeded sampling.

WikiText files are read the way their format asks: heading lines (`` = Title = ``, `` = = Section = = ``)
and blank lines separate examples and are never examples themselves.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from datasets import load_dataset

from distilnas.distill.config import CorpusConfig
from distilnas.distill.errors import DataError
from distilnas.distill.utils import read_text

_HEADING = re.compile(r"^\s*(=\s+)+[^=].*?(\s+=)+\s*$")


def is_heading(line: str) -> bool:
    """A WikiText heading line, such as `` = Valkyria Chronicles III = `` or `` = = Gameplay = = ``."""
    return bool(_HEADING.match(line))


def read_text_file(path: str | Path, unit: str = "line", min_chars: int = 20) -> list[str]:
    """Examples from one file: one per line, or one per paragraph (lines up to a blank line or heading).

    ``.tsv`` files (e.g. WikiSplit) contribute their first column, one example per row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found")
    lines = [line.rstrip("\r") for line in read_text(path).split("\n")]
    if path.suffix == ".tsv":
        examples = [line.split("\t", 1)[0].strip() for line in lines]
    elif unit == "line":
        examples = [line.strip() for line in lines if not is_heading(line)]
    else:
        examples = []
        current: list[str] = []
        for line in [*lines, ""]:
            if not line.strip() or is_heading(line):
                if current:
                    examples.append(" ".join(current))
                current = []
            else:
                current.append(line.strip())
    return [e for e in examples if len(e) >= max(min_chars, 1)]


def load_corpus(config: CorpusConfig) -> list[str]:
    """Every example of the configured corpus, in file order."""
    if config.files:
        texts: list[str] = []
        for f in config.files:
            texts.extend(read_text_file(f, config.unit, config.min_chars))
        if not texts:
            raise DataError(f"{', '.join(map(str, config.files))}: corpus has no examples")
        return texts
    assert config.hf_dataset is not None
    try:
        ds = load_dataset(config.hf_dataset, config.hf_config, split=config.hf_split)
    except Exception as exc:
        raise DataError(
            f"{config.hf_dataset}: cannot load corpus from the hub ({type(exc).__name__})"
        ) from exc
    if config.text_column not in ds.column_names:
        raise DataError(
            f"{config.hf_dataset}: no column {config.text_column!r} ({', '.join(ds.column_names)})"
        )
    return [
        t.strip()
        for t in ds[config.text_column]
        if len(t.strip()) >= max(config.min_chars, 1) and not is_heading(t)
    ]


def sample_fraction(texts: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded sample of ``ceil(fraction * n)`` examples, kept in corpus order (same seed, same sample)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = math.ceil(fraction * len(texts))
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(texts), size=n, replace=False))
    return [texts[i] for i in keep]
