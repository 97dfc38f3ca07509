"""Kill tests: a process killed (SIGKILL) at an injected point — replacing a folder, writing a teacher-output
cache, saving a checkpoint — leaves the old copy or the new one, never neither, and the next run ends with
the same result as an uninterrupted one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from helpers import VOCAB

SWAP = """
import sys
from pathlib import Path
from distilnas.distill.utils import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "v").write_text(sys.argv[2])
"""

CACHE = """
import sys
from pathlib import Path
import torch
from transformers import BertConfig, BertModel
from distilnas.distill.data import tokenize_texts
from distilnas.distill.teacher import wordpiece_tokenizer
from distilnas.distill.teacher_cache import teacher_cache
torch.manual_seed(0)
shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
teacher = BertModel(BertConfig(**shape)).eval()
texts = [f"sentence number {i} of the kill test, with some words" for i in range(64)]
data = tokenize_texts(texts, wordpiece_tokenizer(sys.argv[2]), 24)
cache = teacher_cache(teacher, "kill", data, 24, ["hidden", "qkv"], Path(sys.argv[1]), batch_size=8)
print(cache.path)
"""

CHECKPOINT = """
import sys
from pathlib import Path
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
data = tokenize_texts(texts, wordpiece_tokenizer(sys.argv[2]), 24)
settings = DistillSettings(losses={"hidden_mse": 1.0}, steps=6, batch_size=8, checkpoint_every=2)
Distiller(student, LiveTeacher(teacher), [(0, 0), (1, 2)], settings).fit(data, Path(sys.argv[1]))
save_file({k: v.contiguous() for k, v in student.state_dict().items()}, sys.argv[3])
"""


def python(script: str, *args: object, kill_at: str | None = None, exchange: bool = True) -> int:
    env = dict(os.environ, HF_HUB_OFFLINE="1", DISTILNAS_RENAME_EXCHANGE="1" if exchange else "0")
    env.pop("DISTILNAS_KILL_AT", None)
    if kill_at:
        env["DISTILNAS_KILL_AT"] = kill_at
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True
    )
    assert proc.returncode in (0, -9), proc.stderr[-3000:]
    return proc.returncode


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("verified.json", ".last-used")
    }


def test_a_folder_killed_while_it_is_replaced_keeps_its_old_copy(tmp_path: Path) -> None:
    target = tmp_path / "x"
    assert python(SWAP, target, "1") == 0
    assert python(SWAP, target, "2", kill_at="replace") == -9  # the new copy complete, not yet in place
    assert (target / "v").read_text() == "1" and list(tmp_path.glob(".x.*.tmp"))
    assert python(SWAP, target, "3") == 0  # the next writer removes the killed one's leftovers
    assert (target / "v").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    # without an atomic swap: killed with the old copy moved aside and the new one not yet in its place
    assert python(SWAP, target, "4", kill_at="replace-aside", exchange=False) == -9
    assert not target.exists() and list(tmp_path.glob(".x.old-*"))
    from distilnas.distill.utils import remove_stale

    remove_stale(target)  # what the next writer does first: the old copy is put back
    assert (target / "v").read_text() == "3"
    assert python(SWAP, target, "5", exchange=False) == 0
    assert (target / "v").read_text() == "5" and sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_a_cache_killed_while_it_is_written_is_built_again_the_same(tmp_path: Path) -> None:
    assert python(CACHE, tmp_path / "whole", VOCAB) == 0
    (whole,) = [p for p in (tmp_path / "whole" / "teacher-outputs").iterdir() if p.is_dir()]
    assert python(CACHE, tmp_path / "killed", VOCAB, kill_at="cache-write") == -9
    outputs = tmp_path / "killed" / "teacher-outputs"
    assert not [
        p for p in outputs.iterdir() if not p.name.startswith(".") and p.is_dir()
    ]  # no cache to trust
    assert python(CACHE, tmp_path / "killed", VOCAB) == 0
    (rebuilt,) = [p for p in outputs.iterdir() if p.is_dir()]  # the killed writer's copy removed
    assert rebuilt.name == whole.name and digests(rebuilt) == digests(whole)


def test_a_checkpoint_killed_while_it_is_replaced_resumes_to_the_same_weights(tmp_path: Path) -> None:
    assert python(CHECKPOINT, tmp_path / "a", VOCAB, tmp_path / "a.safetensors") == 0
    # killed at the second save: step 4's checkpoint complete but not in place, step 2's still there
    assert python(CHECKPOINT, tmp_path / "b", VOCAB, tmp_path / "b.safetensors", kill_at="replace:2") == -9
    assert (tmp_path / "b" / "state.json").is_file()
    assert python(CHECKPOINT, tmp_path / "b", VOCAB, tmp_path / "b.safetensors") == 0
    same = [hashlib.sha256((tmp_path / f"{n}.safetensors").read_bytes()).digest() for n in "ab"]
    assert same[0] == same[1]
