"""The distiller: trains a student to match a teacher with weighted losses, resumably.

The teacher is a :class:`TeacherSource`: live (the model runs every step) or cached (outputs read from a
:class:`~distilnas.distill.teacher_cache.TeacherCache`, the teacher never runs). Both give the same
:class:`~distilnas.distill.losses.Views`, so a loss cannot tell them apart beyond fp16 rounding.

General (task-agnostic) distillation is one stage on corpus text; task distillation is TinyBERT's two
stages on a GLUE task (intermediate layers, then the prediction layer): :func:`distill_task`.

A checkpoint holds the student, the projections, the optimizer, the scheduler, every RNG state and the
position in the data, so a killed run resumes and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import xxhash
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from distilnas.distill.capture import capture, enable_capture
from distilnas.distill.config import DistillSettings, TaskDistillConfig
from distilnas.distill.data import LengthBucketBatches, PackedRows
from distilnas.distill.dropout import use_fast_dropout
from distilnas.distill.errors import UserError
from distilnas.distill.losses import LOSSES, LossContext, Views, combined, teacher_fields
from distilnas.distill.optim import TableAdamW, adamw, clip_grad_norm
from distilnas.distill.students import kind_of_model
from distilnas.distill.teacher_cache import TeacherCache
from distilnas.distill.utils import (
    atomic_dir,
    autocast_context,
    default_device,
    fingerprint,
    keep_freed_memory,
    seed_everything,
    uses_bf16,
)

log = logging.getLogger(__name__)


class TeacherSource(Protocol):
    """Where a step gets the teacher's outputs."""

    heads: int
    hidden_size: int
    identity: str
    """What the teacher is (its weights; for a cache, also the data and settings it was made on): a
    checkpoint of another teacher is never resumed."""

    def views(
        self, rows: list[int], batch: dict[str, torch.Tensor], hidden: list[int], qkv: list[int]
    ) -> Views: ...


TEACHER_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
"""What the teacher reads of a batch (a referenced student's ``reference_ids`` are the student's alone)."""


class LiveTeacher:
    """Runs the teacher model on every batch (no cache)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = enable_capture(model.to(default_device()).eval())  # type: ignore[arg-type]
        self.heads = int(model.config.num_attention_heads)
        self.hidden_size = int(model.config.hidden_size)
        self.identity = f"live:{weights_digest(model)}"
        self._bf16_linears: PreTrainedModel | None = None

    def _runnable(self) -> PreTrainedModel:
        """The model to run: under bf16 autocast, a copy whose linear layers are in bf16 already. Autocast
        would cast their fp32 weights to the same values (bit for bit) at every call; a teacher never
        changes, so they are cast once (its forward is 1.2-1.3x faster on CPU). The rest (embeddings,
        layer norms) stays fp32, as autocast runs it."""
        device = self.model.device.type
        if not torch.is_autocast_enabled(device) or torch.get_autocast_dtype(device) != torch.bfloat16:
            return self.model
        if self._bf16_linears is None:
            model = self._bf16_linears = copy.deepcopy(self.model)
            table = model.get_input_embeddings().weight  # a head tied to it stays fp32, as the lookup
            for module in model.modules():
                if isinstance(module, nn.Linear) and module.weight is not table:
                    module.to(torch.bfloat16)
        return self._bf16_linears

    @torch.no_grad()
    def views(
        self, rows: list[int], batch: dict[str, torch.Tensor], hidden: list[int], qkv: list[int]
    ) -> Views:
        inputs = {k: v for k, v in batch.items() if k in TEACHER_INPUTS}
        with capture(record_qkv=bool(qkv)) as rec:
            out = self._runnable()(**inputs, output_hidden_states=True)
        return Views(
            hidden={i: out.hidden_states[i].float() for i in hidden},
            qkv={i: tuple(x.float() for x in rec.qkv[i - 1]) for i in qkv},  # type: ignore[misc]
            logits=getattr(out, "logits", None),
            heads=self.heads,
        )


class CachedTeacher:
    """Reads the teacher's outputs from a cache; the teacher model is not needed at all."""

    def __init__(self, cache: TeacherCache) -> None:
        self.cache = cache
        self.heads = cache.heads
        self.hidden_size = cache.hidden_size
        self.identity = f"cache:{cache.fingerprint}"

    def views(
        self, rows: list[int], batch: dict[str, torch.Tensor], hidden: list[int], qkv: list[int]
    ) -> Views:
        device = batch["input_ids"].device
        return self.cache.views(rows, batch["input_ids"].shape[1], hidden, qkv, device=device)


