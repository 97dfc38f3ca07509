"""Kill tests: a process killed (SIGKILL) at an injected point — replacing a folder, writing a teacher-output
cache, saving a checkpoint — leaves the old copy or the new one, never neither, and the next run ends with
the same result as an uninterrupted one. Only the killed runs take a process of their own."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import VOCAB

from distilnas.distill import utils
from distilnas.distill.utils import atomic_dir, remove_stale


def swap(target: str, value: str) -> None:
    with atomic_dir(Path(target)) as tmp:
        (tmp / "v").write_text(value)


def cache(root: str) -> None:
    """A tiny teacher's hidden states and Q/K/V on 64 sentences, cached under ``root``."""
    import torch
    from transformers import BertConfig, BertModel

    from distilnas.distill.data import tokenize_texts
    from distilnas.distill.teacher import wordpiece_tokenizer
    from distilnas.distill.teacher_cache import teacher_cache

    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    teacher = BertModel(BertConfig(**shape)).eval()
    texts = [f"sentence number {i} of the kill test, with some words" for i in range(64)]
    data = tokenize_texts(texts, wordpiece_tokenizer(VOCAB), 24)
    teacher_cache(teacher, "kill", data, 24, ["hidden", "qkv"], Path(root), batch_size=8)


def checkpoint(folder: str, weights: str) -> None:
    """Six steps of distillation checkpointed every two, resumed from ``folder``; the weights saved."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    from distilnas.distill.config import DistillSettings
    from distilnas.distill.data import tokenize_texts
    from distilnas.distill.distiller import Distiller, LiveTeacher
    from distilnas.distill.teacher import wordpiece_tokenizer

    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    teacher = BertModel(BertConfig(**shape)).eval()
    torch.manual_seed(1)
    small = {**shape, "hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32}
    student = BertModel(BertConfig(**small))
    texts = [f"sentence number {i} of the kill test, with some words" for i in range(64)]
    data = tokenize_texts(texts, wordpiece_tokenizer(VOCAB), 24)
    settings = DistillSettings(losses={"hidden_mse": 1.0}, steps=6, batch_size=8, checkpoint_every=2)
    Distiller(student, LiveTeacher(teacher), [(0, 0), (1, 2)], settings).fit(data, Path(folder))
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, weights)


def killed(run: Callable[..., None], *args: object, at: str, exchange: bool = True) -> None:
    """Run ``run(*args)`` in a process of its own that kills itself (SIGKILL) at the point ``at``."""
    here = Path(__file__).parent
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        DISTILNAS_KILL_AT=at,
        DISTILNAS_RENAME_EXCHANGE="1" if exchange else "0",
        PYTHONPATH=os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")]),
    )
    code = f"import {Path(__file__).stem} as t; t.{run.__name__}(*{[str(a) for a in args]!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-3000:]  # it reached the point and was killed there


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("verified.json", ".last-used")
    }


def test_a_folder_killed_while_it_is_replaced_keeps_its_old_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x"
    swap(str(target), "1")
    killed(swap, target, "2", at="replace")  # the new copy complete, not yet in place
    assert (target / "v").read_text() == "1" and list(tmp_path.glob(".x.*.tmp"))
    swap(str(target), "3")  # the next writer removes the killed one's leftovers
    assert (target / "v").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    # without an atomic swap: killed with the old copy moved aside and the new one not yet in its place
    killed(swap, target, "4", at="replace-aside", exchange=False)
    assert not target.exists() and list(tmp_path.glob(".x.old-*"))
    remove_stale(target)  # what the next writer does first: the old copy is put back
    assert (target / "v").read_text() == "3"
    monkeypatch.setattr(utils, "EXCHANGE", False)
    swap(str(target), "5")
    assert (target / "v").read_text() == "5" and sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_a_cache_killed_while_it_is_written_is_built_again_the_same(tmp_path: Path) -> None:
    cache(str(tmp_path / "whole"))
    (whole,) = [p for p in (tmp_path / "whole" / "teacher-outputs").iterdir() if p.is_dir()]
    killed(cache, tmp_path / "killed", at="cache-write")
    outputs = tmp_path / "killed" / "teacher-outputs"
    assert not [p for p in outputs.iterdir() if not p.name.startswith(".") and p.is_dir()]  # none to trust
    cache(str(tmp_path / "killed"))
    (rebuilt,) = [p for p in outputs.iterdir() if p.is_dir()]  # the killed writer's copy removed
    assert rebuilt.name == whole.name and digests(rebuilt) == digests(whole)


def test_a_checkpoint_killed_while_it_is_replaced_resumes_to_the_same_weights(tmp_path: Path) -> None:
    checkpoint(str(tmp_path / "a"), str(tmp_path / "a.safetensors"))
    # killed at the second save: step 4's checkpoint complete but not in place, step 2's still there
    killed(checkpoint, tmp_path / "b", tmp_path / "b.safetensors", at="replace:2")
    assert (tmp_path / "b" / "state.json").is_file() and not (tmp_path / "b.safetensors").exists()
    checkpoint(str(tmp_path / "b"), str(tmp_path / "b.safetensors"))
    same = [hashlib.sha256((tmp_path / f"{n}.safetensors").read_bytes()).digest() for n in "ab"]
    assert same[0] == same[1]
