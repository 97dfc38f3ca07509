"""Artifacts travel, caches are per node: the driver's cache folders that trials read are published to
the run storage, and a node that lacks them (another machine: here, the cache moved away) copies them
once, builds the teacher's outputs itself, and distils to the same numbers as the driver's cache."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from pathlib import Path

import pytest
from helpers import WIKISPLIT
from test_recipes import DISTILL, PAIRS, figures, record

from distilnas.distill import artifacts
from distilnas.distill.artifacts import Shelf
from distilnas.distill.config import TeacherConfig
from distilnas.distill.errors import UserError
from distilnas.distill.prepared import PreparedData, prepare
from distilnas.distill.recipes import Budget, distil


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


Published = tuple[Shelf, Path, dict[str, bytes]]


@pytest.fixture()
def shelf(tmp_path: Path) -> Published:
    """A shelf and a cache folder published to it (then gone from the cache, as on another node)."""
    folder = tmp_path / "cache" / "tokenized" / "corpus-abc"
    (folder / "sub").mkdir(parents=True)
    (folder / "data.arrow").write_bytes(os.urandom(4096))
    (folder / "sub" / "state.json").write_text('{"n": 1}')
    shelf = Shelf(str(tmp_path / "run" / "artifacts"), str(tmp_path / "cache"))
    shelf.publish(folder)
    original = tree(folder)
    shutil.rmtree(folder)
    artifacts.drain()
    return shelf, folder, original


def test_a_node_without_a_folder_copies_it_from_the_shelf_once(shelf: Published) -> None:
    s, folder, original = shelf
    assert tree(Path(s.place(folder))) == original
    assert Path(s.place(folder)) == Path(s.root) / "tokenized" / "corpus-abc"
    assert s.fetch(folder) == str(folder)
    assert tree(folder) == original
    assert artifacts.drain() == {"tokenized/corpus-abc": 1}
    s.fetch(folder)  # there now: nothing is copied
    assert artifacts.drain() == {}


def test_trials_fetching_at_once_make_one_copy(shelf: Published) -> None:
    s, folder, original = shelf
    threads = [threading.Thread(target=s.fetch, args=(folder,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tree(folder) == original and artifacts.drain() == {"tokenized/corpus-abc": 1}


def test_what_cannot_travel_is_refused(shelf: Published, tmp_path: Path) -> None:
    s, folder, _ = shelf
    with pytest.raises(UserError, match=rf"{tmp_path / 'elsewhere'}: not in the cache {s.cache_dir}"):
        s.publish(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=r"the run storage lacks corpus-xyz"):
        s.fetch(folder.with_name("corpus-xyz"))


def test_a_node_without_the_drivers_cache_distils_to_the_same_numbers(
    tiny_bert: Path, glue_dir: Path, tmp_path: Path
) -> None:
    texts = [line.split("\t")[0] for line in WIKISPLIT.read_text(encoding="utf-8").splitlines()[:64]]
    teacher = TeacherConfig.model_validate(
        {
            "name": str(tiny_bert),
            "train": {"epochs": 1, "train_limit": 32, "batch_size": 16, "max_length": 32},
        }
    )
    cache, shelf = tmp_path / "cache", tmp_path / "run" / "artifacts"
    data = prepare(
        teacher, DISTILL, ["rte"], texts, glue_dir, cache, tmp_path / "run", 0,
        corpus_fraction=1.0, train_limit=32, task_caches=True, shelf=str(shelf),
    )  # fmt: skip
    assert data.shelf == str(shelf)
    assert len(data.travelling()) == 2  # the fine-tuned teacher and the corpus sample
    assert all(Path(Shelf(data.shelf, data.cache_dir).place(f)).is_dir() for f in data.travelling())
    budget = Budget(2, 2, "distil", 1.0)
    here = distil(record(data), PAIRS, data, DISTILL, ["rte"], budget=budget)

    cache.rename(tmp_path / "driver-cache")  # this "node" has none of the driver's cache
    artifacts.drain()
    node = PreparedData.from_json(data.to_json()).on_node()
    there = distil(record(node), PAIRS, node, DISTILL, ["rte"], budget=budget)
    assert {t: figures(o) for t, o in there.items()} == {t: figures(o) for t, o in here.items()}
    made = artifacts.drain()
    assert {k.split("/")[0] for k, n in made.items() if n == 1} == {
        "teachers",
        "tokenized",
        "teacher-outputs",
    }
    assert sum(k.startswith("teacher-outputs/") for k in made) == 2  # the corpus's and rte's, once each
    assert all(n == 1 for n in made.values())

    # a node whose inputs differ from the driver's makes other teacher outputs: refused, never used
    shutil.rmtree(cache / "teacher-outputs")
    wrong = dataclasses.replace(node, tasks=[dataclasses.replace(node.tasks[0], fingerprint="0" * 16)])
    with pytest.raises(UserError, match="this node's teacher or data differ from the driver's"):
        wrong.task_teacher("rte")
