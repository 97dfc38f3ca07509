"""Run storage by URI on a real S3 server (moto's, started by the test): files and folders round-trip,
and the artifacts shelf works there as on a shared disk: published once, whole, and copied to a node's
cache once."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from distilnas.distill import artifacts
from distilnas.distill.artifacts import COMPLETE, Shelf
from distilnas.distill.remote import Remote, is_uri


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_uris_and_paths_are_told_apart() -> None:
    assert is_uri("s3://b/x") and is_uri("gs://b") and is_uri("file:///tmp/x")
    assert not is_uri("runs/x") and not is_uri("/abs/runs") and not is_uri(Path("s3:/b")) and not is_uri(None)
    r = Remote("s3://b/runs?endpoint_override=h:1&scheme=http")
    assert r.child("a/b.json").uri == "s3://b/runs/a/b.json?endpoint_override=h:1&scheme=http"
    assert (r / "x").base == "s3://b/runs/x"


def test_files_and_folders_round_trip(s3_folder: str, tmp_path: Path) -> None:
    remote = Remote(s3_folder)
    assert remote.files() == {} and not (remote / "notes" / "a.txt").is_file()
    (remote / "notes" / "a.txt").write_text("héllo")
    assert (remote / "notes" / "a.txt").read_text() == "héllo" and (remote / "notes" / "a.txt").is_file()
    assert not (remote / "notes").is_file()  # a folder
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "data.bin").write_bytes(os.urandom(3000))
    (src / "sub" / "state.json").write_text('{"n": 1}')
    (remote / "folder").upload(src)
    files = remote.files()
    assert set(files) == {"notes/a.txt", "folder/data.bin", "folder/sub/state.json"}
    assert files["folder/data.bin"][0] == 3000 and files["notes/a.txt"][0] == len("héllo".encode())
    (remote / "folder").download(tmp_path / "back")
    assert tree(tmp_path / "back") == tree(src)
    (remote / "notes" / "a.txt").unlink()
    (remote / "gone").unlink(missing_ok=True)  # nothing there: nothing happens
    with pytest.raises(FileNotFoundError, match="gone: no such file"):
        (remote / "gone").unlink()
    assert set(remote.files()) == {"folder/data.bin", "folder/sub/state.json"}


def test_a_server_that_does_not_answer_is_an_os_error() -> None:
    """(The commands name the URI in their one line: test_run_storage.py.)"""
    remote = Remote("s3://b/x?endpoint_override=127.0.0.1:1&scheme=http&connect_timeout=1&request_timeout=1")
    with pytest.raises(OSError):
        (remote / "f").write_text("x")


def test_the_shelf_at_a_uri_is_published_once_whole_and_fetched_once_per_node(
    s3_folder: str, tmp_path: Path
) -> None:
    folder = tmp_path / "cache" / "tokenized" / "corpus-abc"
    (folder / "sub").mkdir(parents=True)
    (folder / "data.arrow").write_bytes(os.urandom(4096))
    (folder / "sub" / "state.json").write_text('{"n": 1}')
    original = tree(folder)
    shelf = Shelf(f"{Remote(s3_folder).child('artifacts').uri}", str(tmp_path / "cache"))
    place = shelf.place(folder)
    assert Remote(place).base == f"{Remote(s3_folder).base}/artifacts/tokenized/corpus-abc"
    assert not shelf.on_shelf(place)
    shelf.publish(folder)
    assert shelf.on_shelf(place) and (Remote(place) / COMPLETE).is_file()
    shelf.publish(folder)  # already there: nothing is copied again
    folder.rename(tmp_path / "driver-copy")  # this "node" lacks it
    artifacts.drain()
    threads = [threading.Thread(target=shelf.fetch, args=(folder,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tree(folder) == original  # the marker stays on the shelf
    assert artifacts.drain() == {"tokenized/corpus-abc": 1}


def test_a_folder_missing_from_the_shelf_at_a_uri_is_named(s3_folder: str, tmp_path: Path) -> None:
    shelf = Shelf(Remote(s3_folder).child("artifacts").uri, str(tmp_path / "cache"))
    with pytest.raises(Exception, match="artifacts/teachers/t1: the run storage lacks t1, which trials read"):
        shelf.fetch(tmp_path / "cache" / "teachers" / "t1")
