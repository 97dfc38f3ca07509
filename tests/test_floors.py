"""The floors (distill < spaces < proxies < results < search): the import contract in pyproject.toml holds
for the package, and fails on a deliberate upward import, function-level ones included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

FLOORS = ("distill", "spaces", "proxies", "results", "search")
LINT = Path(sys.executable).parent / "lint-imports"


def lint(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the project's contract on the ``distilnas`` package under ``package_parent``."""
    env = dict(os.environ, PYTHONPATH=str(package_parent))
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, timeout=120, cwd=package_parent, env=env,
    )  # fmt: skip


def copy_of_the_package(tmp: Path) -> Path:
    target = tmp / "distilnas"
    target.mkdir()
    shutil.copy(ROOT / "__init__.py", target)
    for floor in FLOORS:
        shutil.copytree(ROOT / floor, target / floor, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.mark.skipif(not LINT.is_file(), reason="import-linter is not installed (the dev extra)")
def test_the_package_keeps_its_floors(tmp_path: Path) -> None:
    proc = lint(copy_of_the_package(tmp_path).parent)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 kept, 0 broken" in proc.stdout


@pytest.mark.skipif(not LINT.is_file(), reason="import-linter is not installed (the dev extra)")
@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("distill/glue.py", "from distilnas.search.config import RunConfig", "distilnas.distill"),
        (
            "results/table.py",
            "def late():\n    from distilnas.search.rundir import RunFolder\n    return RunFolder",
            "distilnas.results",
        ),
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    package = copy_of_the_package(tmp_path)
    with open(package / module, "a", encoding="utf-8") as f:
        f.write(f"\n\n{line}  # a deliberate upward import\n")
    proc = lint(package.parent)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert f"{broken} is not allowed to import distilnas.search" in proc.stdout
