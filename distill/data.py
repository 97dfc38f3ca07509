"""Tokenized GLUE splits (cached on disk), dynamic padding and length-bucketed batches."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_from_disk
from filelock import FileLock
from transformers import PreTrainedTokenizerBase

from distilnas.distill.artifacts import added
from distilnas.distill.caches import touch
from distilnas.distill.glue import GlueTask, load_split, task_folder
from distilnas.distill.utils import atomic_dir, file_digest, fingerprint

log = logging.getLogger(__name__)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identify a tokenizer by what it does (its full serialised form), not by where it came from."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return fingerprint(backend.to_str())
    return fingerprint(sorted(tokenizer.get_vocab().items()), type(tokenizer).__name__)


def split_source_id(task: GlueTask, split: str, glue_dir: str | Path | None) -> str:
    """What a split's content is: the digest of its local file, or its hub address."""
    if glue_dir is None:
        return f"hub:nyu-mll/glue/{task.hub_config}/{split}"
    return file_digest(task_folder(task, glue_dir) / task.layouts[split].file)


@dataclass(frozen=True)
class TokenizedSplit:
    """A GLUE split ready for a model: ``input_ids``, ``token_type_ids``, ``label``, ``idx``."""

    task: GlueTask
    split: str
    dataset: Dataset

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray(self.dataset["length"])

    def __len__(self) -> int:
        return len(self.dataset)


def tokenize_split(
    task: GlueTask,
    split: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    glue_dir: str | Path | None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
) -> TokenizedSplit:
    """Tokenize one split, truncated to ``max_length`` and unpadded; cached under ``cache_dir``.

    ``limit`` keeps the first rows only (for quick runs); it is part of the cache key.
    """
    key = fingerprint(
        "glue-tokenized-v1",
        task.name,
        split,
        split_source_id(task, split, glue_dir),
        tokenizer_fingerprint(tokenizer),
        max_length,
        limit,
    )
    path = Path(cache_dir) / "tokenized" / f"{task.name}-{split}-{key}" if cache_dir else None
    if path is None:
        return TokenizedSplit(
            task, split, _tokenize_split(task, split, tokenizer, max_length, glue_dir, limit)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # one worker tokenizes, the others wait and read its copy
        if not (path / "dataset_info.json").is_file():
            with atomic_dir(path) as tmp:
                _tokenize_split(task, split, tokenizer, max_length, glue_dir, limit).save_to_disk(str(tmp))
            added(path)
    touch(path)
    return TokenizedSplit(task, split, load_from_disk(str(path)))


def _tokenize_split(
    task: GlueTask,
    split: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    glue_dir: str | Path | None,
    limit: int | None,
) -> Dataset:
    """The split's rows tokenized (``limit``: the first rows only)."""
    raw = load_split(task, split, glue_dir)
    if limit is not None and limit < len(raw):
        raw = raw.select(range(limit))
    fields = task.text_fields

    def encode(batch: dict) -> dict:
        texts = [batch[f] for f in fields]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        out = {"input_ids": enc["input_ids"]}
        out["token_type_ids"] = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
        out["length"] = [len(x) for x in enc["input_ids"]]
        return out

    return raw.map(encode, batched=True, remove_columns=list(fields), desc=f"tokenize {task.name}/{split}")


def collate(rows: Sequence[dict], pad_id: int = 0, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest row (dynamic padding), or to ``pad_to`` (fixed length)."""
    width = pad_to or max(len(r["input_ids"]) for r in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[i, :k] = torch.as_tensor(r["input_ids"])
        types[i, :k] = torch.as_tensor(r["token_type_ids"])
        mask[i, :k] = 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if "reference" in rows[0]:  # a referenced student's reference rows (distill/references.py)
        batch["reference_ids"] = torch.tensor([r["reference"] for r in rows], dtype=torch.long)
    if "label" in rows[0]:
        labels = [r["label"] for r in rows]
        dtype = torch.float32 if isinstance(labels[0], float) else torch.long
        batch["labels"] = torch.tensor(labels, dtype=dtype)
    return batch


class PackedRows:
    """A tokenized dataset held as flat NumPy arrays, so a batch is built without per-row Python work.

    ``batch(rows)`` returns the same tensors as :func:`collate` over those rows.
    """

    def __init__(self, dataset: Dataset) -> None:
        lengths = np.asarray(dataset["length"], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.lengths = lengths
        self.ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in dataset["input_ids"]])
        self.types = np.concatenate([np.asarray(x, dtype=np.int64) for x in dataset["token_type_ids"]])
        self.labels = np.asarray(dataset["label"]) if "label" in dataset.column_names else None
        cols = dataset.column_names
        self.references = np.asarray(dataset["reference"], dtype=np.int64) if "reference" in cols else None

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(
        self, rows: Sequence[int], pad_id: int = 0, pad_to: int | None = None
    ) -> dict[str, torch.Tensor]:
        r = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[r]
        width = pad_to or int(lengths.max())
        mask = np.arange(width)[None, :] < lengths[:, None]
        src = (self.offsets[r][:, None] + np.arange(width)[None, :])[mask]
        ids = np.full((len(r), width), pad_id, dtype=np.int64)
        types = np.zeros((len(r), width), dtype=np.int64)
        ids[mask], types[mask] = self.ids[src], self.types[src]
        batch = {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(types),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
        }
        if self.references is not None:
            batch["reference_ids"] = torch.from_numpy(self.references[r])
        if self.labels is not None:
            labels = self.labels[r]
            dtype = torch.float32 if labels.dtype.kind == "f" else torch.long
            batch["labels"] = torch.as_tensor(labels, dtype=dtype)
        return batch


class LengthBucketBatches:
    """Batches of similar length, so dynamic padding wastes little.

    Each epoch: shuffle (seeded by ``seed + epoch``), cut into pools of ``pool`` batches, sort each pool
    by length, split it into batches and shuffle the batches. Without ``shuffle``, batches follow the
    sorted order of the whole split (for evaluation).
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        pool: int = 50,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool = pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            for s in range(0, len(order), self.batch_size):
                yield order[s : s + self.batch_size].tolist()
            return
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.pool
        batches: list[np.ndarray] = []
        for s in range(0, len(order), span):
            chunk = order[s : s + span]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size))
        for i in rng.permutation(len(batches)):
            yield batches[i].tolist()


