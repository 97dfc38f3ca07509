"""``distilnas inspect STUDENT.yaml``: the size, FLOPs and (with ``--measure``) latency of any student,
built from a short file without training or downloading anything but the teacher's config:

```yaml
teacher: minilm-l6              # the vocabulary, positions and widths come from it
student: {layers: 2, hidden: 96}                 # a BERT student (the fields of distill.student)
# student: {layers: 6, kronecker: {attention: {a: [192, 192], b: [2, 2]}}}    # Kronecker-factored
# student: {layers: 2, hidden: 96, references: {tokens: 32}}                     # referenced (RefBERT)
# nas: {path: "128:mha,ffn,id,id|192:conv3,id,id,id|128:ffn,ffn,id,id"}       # a supernet path
#      (blocks follow the path; the file may also set hidden_sizes and operations)
```

or a saved student's folder (``distilnas distill``'s ``models/<task>``, an export's task folder): its
real weights, and for a referenced student its reference store, whose retrieval time is measured on the
store's own texts and added to the forward pass's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from transformers import AutoConfig, AutoModel

from distilnas.distill.config import Strict, StudentConfig, describe
from distilnas.distill.errors import ConfigError, UserError
from distilnas.distill.measure import count_flops, count_parameters, measure_latency, retrieval_latency
from distilnas.distill.nas_bert import DEPLOYED, NasBertModel
from distilnas.distill.students import kind_of_model, student_spec
from distilnas.distill.teacher import load_pretrained, model_config, resolve
from distilnas.search.config import parse_config, read_yaml
from distilnas.spaces.nas_space import OPERATIONS, NasSpace
from distilnas.spaces.supernet import nas_config


class NasStudent(Strict):
    path: str
    """Block by block, ``SIZE:op,op,...`` joined by ``|``."""
    hidden_sizes: list[int] | None = None
    """The space's sizes (default: the sizes the path uses)."""
    operations: list[str] | None = None


class StudentFile(Strict):
    teacher: str = "minilm-l6"
    student: StudentConfig | None = None
    nas: NasStudent | None = None


def load_student_file(path: Path) -> StudentFile:
    """A student file, or a run config (its teacher and ``distill.student``)."""
    data = read_yaml(path) or {}
    if isinstance(data, dict) and ("distill" in data or isinstance(data.get("teacher"), dict)):
        cfg = parse_config(data, str(path))
        return StudentFile(teacher=cfg.teacher.name, student=cfg.distill.student)
    try:
        parsed = StudentFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc)}") from None
    if (parsed.student is None) == (parsed.nas is None):
        raise ConfigError(
            f"{path}: give exactly one of `student` (a BERT student) and `nas` (a supernet path)"
        )
    return parsed


def build(spec: StudentFile) -> tuple[torch.nn.Module, str]:
    """The student with random weights (sizes and speed do not depend on them), and what it is."""
    tcfg = model_config(resolve(spec.teacher))
    if spec.student is not None:
        sspec = student_spec(spec.student, tcfg)
        return sspec.kind.random_encoder(sspec, tcfg), f"{sspec.kind.label} {sspec.name}"
    assert spec.nas is not None
    used = {b.split(":")[0].strip() for b in spec.nas.path.split("|")}
    sizes = spec.nas.hidden_sizes or sorted(int(h) for h in used if h.isdigit())
    blocks = spec.nas.path.count("|") + 1
    try:
        space = NasSpace(
            int(tcfg.num_hidden_layers),
            int(tcfg.hidden_size),
            blocks,
            tuple(sizes),
            tuple(spec.nas.operations or OPERATIONS),
            vocab_size=int(tcfg.vocab_size),
            max_positions=int(tcfg.max_position_embeddings),
            type_vocab=int(tcfg.type_vocab_size),
        )
        path = space.parse(spec.nas.path)
    except UserError as exc:
        raise UserError(f"nas.{exc}") from None
    model = NasBertModel(nas_config(space, path, form=DEPLOYED))
    assert count_parameters(model) == space.params(path)
    return model, f"supernet path {NasSpace.format(path)}"


def load_saved(folder: Path) -> tuple[torch.nn.Module, str]:
    """A saved student's encoder (a referenced one with its store) and what it is."""
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a saved student (no config.json)")
    cfg = AutoConfig.from_pretrained(folder)
    kind = kind_of_model(cfg, strict=True)
    model = kind.deployed(load_pretrained(AutoModel, str(folder)))
    return model, f"{kind.label} {kind.saved_size(cfg, folder)} ({folder})"


def inspect(
    spec: StudentFile | Path,
    measure: bool,
    batch_size: int = 1,
    seq_len: int = 128,
    repeats: int = 30,
) -> dict[str, Any]:
    """Parameters, FLOPs and latency of a student described by a file, or saved in a folder."""
    model, kind = load_saved(spec) if isinstance(spec, Path) else build(spec)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if positions is not None and seq_len > int(positions):
        raise UserError(f"--seq-len {seq_len}: the student has {positions} positions")
    model.eval()
    embeddings = model.get_input_embeddings()  # type: ignore[operator]
    out: dict[str, Any] = {
        "student": kind,
        "teacher": spec.teacher if isinstance(spec, StudentFile) else None,
        "parameters": count_parameters(model),
        "embedding_parameters": count_parameters(embeddings),
        "flops": count_flops(model, batch_size, seq_len),
        "batch_size": batch_size,
        "seq_len": seq_len,
    }
    store = getattr(model, "store", None)
    stored = kind_of_model(model).stored_per_example(model.config)  # type: ignore[arg-type]
    if stored is not None:
        out["reference_store"] = {
            **stored,
            **({"examples": store.examples, "values": store.values, "bytes": store.bytes} if store else {}),
        }
    if measure:
        out["latency"] = measure_latency(model, batch_size, seq_len, repeats=repeats).as_dict()
        if store is not None:
            queries = store.index.texts[: max(repeats, 50)]
            out["retrieval"] = retrieval_latency(store.lookup, queries)
            out["latency_with_retrieval_ms"] = out["latency"]["ms"] + batch_size * out["retrieval"]["ms"]
    return out
