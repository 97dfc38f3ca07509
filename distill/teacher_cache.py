"""The teacher-output cache: the teacher runs once per example; every trial on a node reads the result.

Layout of one cache (a folder named by its fingerprint of teacher, data, max length and fields):

- ``hidden.f16``: every layer's hidden states, (tokens, layers + 1, hidden), fp16, unpadded;
- ``qkv.f16``: every layer's query, key and value, (tokens, layers, 3, hidden), fp16 (attention losses);
- ``logits.f32``: (examples, labels), when the teacher has a head;
- ``offsets.i64``: where each example's tokens start (examples + 1);
- ``index.json``, written last: fingerprint, shapes, and each file's size and xxhash64 digest.

Files are memory-mapped read-only, so many processes share one copy in the page cache. Opening checks
sizes and digests: a truncated or corrupted cache is rebuilt, never used. The folder is built beside its
final place and renamed in one step; a file lock keeps two workers from building the same cache.

This lives on the training-core floor (``distill/``) because the distiller reads it: a step with a warm
cache never calls the teacher. ``proxies/`` decides what to cache; this module only stores and reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xxhash
from datasets import Dataset
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from distilnas.distill.artifacts import added
from distilnas.distill.caches import touch
from distilnas.distill.capture import capture, recording
from distilnas.distill.data import LengthBucketBatches, collate
from distilnas.distill.errors import UserError
from distilnas.distill.losses import Views
from distilnas.distill.utils import atomic_dir, atomic_write_json, default_device, fingerprint, kill_point

log = logging.getLogger(__name__)

FORMAT = "teacher-outputs-v3"
VERIFIED = "verified.json"
"""Each file's (size, mtime) when its digest last matched: an open whose files still show them skips
the digests (a cache of gigabytes is hashed once, not at every trial); any change hashes again."""

FIELDS = ("hidden", "qkv", "logits")


def data_digest(dataset: Dataset) -> str:
    """What the tokenized examples are (ids and segments, in order): the cache's data key."""
    h = xxhash.xxh64()
    for col in ("input_ids", "token_type_ids"):
        for row in dataset[col]:
            h.update(np.asarray(row, dtype=np.int32).tobytes())
            h.update(b"|")
    return h.hexdigest()


def index_digest(index: dict) -> str:
    """The digest of an index's own content (everything but this digest)."""
    body = {k: v for k, v in index.items() if k != "index_xxh64"}
    return xxhash.xxh64(json.dumps(body, sort_keys=True).encode()).hexdigest()


def file_xxh(path: Path) -> str:
    h = xxhash.xxh64()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


class CacheCorrupted(Exception):
    """A cache on disk does not match its index (truncated, altered or incomplete)."""


@dataclass(frozen=True)
class CacheKey:
    teacher: str
    """The teacher's identity (weights digest or hub id, plus task head when fine-tuned)."""
    data: str
    max_length: int
    fields: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        return fingerprint(FORMAT, self.teacher, self.data, self.max_length, sorted(self.fields))


