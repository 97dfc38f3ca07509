"""Bad input, as a user gives it: config fields and types, YAML, encodings, data and corpus files, model
folders, paths, command options and run folders. Each one is a single line on stderr naming the field or
the file, exit code 2, no traceback, nothing created, and what an earlier run wrote stays byte for byte."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from helpers import CORPUS, GLUE, Cli, save_tiny_bert

TEACHER_LAYERS, TEACHER_HIDDEN = 2, 32


@dataclass
class World:
    """What a case runs against: a valid config, an earlier finished run, model and data folders."""

    root: Path
    teacher: Path
    config: dict
    earlier: Path

    def write(self, name: str, data: dict | str) -> Path:
        path = self.root / "cases" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return path

    def write_raw(self, name: str, data: bytes) -> Path:
        path = self.root / "cases" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def config_with(self, name: str, **changes: object) -> Path:
        """The valid config with dotted settings changed (``None`` removes one)."""
        data = json.loads(json.dumps(self.config))
        for dotted, value in changes.items():
            node = data
            *parents, last = dotted.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            if value is None:
                node.pop(last, None)
            else:
                node[last] = value
        return self.write(name, data)


def valid_config(root: Path, teacher: Path) -> dict:
    return {
        "teacher": {
            "name": str(teacher),
            "train": {"epochs": 1, "train_limit": 32, "batch_size": 16, "max_length": 32},
        },
        "data": {
            "glue_dir": str(GLUE),
            "cache_dir": str(root / "cache"),
            "corpus": {"files": [str(CORPUS / "wikisplit" / "tune.tsv")]},
        },
        "proxy": {
            "tasks": ["rte"],
            "corpus_fraction": 0.01,
            "train_examples": 32,
            "general_steps": 2,
            "task_steps": 2,
        },
        "distill": {"student": {"layers": 1, "init": "copy"}, "max_length": 32, "corpus_fraction": 0.01},
        "search": {"mapping": {"population": 3, "generations": 1, "tournament": 2, "hall_of_fame": 1}},
        "final": {"tasks": ["rte"], "students": ["uniform"]},
        "output_dir": str(root / "out"),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad-input")
    teacher = save_tiny_bert(root / "teacher", layers=TEACHER_LAYERS, hidden=TEACHER_HIDDEN)
    config = valid_config(root, teacher)
    earlier = root / "earlier"  # a run folder an earlier run left: it must stay as it is
    (earlier / "final").mkdir(parents=True)
    recorded = {**config, "output_dir": str(earlier)}
    from distilnas.search.config import parse_config
    from distilnas.search.rundir import RunFolder

    cfg = parse_config(recorded)
    RunFolder.of(cfg).record(cfg)
    searched = parse_config(
        {**config, "output_dir": str(root / "searched")}
    )  # a search alone, of other inputs
    RunFolder.of(searched).mapping.record(searched.model_copy(update={"seed": 7}))
    # a search of a teacher whose weights were replaced after it, under the same name
    shutil.copytree(teacher, root / "retrained")
    moved = parse_config({**config, "teacher": {**config["teacher"], "name": str(root / "retrained")}})
    moved = moved.model_copy(update={"output_dir": root / "moved"})
    RunFolder.of(moved).mapping.record(moved)
    from safetensors.torch import load_file, save_file

    weights = load_file(root / "retrained" / "model.safetensors")
    save_file({k: v + 1 for k, v in weights.items()}, root / "retrained" / "model.safetensors")
    (earlier / "final" / "results.json").write_text("{}")
    # a GLUE folder with a row of too few fields, and a run folder whose record is damaged
    shutil.copytree(GLUE / "RTE", root / "glue-broken" / "RTE")
    with open(root / "glue-broken" / "RTE" / "train.tsv", "a", encoding="utf-8") as f:
        f.write("9999\ta sentence without its pair\n")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "config.json").write_text('{"hash": "abc", "config": {')
    (earlier / "optuna.journal").write_text("")
    # model folders that are broken in one way each
    for name in ("no-config", "bad-json", "no-weights", "bad-weights"):
        shutil.copytree(teacher, root / name)
    (root / "no-config" / "config.json").unlink()
    (root / "bad-json" / "config.json").write_text("{not json")
    (root / "no-weights" / "model.safetensors").unlink()
    (root / "bad-weights" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait, a sentence long enough to count\n".encode("latin-1"))
    (root / "a-file").write_text("not a folder")
    return World(root, teacher, config, earlier)


Case = Callable[[World], list[str | Path]]
GPUS = torch.cuda.device_count()
"""This machine's GPUs (a trial asking one more is refused)."""
JOINT = {"layers": [1], "hidden": [TEACHER_HIDDEN], "heads": [2], "intermediate": [16]}  # a valid joint space
CASES: dict[str, tuple[Case, str]] = {
    # config fields and types
    "unknown task": (
        lambda w: ["run", w.config_with("t.yaml", final__tasks=["sst3"])],
        "final.tasks[0]: unknown GLUE task 'sst3'",
    ),
    "unknown field": (lambda w: ["run", w.config_with("f.yaml", colour="red")], "colour: unknown field"),
    "wrong type": (
        lambda w: ["run", w.config_with("s.yaml", seed="many")],
        "seed: Input should be a valid integer",
    ),
    "zero layers": (
        lambda w: ["run", w.config_with("l.yaml", distill__student__layers=0)],
        "distill.student.layers: Input should be greater than 0",
    ),
    "unknown loss": (
        lambda w: ["run", w.config_with("u.yaml", distill__general={"losses": {"nosuch": 1}})],
        "distill.general.losses: unknown loss 'nosuch'",
    ),
    "negative loss weight": (
        lambda w: ["run", w.config_with("n.yaml", distill__general={"losses": {"hidden_mse": -1}})],
        "hidden_mse: a loss weight cannot be negative",
    ),
    "tournament above population": (
        lambda w: [
            "search",
            "mapping",
            w.config_with("p.yaml", search__mapping={"population": 2, "tournament": 3}),
        ],
        "smaller than the tournament (3)",
    ),
    "eta below 2": (
        lambda w: ["search", "mapping", w.config_with("eta.yaml", proxy={"rungs": 2, "eta": 1})],
        "proxy.eta: Input should be greater than or equal to 2",
    ),
    "exhaustive over a space above the budget": (
        lambda w: [
            "search",
            "mapping",
            w.config_with(
                "ex.yaml",
                distill__student__layers=1,
                search__mapping={
                    "population": 2,
                    "generations": 1,
                    "tournament": 2,
                    "constraints": [],
                    "random_baseline": False,
                    "strategy": "exhaustive",
                },
            ),
        ],
        "search.mapping.strategy: exhaustive over 3 valid mappings, more than the budget of 2",
    ),
    "joint student wider than the teacher": (
        lambda w: ["search", "joint", w.config_with("jw.yaml", search__joint={"hidden": [16, 4096]})],
        "search.joint.hidden: 4096 is wider than the teacher",
    ),
    "joint budget no student meets": (
        lambda w: ["search", "joint", w.config_with("jb.yaml", search__joint={**JOINT, "max_params": 10})],
        "search.joint.max_params: 10 is below the smallest student",
    ),
    "joint final without a joint space": (
        lambda w: [
            "run",
            w.config_with("jf.yaml", final__students=["joint"], search__joint={**JOINT, "heads": [7]}),
        ],
        "search.joint.heads: none divides",
    ),
    "bad teacher override": (
        lambda w: ["run", w.config_with("o.yaml", teacher__overrides={"rte": {"epochs": -1}})],
        "o.yaml: teacher.overrides: rte.epochs: Input should be greater than 0",
    ),
    "kronecker with references": (
        lambda w: [
            "run",
            w.config_with(
                "kr.yaml",
                distill__student={
                    "layers": 1,
                    "references": {},
                    "kronecker": {"attention": {"a": [4, 4], "b": [8, 8]}},
                },
            ),
        ],
        "kronecker and references cannot be combined",
    ),
    "negative kronecker factor": (
        lambda w: [
            "run",
            w.config_with(
                "kn.yaml",
                distill__student={"layers": 1, "kronecker": {"attention": {"a": [-4, 4], "b": [8, 8]}}},
            ),
        ],
        "distill.student.kronecker.attention.a[0]: Input should be greater than 0",
    ),
    "kronecker factors of another shape": (
        lambda w: [
            "run",
            w.config_with(
                "ks.yaml",
                distill__student={"layers": 1, "kronecker": {"attention": {"a": [3, 3], "b": [8, 8]}}},
            ),
        ],
        "distill.student.kronecker.attention: factors 3x3 and 8x8 make a 24x24 matrix",
    ),
    "heads not dividing the width": (
        lambda w: [
            "run",
            w.config_with(
                "h.yaml", distill__student={"layers": 1, "hidden": 30, "heads": 4, "init": "random"}
            ),
        ],
        "hidden size 30 is not a multiple of 4 heads",
    ),
    "student wider than the teacher": (
        lambda w: [
            "search",
            "mapping",
            w.config_with("w.yaml", distill__student={"layers": 1, "hidden": 64, "init": "extract"}),
        ],
        "is wider than its teacher (hidden 64 > 32",
    ),
    "copy at another width": (
        lambda w: [
            "run",
            w.config_with("c.yaml", distill__student={"layers": 1, "hidden": 16, "init": "copy"}),
        ],
        "copy initialisation needs the teacher's widths",
    ),
    "extract with another head size": (
        lambda w: [
            "run",
            w.config_with(
                "e.yaml", distill__student={"layers": 1, "hidden": 16, "heads": 2, "init": "extract"}
            ),
        ],
        "extract keeps whole heads",
    ),
    "reference layer beyond the teacher": (
        lambda w: [
            "run",
            w.config_with(
                "r.yaml", distill__student={"layers": 1, "init": "copy", "references": {"teacher_layer": 9}}
            ),
        ],
        "references.teacher_layer: 9 is not a teacher layer (0..2)",
    ),
    "student deeper than the teacher": (
        lambda w: [
            "search",
            "mapping",
            w.config_with("d.yaml", distill__student={"layers": 6, "init": "random"}),
        ],
        "a 6-layer student is deeper than its 2-layer teacher",
    ),
    "supernet sizes wider than the teacher": (
        lambda w: [
            "run",
            w.config_with(
                "sh.yaml",
                final__students=["supernet"],
                search__supernet={"blocks": 2, "hidden_sizes": [32, 128]},
            ),
        ],
        "search.supernet.hidden_sizes: [128] not in 1..32",
    ),
    "supernet blocks not dividing": (
        lambda w: ["search", "supernet", w.config_with("sb.yaml", search__supernet={"blocks": 3})],
        "search.supernet.blocks: 3 does not divide the 4 layers",
    ),
    "a hand-designed supernet student the space lacks": (
        lambda w: [
            "search",
            "supernet",
            w.config_with(
                "sx.yaml",
                search__supernet={"blocks": 2, "hidden_sizes": [16, 32], "hand_designed": ["3L-16"]},
            ),
        ],
        "search.supernet.hand_designed[0]: student 3L-16: its 6 attention and feed-forward layers do not fill",
    ),
    "random search's student without random search": (
        lambda w: [
            "run",
            w.config_with("rs.yaml", final__students=["random"], search__mapping={"random_baseline": False}),
        ],
        "final.students: 'random' needs random search beside the mapping search",
    ),
    "hand students without shapes": (
        lambda w: ["run", w.config_with("hs.yaml", final__students=["uniform", "hand"])],
        "final.hand_designed: list the shapes when final.students has 'hand'",
    ),
    "a hand-designed student deeper than the teacher": (
        lambda w: [
            "run",
            w.config_with(
                "hd.yaml",
                final__students=["uniform", "hand"],
                final__hand_designed=[{"layers": 1}, {"layers": 3}],
            ),
        ],
        "final.hand_designed[1]: mapping: a 3-layer student is deeper than its 2-layer teacher",
    ),
    "a task without a training split": (
        lambda w: ["run", w.config_with("ax.yaml", final__tasks=["ax"])],
        "final.tasks[0]: ax has no training split",
    ),
    "a task whose training file is missing": (
        lambda w: ["run", w.config_with("q.yaml", final__tasks=["qnli"])],
        "final.tasks[0]: qnli has no train split in",
    ),
    "a task whose folder is missing": (
        lambda w: ["search", "mapping", w.config_with("mn.yaml", proxy__tasks=["mnli"])],
        "MNLI: missing",
    ),
    "no corpus": (
        lambda w: ["run", w.config_with("nc.yaml", data__corpus=None)],
        "data.corpus: the final stage's general distillation needs a corpus",
    ),
    "corpus file missing": (
        lambda w: ["run", w.config_with("cm.yaml", data__corpus={"files": [str(w.root / "gone.txt")]})],
        "gone.txt: corpus file not found",
    ),
    "corpus file not UTF-8": (
        lambda w: ["run", w.config_with("cu.yaml", data__corpus={"files": [str(w.root / "latin1.txt")]})],
        "latin1.txt: not UTF-8 text (byte 3",
    ),
    "corpus without a source": (
        lambda w: ["run", w.config_with("cs.yaml", data__corpus={"unit": "line"})],
        "give corpus files or an hf_dataset",
    ),
    "unset environment variable": (
        lambda w: [
            "run",
            w.write("env.yaml", yaml.safe_dump({**w.config, "output_dir": "${DISTILNAS_NOPE}"})),
        ],
        "output_dir: environment variable DISTILNAS_NOPE is not set",
    ),
    # YAML and encodings
    "invalid YAML": (
        lambda w: ["run", w.write("y.yaml", "teacher: [unclosed\n")],
        "y.yaml:2:1: not valid YAML",
    ),
    "config not UTF-8": (
        lambda w: ["run", w.write_raw("latin.yaml", b"seed: 1\n# caf\xe9\n")],
        "latin.yaml: not UTF-8 text (byte 13",
    ),
    "recursive YAML alias": (
        lambda w: ["run", w.write("rec.yaml", "a: &x [*x]\n")],
        "rec.yaml: a recursive YAML alias",
    ),
    "YAML alias bomb": (
        lambda w: [
            "run",
            w.write(
                "bomb.yaml",
                "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
                + "".join(
                    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
                    for p, c in zip("abcdef", "bcdefg", strict=True)
                ),
            ),
        ],
        "bomb.yaml: expands to more than 100,000 values (an alias bomb?)",
    ),
    "top level not a mapping": (
        lambda w: ["run", w.write("list.yaml", "- 1\n- 2\n")],
        "list.yaml: expected a mapping at the top level",
    ),
    "config file missing": (
        lambda w: ["run", w.root / "cases" / "none.yaml"],
        "none.yaml: config file not found",
    ),
    "inspect file with bad YAML": (
        lambda w: ["inspect", w.write("i.yaml", "student: {layers: [\n")],
        "i.yaml:2:1: not valid YAML",
    ),
    # model folders
    "teacher folder without config.json": (
        lambda w: ["run", w.config_with("m1.yaml", teacher__name=str(w.root / "no-config"))],
        "no-config: model folder has no config.json",
    ),
    "teacher config.json not JSON": (
        lambda w: ["run", w.config_with("m2.yaml", teacher__name=str(w.root / "bad-json"))],
        "bad-json/config.json: not valid JSON (line 1",
    ),
    "teacher without weights": (
        lambda w: ["run", w.config_with("m3.yaml", teacher__name=str(w.root / "no-weights"))],
        "no-weights has no weights",
    ),
    "teacher with damaged weights": (
        lambda w: ["run", w.config_with("m4.yaml", teacher__name=str(w.root / "bad-weights"))],
        "bad-weights/model.safetensors: damaged weights",
    ),
    "teacher folder missing": (
        lambda w: ["run", w.config_with("m5.yaml", teacher__name="./nowhere/teacher")],
        "./nowhere/teacher: model folder not found",
    ),
    "evaluate a model with damaged weights": (
        lambda w: ["evaluate", w.root / "bad-weights", "-t", "rte", "--no-train"],
        "bad-weights/model.safetensors: damaged weights",
    ),
    "evaluate a model without weights": (
        lambda w: ["evaluate", w.root / "no-weights", "-t", "rte"],
        "no-weights: has no weights",
    ),
    "inspect a folder of another kind of model": (
        lambda w: ["inspect", w.root / "no-config"],
        "not a saved student (no config.json)",
    ),
    # paths
    "output_dir is a file": (
        lambda w: ["run", w.config_with("of.yaml", output_dir=str(w.root / "a-file"))],
        "output_dir: " + "{root}/a-file is a file",
    ),
    "output_dir under a file": (
        lambda w: ["run", w.config_with("ou.yaml", output_dir=str(w.root / "a-file" / "out"))],
        "output_dir: {root}/a-file/out cannot be created or written",
    ),
    "GLUE folder missing": (
        lambda w: ["run", w.config_with("g.yaml", data__glue_dir=str(w.root / "no-glue"))],
        "no-glue: GLUE folder not found",
    ),
    "data check without a folder": (
        lambda w: ["data", "check", "--glue-dir", w.root / "no-glue"],
        "no-glue: GLUE folder not found",
    ),
    # command options
    "dashboard port out of range": (
        lambda w: ["dashboard", w.earlier, "--port", "70000"],
        "--port 70000: not a port (1..65535)",
    ),
    "latency with no repeats": (
        lambda w: ["latency", w.teacher, "--repeats", "0"],
        "--repeats 0: must be at least 1",
    ),
    "latency with no threads": (
        lambda w: ["latency", w.teacher, "--threads", "0"],
        "--threads 0: must be at least 1",
    ),
    "latency beyond the positions": (
        lambda w: ["latency", w.teacher, "--seq-len", "100000"],
        "--seq-len 100000: the model has 128 positions",
    ),
    "latency with a bad trim": (
        lambda w: ["latency", w.teacher, "--trim", "0.7"],
        "--trim must be in [0, 0.5)",
    ),
    "teacher on the diagnostic set": (
        lambda w: ["teacher", w.config_with("ta.yaml"), "-t", "ax"],
        "--task[0]: ax has no training split",
    ),
    "distill with a bad student shape": (
        lambda w: ["distill", w.config_with("ds.yaml"), "-t", "rte", "--student", "four"],
        "--student 'four': expected",
    ),
    "distill with a mapping beyond the teacher": (
        lambda w: ["distill", w.config_with("dm.yaml"), "-t", "rte", "--mapping", "3/2"],
        "student layer 1 maps to teacher layer 3, outside 1..2",
    ),
    "unknown command": (lambda w: ["distil"], "No such command 'distil'"),
    "inspect with batch 0": (
        lambda w: ["inspect", w.write("st.yaml", "student: {layers: 1}\n"), "--batch", "0"],
        "--batch 0: must be at least 1",
    ),
    "evaluate with a negative lr": (
        lambda w: ["evaluate", w.teacher, "-t", "rte", "--lr", "-1"],
        "lr: Input should be greater than 0",
    ),
    "fidelity of another stage": (
        lambda w: ["fidelity", w.earlier, "--stage", "nope"],
        "--stage 'nope': choose mapping, joint or supernet",
    ),
    "cache prune of an unknown kind": (
        lambda w: ["cache", "prune", "--older-than", "1", "--kind", "nope"],
        "--kind 'nope': choose from",
    ),
    "a TSV row with too few fields": (
        lambda w: ["run", w.config_with("row.yaml", data__glue_dir=str(w.root / "glue-broken"))],
        "RTE/train.tsv:",
    ),
    "export of a run whose config.json is damaged": (
        lambda w: ["export", w.root / "corrupt"],
        "corrupt/config.json: unreadable",
    ),
    "export of a folder that is no run": (
        lambda w: ["export", w.root / "cases"],
        "not a distilnas run folder (no config.json)",
    ),
    # run folders
    "resume with nothing to resume": (
        lambda w: ["run", w.config_with("nr.yaml"), "--resume"],
        "out: nothing to resume",
    ),
    "a run folder taken": (
        lambda w: ["run", w.config_with("taken.yaml", output_dir=str(w.earlier))],
        "earlier: a run is already here; pass --resume",
    ),
    "resume with another config": (
        lambda w: ["run", w.config_with("other.yaml", output_dir=str(w.earlier), seed=1), "--resume"],
        "earlier: --resume with another config: earlier was made with seed=0; this config has 1",
    ),
    "a stage made from other inputs": (
        lambda w: [
            "run",
            w.config_with("stage.yaml", output_dir=str(w.root / "searched"), final__students=["searched"]),
        ],
        "search-mapping was made with seed=7; this config has 0",
    ),
    "a stage of a teacher replaced under its name": (
        lambda w: [
            "run",
            w.config_with(
                "moved.yaml",
                output_dir=str(w.root / "moved"),
                teacher__name=str(w.root / "retrained"),
                final__students=["searched"],
            ),
        ],
        "search-mapping was made with the teacher's weights model.safetensors:",
    ),
    "unreachable Ray address": (
        lambda w: ["run", w.config_with("ray.yaml", ray={"address": "127.0.0.1:1"})],
        "ray.address '127.0.0.1:1': cannot connect",
    ),
    "storage URL of no database": (
        lambda w: ["run", w.config_with("db.yaml", storage={"url": "nosuchdb://x"})],
        "storage.url 'nosuchdb://x': cannot open",
    ),
    "a runtime_env field Ray does not know": (
        lambda w: ["run", w.config_with("re.yaml", ray={"runtime_env": {"pipp": ["x"]}})],
        "ray.runtime_env: unknown field 'pipp'; Ray knows: conda, config,",
    ),
    "a runtime_env field of the wrong type": (
        lambda w: ["run", w.config_with("re2.yaml", ray={"runtime_env": {"pip": 5}})],
        "ray.runtime_env: runtime_env['pip'] must be of type str or List[str]",
    ),
    "a fraction of a GPU above one": (
        lambda w: ["run", w.config_with("g1.yaml", ray={"gpus_per_trial": 1.5})],
        "ray.gpus_per_trial: 1.5: a trial shares one GPU (a fraction up to 1) or holds whole GPUs",
    ),
    "more GPUs per trial than this machine has": (
        lambda w: ["run", w.config_with("g2.yaml", ray={"gpus_per_trial": GPUS + 1})],
        f"ray.gpus_per_trial: {GPUS + 1}, but this machine has {GPUS} GPUs; use 0 to run the trials on CPUs",
    ),
    "a PostgreSQL server that does not answer (its password hidden)": (
        lambda w: ["run", w.config_with("pg.yaml", storage={"url": "postgresql://u:secret@127.0.0.1:1/x"})],
        "storage.url 'postgresql://u:***@127.0.0.1:1/x': cannot open (OperationalError",
    ),
    "storage in a folder that is missing": (
        lambda w: ["run", w.config_with("sq.yaml", storage={"url": f"sqlite:///{w.root}/no/such/dir/t.db"})],
        "storage.url",
    ),
}
if not torch.cuda.is_available():  # (with CUDA here, timing on it is allowed)
    CASES["students timed on CUDA where there is none"] = (
        lambda w: ["run", w.config_with("cu.yaml", final__latency={"device": "cuda"})],
        "final.latency.device: cuda, but this machine has no CUDA device",
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its content's digest."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_matrix_is_large() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world: World, name: str, cli: Cli) -> None:
    make, message = CASES[name]
    args = make(world)
    before = snapshot(world.root)
    ran = cli(*args)
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == 2, ran.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
    assert message.format(root=world.root) in lines[0], lines[0]
    assert snapshot(world.root) == before  # nothing created, nothing an earlier run wrote changed
    assert not (world.root / "out").exists()


def test_an_unexpected_failure_is_one_line_exit_1_and_its_traceback_is_kept(
    glue_dir: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug, not the user's input\nsecond line")

    monkeypatch.setattr("distilnas.search.cli.data.count_rows", broken)
    ran = cli("data", "check", "--glue-dir", str(glue_dir))
    (line,) = ran.stderr.strip().splitlines()
    assert ran.returncode == 1 and line.startswith("distilnas: unexpected error: RuntimeError: a bug, not")
    log = Path(line.rsplit("(traceback in ", 1)[1].rstrip(")"))
    kept = log.read_text()
    assert "Traceback" in kept and "in broken" in kept and "second line" in kept
    log.unlink()
