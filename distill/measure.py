"""Measurement: latency on the serving device (warm-up, trimmed mean), parameter count, forward FLOPs."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from distilnas.distill.config import LatencyConfig
from distilnas.distill.utils import default_device


@dataclass(frozen=True)
class Latency:
    """A latency measurement and the settings it was taken under (they travel with every figure)."""

    ms: float
    """Trimmed mean (the fastest and slowest ``trim`` fraction dropped), milliseconds per forward pass."""
    median_ms: float
    std_ms: float
    batch_size: int
    seq_len: int
    warmup: int
    repeats: int
    trim: float
    threads: int
    device: str
    dtype: str

    def as_dict(self) -> dict:
        return asdict(self)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}"


def dummy_inputs(
    model: nn.Module, batch_size: int, seq_len: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Full-length random token ids (no padding), seeded so every measurement sees the same input."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 30522))
    g = torch.Generator().manual_seed(0)
    low = 1000 if vocab > 2000 else 1  # skip BERT's special and unused tokens when the vocabulary has them
    ids = torch.randint(low, vocab, (batch_size, seq_len), generator=g)
    inputs = {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "token_type_ids": torch.zeros_like(ids).to(device),
    }
    extra = getattr(model, "measurement_inputs", None)
    if callable(extra):  # inputs a model needs besides tokens (a referenced student's full reference)
        inputs |= {k: v.to(device) for k, v in extra(batch_size, g).items()}
    return inputs


def trimmed_mean(values: list[float], trim: float) -> float:
    """Mean after dropping the lowest and highest ``trim`` fraction (at least one value is kept)."""
    xs = sorted(values)
    k = int(len(xs) * trim)
    kept = xs[k : len(xs) - k] or xs
    return float(np.mean(kept))


def serving_device(latency: LatencyConfig) -> torch.device:
    """Where ``latency``'s setting times models: its ``device``, else CUDA when present, else the CPU."""
    return torch.device(latency.device) if latency.device else default_device()


def stopwatch(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A timer of one call in milliseconds on ``device``: CUDA events around the call on a GPU (the time
    the device spent, launch gaps included, read once the call has finished), else wall time."""
    if device.type != "cuda":

        def wall(call: Callable[[], object]) -> float:
            start = time.perf_counter()
            call()
            return (time.perf_counter() - start) * 1000

        return wall
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def events(call: Callable[[], object]) -> float:
        begin.record()
        call()
        end.record()
        end.synchronize()
        return float(begin.elapsed_time(end))

    return events


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    batch_size: int = 1,
    seq_len: int = 128,
    warmup: int = 10,
    repeats: int = 50,
    trim: float = 0.1,
    device: torch.device | None = None,
) -> Latency:
    """Forward-pass latency of ``model`` at (batch, sequence), in eval mode, on ``device``."""
    device = device or default_device()
    model = model.to(device).eval()
    inputs = dummy_inputs(model, batch_size, seq_len, device)
    clock = stopwatch(device)
    for _ in range(warmup):
        clock(lambda: model(**inputs))
    times = [clock(lambda: model(**inputs)) for _ in range(repeats)]
    return Latency(
        ms=trimmed_mean(times, trim),
        median_ms=statistics.median(times),
        std_ms=statistics.pstdev(times),
        batch_size=batch_size,
        seq_len=seq_len,
        warmup=warmup,
        repeats=repeats,
        trim=trim,
        threads=torch.get_num_threads(),
        device=device_name(device),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
    )


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (None: as they are) inside, and put back after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def round_robin(
    models: Sequence[nn.Module], latency: LatencyConfig, rounds: int = 5, desc: str = "timing"
) -> list[float]:
    """Milliseconds of each model (``final.latency``'s setting): the median over ``rounds`` rounds that
    each time every model once, after a warm-up round that is discarded. A burst or a drift of a shared
    machine falls on all the models alike, where timing one model after another puts it on a few, and
    the median drops the rounds it spoils."""
    times: list[list[float]] = [[] for _ in models]
    device = serving_device(latency)
    with torch_threads(latency.threads):
        for r in tqdm(range(rounds + 1), desc=desc, unit="round"):
            for i, model in enumerate(models):
                ms = measure_latency(
                    model, latency.batch_size, latency.seq_len, repeats=latency.repeats, device=device
                ).ms
                if r:  # round 0 warms every model up
                    times[i].append(ms)
    return [float(statistics.median(t)) for t in times]


def timed(model: nn.Module, latency: LatencyConfig) -> dict[str, Any]:
    """Parameters and latency of ``model`` at the ``final.latency`` setting (its threads, then back)."""
    device = serving_device(latency)
    with torch_threads(latency.threads):
        result = measure_latency(
            model, latency.batch_size, latency.seq_len, repeats=latency.repeats, device=device
        )
    return {"params": count_parameters(model), "latency": result.as_dict()}


def profile(
    model: nn.Module,
    batches: Sequence[int],
    seq_len: int,
    warmup: int = 10,
    repeats: int = 30,
    trim: float = 0.1,
) -> list[dict[str, Any]]:
    """Latency (with its settings) and forward FLOPs of ``model`` at each batch size."""
    return [
        {
            **measure_latency(model, b, seq_len, warmup, repeats, trim).as_dict(),
            "flops": count_flops(model, b, seq_len),
        }
        for b in batches
    ]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of the model (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


@torch.inference_mode()
def count_flops(model: nn.Module, batch_size: int = 1, seq_len: int = 128) -> int:
    """FLOPs of one forward pass (a multiply-add counts 2), counted by torch's FLOP counter on CPU.

    Counted with eager attention: the counter has no formula for the CPU flash-attention kernel, so it
    would miss the attention products.
    """
    was = next(model.parameters()).device
    model = model.to("cpu").eval()
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl is not None and impl != "eager":
        model.set_attn_implementation("eager")  # type: ignore[operator]
    inputs = dummy_inputs(model, batch_size, seq_len, torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(**inputs)
    finally:
        if impl is not None and impl != "eager":
            model.set_attn_implementation(impl)  # type: ignore[operator]
        model.to(was)
    return int(counter.get_total_flops())


def retrieval_latency(
    retrieve: Callable[[str], object], queries: Sequence[str], warmup: int = 5, trim: float = 0.1
) -> dict[str, float]:
    """Milliseconds to retrieve one query's reference (what a referenced student adds before its forward
    pass): trimmed mean and median over ``queries``, one at a time."""
    for q in queries[:warmup]:
        retrieve(q)
    times = []
    for q in queries:
        start = time.perf_counter()
        retrieve(q)
        times.append((time.perf_counter() - start) * 1000)
    return {"ms": trimmed_mean(times, trim), "median_ms": statistics.median(times), "queries": len(times)}