class TeacherCache:
    """A verified, memory-mapped teacher-output cache (see the module docstring)."""

    def __init__(self, path: Path, expected_fingerprint: str | None = None) -> None:
        self.path = Path(path)
        index_file = self.path / "index.json"
        if not index_file.is_file():
            raise CacheCorrupted(f"{self.path}: no index.json (incomplete cache)")
        try:
            self.index = json.loads(index_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CacheCorrupted(f"{index_file}: unreadable ({exc})") from None
        if self.index.get("index_xxh64") != index_digest(self.index):
            raise CacheCorrupted(f"{index_file}: does not match its own digest (altered)")
        if expected_fingerprint is not None and self.index.get("fingerprint") != expected_fingerprint:
            raise UserError(
                f"{self.path}: teacher-output cache is for another teacher, data or settings "
                f"(fingerprint {self.index.get('fingerprint')}, expected {expected_fingerprint})"
            )
        self._verify()
        self.offsets = np.fromfile(self.path / "offsets.i64", dtype=np.int64)
        shapes = self.index["shapes"]
        self.hidden = self._map("hidden.f16", np.float16, shapes.get("hidden"))
        self.qkv = self._map("qkv.f16", np.float16, shapes.get("qkv"))
        self.logits = self._map("logits.f32", np.float32, shapes.get("logits"))
        self.heads = int(self.index["heads"])
        self.hidden_size = int(self.index["hidden_size"])

    def _verify(self) -> None:
        stats = {}
        for name, meta in self.index["files"].items():
            f = self.path / name
            if not f.is_file() or f.stat().st_size != meta["bytes"]:
                size = f.stat().st_size if f.is_file() else "missing"
                raise CacheCorrupted(f"{f}: {size} bytes, expected {meta['bytes']} (truncated)")
            stats[name] = [f.stat().st_size, f.stat().st_mtime_ns]
        stamp = self.path / VERIFIED
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp.read_text()) == stats:
                self._touch()
                return
        for name, meta in self.index["files"].items():
            if file_xxh(self.path / name) != meta["xxh64"]:
                raise CacheCorrupted(f"{self.path / name}: content does not match its digest (corrupted)")
        with contextlib.suppress(OSError):  # a read-only cache is verified again next time
            atomic_write_json(stamp, stats)
        self._touch()

    def _touch(self) -> None:
        touch(self.path)

    def _map(self, name: str, dtype: type, shape: list[int] | None) -> np.memmap | None:
        if shape is None:
            return None
        return np.memmap(self.path / name, dtype=dtype, mode="r", shape=tuple(shape))

    def release(self) -> None:
        """Drop the pages read so far from this process's memory (they stay in the page cache): a pass
        over the whole cache then holds only what it reads at once."""
        for store in (self.hidden, self.qkv, self.logits):
            mapped = getattr(store, "_mmap", None)
            if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
                mapped.madvise(mmap.MADV_DONTNEED)

    # ------------------------------------------------------------------ facts

    @property
    def fingerprint(self) -> str:
        return str(self.index["fingerprint"])

    @property
    def examples(self) -> int:
        return len(self.offsets) - 1

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.index["fields"])

    @property
    def bytes_per_example(self) -> float:
        total = sum(meta["bytes"] for meta in self.index["files"].values())
        return total / max(self.examples, 1)

    # ------------------------------------------------------------------ reading

    def views(
        self,
        rows: Sequence[int],
        width: int,
        hidden_layers: Sequence[int] = (),
        qkv_layers: Sequence[int] = (),
        device: torch.device | None = None,
    ) -> Views:
        """The teacher's outputs for dataset ``rows``, padded to ``width`` tokens, as float32 tensors.

        ``hidden_layers`` count 0 as the embeddings; ``qkv_layers`` count from 1 (as hidden states).
        """
        rows_a = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows_a]
        lengths = self.offsets[rows_a + 1] - starts
        if lengths.max(initial=0) > width:
            raise ValueError(
                f"a cached example has {lengths.max()} tokens, more than the batch width {width}"
            )
        dest = np.arange(width)[None, :] < lengths[:, None]  # (batch, width): real tokens
        pos = (starts[:, None] + np.arange(width)[None, :])[dest]  # their rows in the cache, in order
        dest_t = torch.from_numpy(dest)
        out = Views(heads=self.heads)

        def gather(store: np.memmap, layers: np.ndarray) -> torch.Tensor:
            """(batch, width, layers, ...) float32: only the asked layers are read, padding is zero."""
            flat = torch.from_numpy(np.ascontiguousarray(store[pos[:, None], layers[None, :]]))
            full = torch.zeros((len(rows_a), width, *flat.shape[1:]), dtype=flat.dtype)
            full[dest_t] = flat
            return full.to(device=device, dtype=torch.float32)

        if hidden_layers:
            if self.hidden is None:
                raise UserError(f"{self.path}: cache has no hidden states")
            layers = np.asarray(sorted(hidden_layers))
            block = gather(self.hidden, layers)  # (b, w, n_layers, h)
            out.hidden = {int(layer): block[:, :, i] for i, layer in enumerate(layers)}
        if qkv_layers:
            if self.qkv is None:
                raise UserError(f"{self.path}: cache has no Q/K/V")
            layers = np.asarray(sorted(qkv_layers))
            block = gather(self.qkv, layers - 1)  # (b, w, n_layers, 3, h)
            out.qkv = {
                int(layer): (block[:, :, i, 0], block[:, :, i, 1], block[:, :, i, 2])
                for i, layer in enumerate(layers)
            }
        if self.logits is not None:
            logits = torch.from_numpy(np.asarray(self.logits[rows_a]))
            out.logits = logits.to(device) if device is not None else logits
        return out


# ---------------------------------------------------------------------- building


