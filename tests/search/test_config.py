"""Run configs: YAML loading, ${ENV} expansion, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT, Cli

from distilnas.distill.config import error_path
from distilnas.distill.errors import ConfigError
from distilnas.search.config import RunConfig, load_config, parse_config

CONFIGS = ROOT / "configs"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path: Path) -> None:
    assert isinstance(load_config(path), RunConfig)


def test_defaults_and_task_names_normalised() -> None:
    cfg = parse_config({"final": {"tasks": ["SST-2", "sts-b"]}})
    assert cfg.final.tasks == ["sst2", "stsb"]
    assert cfg.teacher.name == "minilm-l6" and cfg.seed == 0


def test_unknown_task_names_its_path(tmp_path: Path) -> None:
    p = write(tmp_path, "final:\n  tasks: [cola, sst2, sst3]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value) == f"{p}: final.tasks[2]: unknown GLUE task 'sst3'; known: " + (
        "cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, ax"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("teacher:\n  trian: {}\n", "teacher.trian: unknown field"),
        ("teacher:\n  train:\n    lr: -1\n", "teacher.train.lr: Input should be greater than 0"),
        ("teacher:\n  overrides:\n    sst2: {epoks: 1}\n", "teacher.overrides: sst2.epoks: unknown field"),
        (
            "teacher:\n  overrides:\n    nope: {epochs: 1}\n",
            "teacher.overrides.nope: unknown GLUE task 'nope'",
        ),
        (
            "search:\n  mapping:\n    population: 2\n    tournament: 3\n",
            "search.mapping: population (2) is smaller than the tournament (3)",
        ),
        ("proxy:\n  tasks: []\n", "proxy.tasks: List should have at least 1 item"),
        ("seed: abc\n", "seed: Input should be a valid integer"),
        ("- a list\n", "expected a mapping at the top level"),
        ("teacher: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_fields_fail_with_their_path(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(write(tmp_path, text))


def test_env_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_GLUE", "/data/glue")
    monkeypatch.delenv("MISSING_VAR", raising=False)
    cfg = load_config(write(tmp_path, "data:\n  glue_dir: ${MY_GLUE}\n  cache_dir: ${MISSING_VAR:-/tmp/c}\n"))
    assert cfg.data.glue_dir == Path("/data/glue") and cfg.data.cache_dir == Path("/tmp/c")
    with pytest.raises(ConfigError, match=r"data\.glue_dir: environment variable MISSING_VAR is not set"):
        load_config(write(tmp_path, "data:\n  glue_dir: ${MISSING_VAR}/x\n"))


def test_error_path_format() -> None:
    assert error_path(("final", "tasks", 2)) == "final.tasks[2]"
    assert error_path(()) == "(root)"


def test_config_hash_changes_with_settings() -> None:
    a, b = parse_config({}), parse_config({"seed": 1})
    assert a.config_hash() == parse_config({}).config_hash() != b.config_hash()
    # an empty optional setting counts for nothing (a new one keeps older runs resumable); a set one does
    refs = parse_config({"distill": {"student": {"references": {"tokens": 4}}}})
    assert parse_config({"distill": {"student": {"kronecker": None}}}).config_hash() == a.config_hash()
    assert refs.config_hash() != a.config_hash()


def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path, cli: Cli) -> None:
    p = write(tmp_path, "final:\n  tasks: [sst3]\n")
    proc = cli("teacher", p, "--task", "rte")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"distilnas: error: {p}: final.tasks[0]: unknown GLUE task 'sst3'; known: "
        + ("cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, ax")
    )
    assert not (tmp_path / "runs").exists()  # nothing was written
