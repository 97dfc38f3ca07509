"""Small shared helpers: atomic writes, fingerprints, seeding, devices."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from distilnas.distill.errors import DataError


def fingerprint(*parts: Any, length: int = 16) -> str:
    """A stable short hash of JSON-serialisable parts (dict keys sorted), for cache keys and names."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_digest(path: str | Path, length: int = 16) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """A text file's content; a file that is not UTF-8 is a one-line error naming it and the byte."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = read_umask()
"""Files and folders are made with the modes the user's umask gives (temporary names are private)."""
TEMP_TAG = f"{socket.gethostname()}-{os.getpid()}"
"""Marks this process's temporary files and folders, so a dead process's can be told and removed."""


_REACHED: dict[str, int] = {}


def kill_point(name: str) -> None:
    """Fault injection for the kill tests: with ``DISTILNAS_KILL_AT=name`` (or ``name:n``) set, the process
    kills itself with SIGKILL the first (or n-th) time it reaches this point. Unset, it costs a lookup."""
    wanted = os.environ.get("DISTILNAS_KILL_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point == name:
        _REACHED[name] = _REACHED.get(name, 0) + 1
        if _REACHED[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (folders: their listing, so a rename is durable)."""
    with contextlib.suppress(OSError):  # not every platform syncs a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` (before it is renamed into place)."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


def _alive(tag: str) -> bool:
    host, _, pid = tag.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's (a shared folder): not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary copy :func:`atomic_dir` or :func:`atomic_write_text` makes (a
    writer's at work, or a killed one's that the next writer removes): never a result of its own."""
    return path.name.startswith(".") and (path.name.endswith(".tmp") or ".old-" in path.name)


def remove_stale(path: Path) -> None:
    """Remove the temporary copies of ``path`` that killed processes of this machine left behind, and
    finish a replacement a kill interrupted (the old copy put back when no new one took its place)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        tag = stale.name[len(path.name) + 2 :].split(".", 1)[0]
        if not _alive(tag):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    for old in path.parent.glob(f".{glob.escape(path.name)}.old-*"):
        if not _alive(old.name.rsplit(".old-", 1)[1]):
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, path)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system
    or its file system cannot."""
    renameat2 = getattr(_LIBC, "renameat2", None) if _LIBC is not None else None
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
EXCHANGE = os.environ.get("DISTILNAS_RENAME_EXCHANGE", "1") != "0"
"""Swap folders in one step where the system can (``DISTILNAS_RENAME_EXCHANGE=0``: never, as on a system
without it; the kill tests use it)."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see either the old content or the whole new one, durably (synced),
    with the modes the umask gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{TEMP_TAG}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it takes ``path``'s place in one atomic step.

    A kill at any point leaves the old folder or the new one, never neither: the new one is synced, then
    swapped with the old in one step where the system can (else the old is moved aside first and put back
    by the next writer if the new one never arrived). On an exception the temporary folder is removed and
    ``path`` is left as it was; temporary folders of killed processes are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{TEMP_TAG}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~UMASK)
    try:
        yield tmp
        fsync_tree(tmp)
        kill_point("replace")
        if path.exists() and EXCHANGE and exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # it holds the old copy now
        elif path.exists():
            old = path.with_name(f".{path.name}.old-{TEMP_TAG}")
            os.replace(path, old)
            kill_point("replace-aside")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: CUDA with bf16, or a CPU with AVX512-BF16
    or AMX (bf16 matmul measured 4x fp32's rate on the AVX512-BF16 CPU here; emulated, it is slower)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def uses_bf16(precision: str, device: torch.device) -> bool:
    """What a ``precision`` setting (``auto``, ``fp32``, ``bf16``) means on ``device``: ``auto`` is bf16
    where the device has it natively."""
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def autocast_context(
    device: torch.device, bf16: bool | None = None
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast (weights and optimizer stay fp32) when ``bf16``; by default on CUDA only, where it is
    fast and safe for BERT (the distiller chooses with its ``precision`` setting instead)."""
    if bf16 is None:
        bf16 = device.type == "cuda" and native_bf16(device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of returning it to the system (for this process).

    glibc hands every buffer over its mmap threshold straight back to the kernel when freed, so a training
    step's large buffers (the word-embedding table's gradient: 47 MB at 4L-384) are page-faulted in anew
    at every step: 13 ms of a 1.5 ms embedding backward here. Kept in the heap (``M_MMAP_MAX`` 0,
    ``M_TRIM_THRESHOLD`` at its maximum), they are reused; the process then holds its peak memory until
    it exits. No other C library is changed; returns whether glibc took the settings.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def default_cache_dir() -> Path:
    """Where caches live: $DISTILNAS_CACHE, else ~/.cache/distilnas."""
    env = os.environ.get("DISTILNAS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "distilnas"


def register_student(model_type: str, config: type, encoder: type, classifier: type) -> None:
    """Register a student model type with transformers' Auto classes (config, encoder, classifier), so
    its saved folders load with ``AutoModel`` and ``AutoModelForSequenceClassification``; a second call
    (a reloaded module) changes nothing."""
    try:
        AutoConfig.register(model_type, config)
    except ValueError:  # already registered
        return
    AutoModel.register(config, encoder)
    AutoModelForSequenceClassification.register(config, classifier)