@torch.no_grad()
def _write(
    teacher: PreTrainedModel, dataset: Dataset, key: CacheKey, folder: Path, batch_size: int, pad_id: int
) -> None:
    device = default_device()
    teacher = teacher.to(device).eval()  # type: ignore[arg-type]
    lengths = np.asarray(dataset["length"], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = int(offsets[-1])
    cfg = teacher.config
    layers, width = cfg.num_hidden_layers, cfg.hidden_size
    need = 2 * tokens * width * ((layers + 1) * ("hidden" in key.fields) + 3 * layers * ("qkv" in key.fields))
    free = shutil.disk_usage(folder).free
    if need * 1.05 > free:  # a full disk would end the writer with SIGBUS halfway through
        raise UserError(
            f"{folder.parent}: the teacher-output cache needs {need / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB are free (data.cache_dir elsewhere, or `distilnas cache prune`)"
        )
    shapes: dict[str, list[int]] = {}
    maps: dict[str, np.memmap] = {}
    if "hidden" in key.fields:
        shapes["hidden"] = [tokens, layers + 1, width]
        maps["hidden"] = np.memmap(folder / "hidden.f16", np.float16, "w+", shape=tuple(shapes["hidden"]))
    if "qkv" in key.fields:
        shapes["qkv"] = [tokens, layers, 3, width]
        maps["qkv"] = np.memmap(folder / "qkv.f16", np.float16, "w+", shape=tuple(shapes["qkv"]))
    has_logits = "logits" in key.fields
    if has_logits:
        shapes["logits"] = [len(dataset), int(cfg.num_labels or 1)]
        maps["logits"] = np.memmap(folder / "logits.f32", np.float32, "w+", shape=tuple(shapes["logits"]))

    rows = dataset.select_columns(["input_ids", "token_type_ids"])
    sampler = LengthBucketBatches(lengths, batch_size, shuffle=False)
    with recording(teacher):  # records Q/K/V; the caller's model is left as it was
        for n, batch_rows in enumerate(tqdm(list(sampler), desc="teacher outputs", unit="batch")):
            if n == len(sampler) // 2:
                kill_point("cache-write")
            batch = collate([rows[i] for i in batch_rows], pad_id)
            mask = batch["attention_mask"].bool()
            with capture(record_qkv="qkv" in maps) as rec:
                out = teacher(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True)
            pos = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in batch_rows])
            m = mask.to(device)
            if "hidden" in maps:
                hs = torch.stack(out.hidden_states, dim=2)[m]  # (tokens, layers + 1, h)
                maps["hidden"][pos] = hs.to(torch.float16).cpu().numpy()
            if "qkv" in maps:
                qkv = torch.stack([torch.stack(rec.qkv[i], dim=2) for i in range(layers)], dim=2)[m]
                maps["qkv"][pos] = qkv.to(torch.float16).cpu().numpy()
            if has_logits:
                maps["logits"][np.asarray(batch_rows)] = out.logits.float().cpu().numpy()
    for mm in maps.values():
        mm.flush()
    del maps
    offsets.tofile(folder / "offsets.i64")
    names = {"hidden": "hidden.f16", "qkv": "qkv.f16", "logits": "logits.f32"}
    files = {names[f]: None for f in shapes} | {"offsets.i64": None}
    index = {
        "format": FORMAT,
        "fingerprint": key.fingerprint,
        "teacher": key.teacher,
        "data": key.data,
        "max_length": key.max_length,
        "fields": sorted(shapes),
        "shapes": shapes,
        "heads": int(cfg.num_attention_heads),
        "hidden_size": int(width),
        "examples": len(dataset),
        "tokens": tokens,
        "files": {n: {"bytes": (folder / n).stat().st_size, "xxh64": file_xxh(folder / n)} for n in files},
    }
    index["index_xxh64"] = index_digest(index)
    (folder / "index.json").write_text(json.dumps(index, indent=2))


def reopened(path: str | Path, fingerprint: str, rebuild: Callable[[], TeacherCache]) -> TeacherCache:
    """A prepared cache, opened where a trial runs: built there when that node's cache lacks it (a
    cluster's other machines), rebuilt when found damaged (truncated, altered) — under its lock, once
    whatever the number of trials that meet it. A cache rebuilt under another fingerprint means this
    node's teacher or data differ from the driver's: refused, never used."""
    path = Path(path)
    try:
        return TeacherCache(path, fingerprint)
    except CacheCorrupted as exc:
        if path.exists():
            log.warning("%s; rebuilding it", exc)
        else:
            log.info("%s: not in this node's cache; building it", path)
    cache = rebuild()
    if cache.fingerprint != fingerprint:
        raise UserError(
            f"{path}: remade here as {cache.fingerprint}: this node's teacher or data differ from the "
            "driver's (install the same teacher and data on every node)"
        )
    return cache


def teacher_cache(
    teacher: PreTrainedModel,
    teacher_id: str,
    dataset: Dataset,
    max_length: int,
    fields: Sequence[str],
    cache_root: str | Path,
    batch_size: int = 64,
    pad_id: int = 0,
) -> TeacherCache:
    """Open the cache of ``teacher`` on ``dataset`` for ``fields``, building it first when needed.

    A cache that fails verification is removed and rebuilt. ``dataset`` holds tokenized rows
    (``input_ids``, ``token_type_ids``, ``length``); row i of the dataset is example i of the cache.
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise UserError(f"teacher cache: unknown fields {sorted(unknown)}; known: {', '.join(FIELDS)}")
    if "logits" in fields and not hasattr(teacher, "classifier"):
        fields = [f for f in fields if f != "logits"]
    key = CacheKey(teacher_id, data_digest(dataset), max_length, tuple(sorted(set(fields))))
    path = Path(cache_root) / "teacher-outputs" / key.fingerprint
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                return TeacherCache(path, key.fingerprint)
            except CacheCorrupted as exc:
                log.warning("rebuilding the teacher-output cache: %s", exc)
                shutil.rmtree(path)
        log.info(
            "caching teacher outputs (%s) for %d examples in %s", ",".join(key.fields), len(dataset), path
        )
        with atomic_dir(path) as tmp:
            _write(teacher, dataset, key, tmp, batch_size, pad_id)
        added(path)
        return TeacherCache(path, key.fingerprint)