def weights_digest(model: nn.Module) -> str:
    """xxhash64 of every tensor of the model, in name order (what its weights are)."""
    h = xxhash.xxh64()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rows_digest(packed: PackedRows) -> str:
    """xxhash64 of the rows a run trains on (ids, segments, lengths, references): its data's identity."""
    h = xxhash.xxh64()
    for part in (packed.lengths, packed.ids, packed.types, packed.references):
        h.update(b"|" if part is None else np.ascontiguousarray(part).tobytes())
    return h.hexdigest()


@dataclass
class DistillResult:
    steps: int
    loss: float
    parts: dict[str, float]
    seconds: float
    resumed_from: int


def student_views(student: PreTrainedModel, batch: dict[str, torch.Tensor], need_qkv: bool) -> Views:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with capture(record_qkv=need_qkv) as rec:
        out = student(**inputs, output_hidden_states=True)
    return Views(
        hidden={i: h.float() for i, h in enumerate(out.hidden_states)},  # losses run in fp32 under autocast
        qkv={i + 1: v for i, v in rec.qkv.items()},
        logits=getattr(out, "logits", None),
        heads=int(student.config.num_attention_heads),
    )


class Distiller:
    """One distillation stage of ``student`` against ``teacher`` over the layer ``pairs``."""

    def __init__(
        self,
        student: PreTrainedModel,
        teacher: TeacherSource,
        pairs: list[tuple[int, int]],
        settings: DistillSettings,
        regression: bool = False,
        projections: nn.ModuleDict | None = None,
    ) -> None:
        self.device = default_device()
        keep_freed_memory()  # a step's large buffers are reused, not page-faulted in anew
        self.student = enable_capture(use_fast_dropout(student.to(self.device)))  # type: ignore[arg-type]
        self.teacher = teacher
        self.settings = settings
        self.regression = regression
        self.bf16 = uses_bf16(settings.precision, self.device)
        self.pairs = list(pairs)
        self.weights = {k: v for k, v in settings.losses.items() if v}
        hs = int(student.config.hidden_size)
        self._check(hs)
        self._embedding_gradient()
        torch.manual_seed(settings.seed)
        needs_projection = any(LOSSES[k].projects_hidden for k in self.weights)
        self.projections = projections if projections is not None else nn.ModuleDict()
        if needs_projection and hs != teacher.hidden_size:
            for s, _ in self.pairs:
                if f"s{s}" not in self.projections:
                    self.projections[f"s{s}"] = nn.Linear(hs, teacher.hidden_size)
        self.projections.to(self.device)
        fields = teacher_fields(self.weights)
        uses_layers = any(LOSSES[k].needs & {"hidden", "qkv"} for k in self.weights)
        layer_pairs = [(s, t) for s, t in self.pairs if s > 0] if uses_layers else []
        self.hidden_layers = sorted({t for _, t in self.pairs}) if "hidden" in fields else []
        self.qkv_layers = sorted({t for _, t in layer_pairs}) if "qkv" in fields else []
        self.needs_logits = "logits" in fields

    def _check(self, hs: int) -> None:
        s = self.settings
        kind_of_model(self.student).check_losses(self.weights, self.pairs)
        if "minilm_relation" in self.weights and (
            hs % s.relation_heads or self.teacher.hidden_size % s.relation_heads
        ):
            raise UserError(
                f"relation_heads {s.relation_heads} must divide the student's ({hs}) and the teacher's "
                f"({self.teacher.hidden_size}) hidden sizes"
            )
        if "attention_mse" in self.weights and self.student.config.num_attention_heads != self.teacher.heads:
            raise UserError(
                f"attention_mse needs equal head counts (student {self.student.config.num_attention_heads}, "
                f"teacher {self.teacher.heads}); use minilm_relation"
            )

    def _embedding_gradient(self) -> None:
        """A sparse word-embedding gradient where :class:`TableAdamW` updates the table by rows: always
        for ``embedding_updates: rows``; for ``dense`` (the same update as a dense gradient's) on CPU,
        where it saves passes over the table. On a GPU, where a step is bound by kernel launches, not by
        memory, the dense gradient keeps its fewer kernels (not measured there yet). A student trained
        before in another mode takes this run's."""
        table = self.student.get_input_embeddings()
        rows = self.settings.embedding_updates == "rows"
        if type(table) is nn.Embedding:
            table.sparse = rows or self.device.type == "cpu"
        elif rows:
            raise UserError(
                f"embedding_updates: rows needs a plain word-embedding table; this student's is a "
                f"{type(table).__name__} (use dense)"
            )

    # ------------------------------------------------------------------ one batch

    def context(self, rows: list[int], batch: dict[str, torch.Tensor]) -> LossContext:
        """Both models' views of a batch, ready for the losses.

        The student runs on the batch as padded; the losses see only the real width (the longest row),
        which changes no value, since padding never counts, but spares work under fixed-length padding.
        """
        batch = {k: v.to(self.device) for k, v in batch.items()}
        mask = batch["attention_mask"].bool()
        width = int(mask.sum(1).max())
        real = {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}
        with autocast_context(self.device, self.bf16):  # a live teacher runs in the student's precision
            teacher = self.teacher.views(rows, real, self.hidden_layers, self.qkv_layers)
            student = student_views(self.student, batch, bool(self.qkv_layers)).trimmed(width)
        return LossContext(
            student=student,
            teacher=teacher,
            pairs=self.pairs,
            mask=mask[:, :width],
            projections=self.projections,
            labels=batch.get("labels"),
            temperature=self.settings.temperature,
            relation_heads=self.settings.relation_heads,
            regression=self.regression,
        )

    def loss(self, rows: list[int], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return combined(self.weights, self.context(rows, batch))

    # ------------------------------------------------------------------ training

    @property
    def parameters(self) -> list[nn.Parameter]:
        """What is trained: the student and the projections."""
        return [*self.student.parameters(), *self.projections.parameters()]

    def optimizer(self) -> torch.optim.Optimizer:
        s = self.settings
        table = self.student.get_input_embeddings()
        if getattr(table, "sparse", False):
            return TableAdamW(self.parameters, s.lr, s.weight_decay, lazy=s.embedding_updates == "rows")
        return adamw(self.parameters, s.lr, s.weight_decay)

    def train_step(
        self,
        rows: list[int],
        batch: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> tuple[float, dict[str, float]]:
        """One optimizer step on one batch (loss, backward, clipping, update): the loss and its parts."""
        loss, parts = self.loss(rows, batch)
        loss.backward()
        clip_grad_norm(self.parameters, self.settings.max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), parts

    def fit(
        self,
        data: Dataset,
        checkpoint_dir: str | Path | None = None,
        pad_id: int = 0,
        stop_after: int | None = None,
        desc: str = "distil",
        restart_foreign: bool = False,
    ) -> DistillResult:
        """Train over ``data`` (tokenized rows; row i is example i of a cached teacher).

        With ``checkpoint_dir``, resumes from its checkpoint when one exists: one of another run (other
        settings, data, teacher or student) is refused, or with ``restart_foreign`` replaced by a fresh
        start. ``stop_after`` ends the run early after that many steps (as a kill would, but cleanly) — for
        tests of resuming.
        """
        s = self.settings
        packed = PackedRows(data)
        sampler = LengthBucketBatches(packed.lengths, s.batch_size, shuffle=True, seed=s.seed)
        per_epoch = len(sampler)
        total = s.steps or max(1, math.ceil(s.epochs * per_epoch))
        self._embedding_gradient()  # again: a fit before on this student left the table dense
        optimizer = self.optimizer()
        scheduler = get_linear_schedule_with_warmup(optimizer, int(s.warmup_ratio * total), total)
        seed_everything(s.seed)
        step = 0
        ckpt = Checkpoint(Path(checkpoint_dir), self.run_key(packed)) if checkpoint_dir else None
        running = float("nan")
        parts: dict[str, float] = {}
        if ckpt is not None and ckpt.exists():
            if restart_foreign and not ckpt.matches():
                log.info("%s: the checkpoint in %s is of other inputs; starting afresh", desc, ckpt.folder)
                ckpt.discard()
            else:
                step, running, parts = ckpt.load(self.student, self.projections, optimizer, scheduler)
                log.info("resumed %s at step %d of %d", desc, step, total)
        resumed_from = step
        self.student.train()
        start = time.perf_counter()
        bar = tqdm(total=total, initial=step, desc=desc, unit="step")
        end = min(total, stop_after) if stop_after is not None else total
        epoch, skip = divmod(step, per_epoch)
        while step < end:
            sampler.set_epoch(epoch)
            for rows in itertools.islice(sampler, skip, None):
                value, parts = self.train_step(
                    rows, packed.batch(rows, pad_id, s.pad_to), optimizer, scheduler
                )
                step += 1
                running = value if math.isnan(running) else 0.98 * running + 0.02 * value
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}")
                periodic = s.checkpoint_every and step % s.checkpoint_every == 0
                if ckpt is not None and (step == total or periodic):
                    ckpt.save(step, self.student, self.projections, optimizer, scheduler, running, parts)
                if step >= end:
                    break
            skip = 0
            epoch += 1
        bar.close()
        self.student.eval()
        self._dense_table()
        return DistillResult(step, running, parts, time.perf_counter() - start, resumed_from)

    def _dense_table(self) -> None:
        """The student leaves :meth:`fit` with a dense word-embedding gradient, as transformers builds
        it: another trainer of it (fine-tuning with torch's AdamW) takes no sparse gradient."""
        table = self.student.get_input_embeddings()
        if type(table) is nn.Embedding:
            table.sparse = False

    def run_key(self, data: Dataset | PackedRows) -> str:
        """What a checkpoint must match to be resumed: the settings, the pairs, the rows trained on, the
        teacher (and its cache), the student's shape and kind, and the precision ``auto`` chose here."""
        packed = data if isinstance(data, PackedRows) else PackedRows(data)
        cfg = self.student.config
        shape: tuple[int, ...] = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads)
        if hasattr(cfg, "intermediate_size"):  # a NAS-BERT student has its path instead
            shape += (cfg.intermediate_size,)
        options = kind_of_model(self.student).checkpoint_options(cfg)
        return fingerprint(
            self.settings.model_dump(),
            self.pairs,
            rows_digest(packed),
            self.teacher.identity,
            shape,
            options,
            "bf16" if self.bf16 else "fp32",
        )