def tokenize_texts(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    cache_dir: str | Path | None = None,
    name: str = "corpus",
) -> Dataset:
    """Tokenize raw text (one example per string) for general distillation; cached under ``cache_dir``."""
    if cache_dir is None:
        return _tokenize(texts, tokenizer, max_length)
    return tokenized_texts(texts, tokenizer, max_length, cache_dir, name)[0]


def tokenized_texts(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    cache_dir: str | Path,
    name: str = "corpus",
) -> tuple[Dataset, Path]:
    """:func:`tokenize_texts`, and the folder of the saved Dataset (what trials load by path)."""
    key = fingerprint(
        "texts-tokenized-v1", fingerprint(list(texts)), tokenizer_fingerprint(tokenizer), max_length
    )
    path = Path(cache_dir) / "tokenized" / f"{name}-{key}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / "dataset_info.json").is_file():
            with atomic_dir(path) as tmp:
                _tokenize(texts, tokenizer, max_length).save_to_disk(str(tmp))
            added(path)
    touch(path)
    return load_from_disk(str(path)), path


def _tokenize(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:

    def encode(batch: dict) -> dict:
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
        return {
            "input_ids": enc["input_ids"],
            "token_type_ids": types,
            "length": [len(x) for x in enc["input_ids"]],
        }

    return Dataset.from_dict({"text": list(texts)}).map(encode, batched=True, remove_columns=["text"])
