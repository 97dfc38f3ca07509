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
import yaml
from pydantic import ValidationError

from distilnas.distill.config import Strict, StudentConfig, describe
from distilnas.distill.errors import ConfigError, UserError
from distilnas.distill.measure import count_flops, count_parameters, measure_latency, retrieval_latency


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
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        parsed = StudentFile.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc)}") from None
    if (parsed.student is None) == (parsed.nas is None):
        raise ConfigError(
            f"{path}: give exactly one of `student` (a BERT student) and `nas` (a supernet path)"
        )
    return parsed


def build(spec: StudentFile) -> tuple[torch.nn.Module, str]:
    """The student with random weights (sizes and speed do not depend on them), and what it is."""
    from transformers import BertModel

    from distilnas.distill.config import DistillConfig
    from distilnas.distill.recipes import student_spec
    from distilnas.distill.student import kronecker_student
    from distilnas.distill.student import student_config as bert_config
    from distilnas.distill.teacher import load_config, resolve
    from distilnas.spaces.nas_space import OPERATIONS, NasSpace
    from distilnas.spaces.supernet import student_config

    tcfg = load_config(resolve(spec.teacher))
    if spec.student is not None:
        sspec = student_spec(DistillConfig(student=spec.student), tcfg)
        if sspec.references:
            from distilnas.distill.references import referenced

            refs = sspec.references
            encoder = BertModel(bert_config(sspec, tcfg))
            made = referenced(encoder, int(tcfg.hidden_size), refs["teacher_layer"], refs["tokens"])
            return made, f"referenced {sspec.name}"
        kind = "kronecker" if sspec.kronecker else "bert"
        return kronecker_student(BertModel(bert_config(sspec, tcfg)), sspec), f"{kind} {sspec.name}"
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
    from distilnas.distill.nas_bert import NasBertModel

    model = NasBertModel(student_config(space, path))
    assert count_parameters(model) == space.params(path)
    return model, f"supernet path {NasSpace.format(path)}"


def load_saved(folder: Path) -> tuple[torch.nn.Module, str]:
    """A saved student's encoder (a referenced one with its store) and what it is."""
    from transformers import AutoConfig, AutoModel

    from distilnas.distill import teacher  # noqa: F401  (registers every student's model type)

    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a saved student (no config.json)")
    cfg = AutoConfig.from_pretrained(folder)
    kinds = {
        "bert": "bert",
        "kronecker-bert": "kronecker",
        "nas-bert": "supernet path",
        "referenced-bert": "referenced",
    }
    if cfg.model_type not in kinds:
        raise UserError(f"{folder}: a {cfg.model_type!r} model is not a distilnas student")
    model = AutoModel.from_pretrained(folder)
    size = f"{cfg.num_hidden_layers}L-{cfg.hidden_size}" if cfg.model_type != "nas-bert" else folder.name
    return model, f"{kinds[cfg.model_type]} {size} ({folder})"


def inspect(
    spec: StudentFile | Path,
    measure: bool,
    batch_size: int = 1,
    seq_len: int = 128,
    repeats: int = 30,
) -> dict[str, Any]:
    """Parameters, FLOPs and latency of a student described by a file, or saved in a folder."""
    model, kind = load_saved(spec) if isinstance(spec, Path) else build(spec)
    model.eval()
    embeddings = model.get_input_embeddings()  # type: ignore[operator]
    config: Any = getattr(model, "config", None)
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
    if getattr(config, "model_type", None) == "referenced-bert":
        per_example = int(config.reference_tokens) * int(config.reference_hidden_size)
        out["reference_store"] = {
            "tokens": int(config.reference_tokens),
            "teacher_layer": int(config.reference_layer),
            "values_per_example": per_example,
            "bytes_per_example": 2 * per_example,  # fp16
            **({"examples": store.examples, "values": store.values, "bytes": store.bytes} if store else {}),
        }
    if measure:
        out["latency"] = measure_latency(model, batch_size, seq_len, repeats=repeats).as_dict()
        if store is not None:
            queries = store.index.texts[: max(repeats, 50)]
            out["retrieval"] = retrieval_latency(store.lookup, queries)
            out["latency_with_retrieval_ms"] = out["latency"]["ms"] + batch_size * out["retrieval"]["ms"]
    return out