class Checkpoint:
    """A resumable training state in one folder, replaced atomically at every save."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.key = key

    def exists(self) -> bool:
        return (self.folder / "state.json").is_file()

    def matches(self) -> bool:
        return bool(json.loads((self.folder / "state.json").read_text()).get("key") == self.key)

    def discard(self) -> None:
        shutil.rmtree(self.folder)

    def save(
        self,
        step: int,
        student: nn.Module,
        projections: nn.ModuleDict,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loss: float = float("nan"),
        parts: dict[str, float] | None = None,
    ) -> None:
        with atomic_dir(self.folder) as tmp:
            tensors = {f"student.{k}": v.contiguous() for k, v in student.state_dict().items()}
            tensors |= {f"projections.{k}": v.contiguous() for k, v in projections.state_dict().items()}
            save_file(_untie(tensors), str(tmp / "weights.safetensors"))
            torch.save(
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                },
                tmp / "optimizer.pt",
            )
            np_state: Any = np.random.get_state()
            state = {
                "key": self.key,
                "step": step,
                "loss": None if math.isnan(loss) else loss,  # what a run resumed at its end reports
                "parts": parts or {},
                "python_rng": _jsonable(random.getstate()),
                "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            }
            (tmp / "state.json").write_text(json.dumps(state))

    def load(
        self,
        student: nn.Module,
        projections: nn.ModuleDict,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> tuple[int, float, dict[str, float]]:
        """Restore the training state; returns the step, the running loss and its parts at that step."""
        state = json.loads((self.folder / "state.json").read_text())
        if state["key"] != self.key:
            raise UserError(
                f"{self.folder}: checkpoint of another run (different settings, data or student); "
                "remove it or choose another folder"
            )
        tensors = load_file(str(self.folder / "weights.safetensors"))
        student.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("student.")})
        projections.load_state_dict({k[12:]: v for k, v in tensors.items() if k.startswith("projections.")})
        rest = torch.load(self.folder / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(rest["optimizer"])
        scheduler.load_state_dict(rest["scheduler"])
        torch.set_rng_state(rest["torch_rng"])
        if rest["cuda_rng"]:
            torch.cuda.set_rng_state_all(rest["cuda_rng"])
        random.setstate(_tupled(state["python_rng"]))  # type: ignore[arg-type]
        np_state = state["numpy_rng"]
        np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
        loss = state.get("loss")
        return int(state["step"]), float("nan") if loss is None else float(loss), dict(state.get("parts", {}))


def _untie(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied weights): give each entry its own copy."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _jsonable(x: object) -> object:
    return [_jsonable(v) for v in x] if isinstance(x, tuple | list) else x


def _tupled(x: object) -> object:
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------------- task distillation


def distill_task(
    student: PreTrainedModel,
    teacher: TeacherSource,
    data: Dataset,
    pairs: list[tuple[int, int]],
    config: TaskDistillConfig,
    regression: bool = False,
    checkpoint_dir: str | Path | None = None,
    pad_id: int = 0,
    restart_foreign: bool = False,
) -> dict[str, DistillResult]:
    """TinyBERT's task distillation: intermediate-layer stage, then prediction-layer stage."""
    folder = Path(checkpoint_dir) if checkpoint_dir else None
    first = Distiller(student, teacher, pairs, config.intermediate, regression)
    r1 = first.fit(
        data,
        folder / "intermediate" if folder else None,
        pad_id,
        desc="distil: layers",
        restart_foreign=restart_foreign,
    )
    second = Distiller(student, teacher, pairs, config.prediction, regression, projections=first.projections)
    r2 = second.fit(
        data,
        folder / "prediction" if folder else None,
        pad_id,
        desc="distil: prediction",
        restart_foreign=restart_foreign,
    )
    return {"intermediate": r1, "prediction": r2}
