"""Ray for a cluster. Two Ray nodes on this machine, the second in a mount namespace of its own where a
folder of the driver's is an empty tmpfs (a machine without the driver's disk) holding a read-only folder:
every node is probed for the run's files before any work, and a node that cannot see them, or write its
own cache, is refused in one line naming it; a search whose cache the second node cannot see runs there
all the same (what its trials read travels through the run storage, its caches are built there once).
And ``ray.runtime_env`` reaches the workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from helpers import run_process, save_tiny_bert
from test_search_cli import config

from distilnas.distill.errors import UserError
from distilnas.distill.remote import Remote
from distilnas.search.tune import check_nodes


def own_mount_namespace() -> bool:
    if os.getuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(
    not own_mount_namespace(), reason="a node without the driver's disk needs root and unshare(1)"
)


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str) -> Iterator[tuple[str, Path, str]]:
    """(address, a folder the second node sees as empty but for a read-only ``ro``, its node ID). Both
    nodes have the S3 server's credentials (``s3_endpoint`` set them before the nodes start)."""
    from ray.cluster_utils import Cluster

    hidden = Path(tempfile.mkdtemp(prefix="distilnas-hidden-", dir="/tmp"))
    ray.shutdown()
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray_cli = Path(sys.executable).parent / "ray"
    node = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs {hidden} && mkdir {hidden}/ro && mount -t tmpfs -o ro tmpfs {hidden}/ro "
         f"&& exec {ray_cli} start --address={head.address} --num-cpus=1 "
         "--block --disable-usage-stats"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, RAY_ADDRESS=""),
    )  # fmt: skip
    try:
        ray.init(address=head.address, log_to_driver=False)
        deadline = time.monotonic() + 120
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline and node.poll() is None, "the second node did not join"
            time.sleep(0.5)
        head_id = head.head_node.node_id
        [second] = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head_id]
        yield head.address, hidden, second
    finally:
        ray.shutdown()
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)
        head.shutdown()
        shutil.rmtree(hidden, ignore_errors=True)


@needs_namespace
def test_nodes_that_share_the_disk_pass_the_probe_and_it_leaves_nothing(
    cluster: tuple[str, Path, str], tmp_path: Path, glue_dir: Path
) -> None:
    check_nodes({"output_dir": tmp_path / "run"}, {"data.glue_dir": glue_dir}, {"data.cache_dir": tmp_path})
    assert list(tmp_path.iterdir()) == []  # the probe's files are gone, nothing was made
    _, hidden, _ = cluster
    check_nodes({"output_dir": tmp_path / "run"}, {}, {"data.cache_dir": hidden / "cache"})  # a node's own


@needs_namespace
def test_a_node_that_cannot_write_its_cache_is_named(cluster: tuple[str, Path, str], tmp_path: Path) -> None:
    _, hidden, second = cluster
    with pytest.raises(UserError) as err:
        check_nodes({"output_dir": tmp_path / "run"}, {}, {"data.cache_dir": hidden / "ro" / "cache"})
    assert (
        f"({second[:8]}): data.cache_dir {hidden / 'ro' / 'cache'}: cannot write in {hidden / 'ro'}"
        in str(err.value)
    )
    assert "make it a writable folder on every node" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@needs_namespace
def test_a_node_without_the_run_folder_is_named(cluster: tuple[str, Path, str], tmp_path: Path) -> None:
    _, hidden, second = cluster
    (hidden / "runs").mkdir()
    with pytest.raises(UserError) as err:
        check_nodes({"output_dir": hidden / "runs" / "a"}, {}, {"data.cache_dir": tmp_path})
    assert f"({second[:8]})" in str(err.value)
    assert f"does not see output_dir {hidden / 'runs'}" in str(err.value)
    assert list((hidden / "runs").iterdir()) == [] and list(tmp_path.iterdir()) == []
    # a read-only input (GLUE) that the node lists otherwise: there the folder is an empty tmpfs
    with pytest.raises(UserError, match=rf"\({second[:8]}\): sees data.glue_dir {hidden} unlike the driver"):
        check_nodes({"output_dir": tmp_path / "run"}, {"data.glue_dir": hidden})


@needs_namespace
def test_run_storage_at_a_uri_is_probed_on_every_node(
    cluster: tuple[str, Path, str], tmp_path: Path, s3_folder: str
) -> None:
    """S3 reaches every node; a ``file://`` URI of the driver's disk does not reach the second node."""
    check_nodes({"output_dir": s3_folder}, {}, {"data.cache_dir": tmp_path})
    assert Remote(s3_folder).files() == {}  # the probe's files are gone
    _, hidden, second = cluster
    uri = f"file://{hidden}/runs"
    with pytest.raises(UserError) as err:
        check_nodes({"output_dir": uri}, {}, {"data.cache_dir": tmp_path})
    assert f"({second[:8]}): does not see output_dir {uri} (the driver's probe file there is missing" in str(
        err.value
    )
    assert "give every node the run storage's network and credentials" in str(err.value)
    assert list((hidden / "runs").iterdir()) == []


@needs_namespace
def test_search_on_a_node_without_the_disk_is_refused_before_any_work(
    cluster: tuple[str, Path, str], glue_dir: Path, corpus_dir: Path
) -> None:
    address, hidden, second = cluster
    folder = hidden / "search"
    folder.mkdir()
    teacher = save_tiny_bert(folder / "teacher", layers=4)
    cfg = config(folder, teacher, glue_dir, corpus_dir)
    proc = run_process("search", "mapping", str(cfg), "--address", address, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    [line] = [x for x in proc.stderr.splitlines() if "ray node" in x]
    assert f"({second[:8]}): does not see output_dir {folder}" in line
    assert "filesystem every node mounts" in line
    assert sorted(p.name for p in folder.iterdir()) == ["search.yaml", "teacher"]  # nothing written


RUNTIME_ENV = """
import os, ray
from distilnas.search.config import RayConfig
from distilnas.search.tune import start_ray
start_ray(RayConfig(runtime_env={"env_vars": {"DISTILNAS_PROBE": "set by ray.runtime_env"}}), None)
print(ray.get(ray.remote(lambda: os.environ.get("DISTILNAS_PROBE")).remote()))
"""


def test_the_runtime_env_reaches_the_workers() -> None:
    env = dict(os.environ, RAY_ADDRESS="")
    env.pop("DISTILNAS_PROBE", None)
    proc = subprocess.run(
        [sys.executable, "-c", RUNTIME_ENV], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "set by ray.runtime_env"


@needs_namespace
@pytest.mark.slow  # two mapping searches (`make test-slow`); the probe's tests above stay in the fast suite
def test_a_mapping_search_on_two_nodes_uses_both_and_finds_what_one_node_finds(
    cluster: tuple[str, Path, str], tmp_path: Path, glue_dir: Path, corpus_dir: Path
) -> None:
    """The driver's cache is where the second node sees an empty folder: the second node's trials copy
    the fine-tuned teacher and the corpus sample from the run storage and build the teacher's outputs in
    their own cache, once for all trials there."""
    address, hidden, second = cluster
    teacher = save_tiny_bert(tmp_path / "teacher", layers=4)
    found = {}
    for where in ("two", "one"):
        (tmp_path / where).mkdir()
        cfg = config(tmp_path / where, teacher, glue_dir, corpus_dir)
        cfg.write_text(
            cfg.read_text().replace(str(tmp_path / where / "cache"), str(hidden / f"{where}-cache"))
        )
        args = ["search", "mapping", str(cfg), "--json"] + (["--address", address] if where == "two" else [])
        proc = run_process(*args, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        found[where] = json.loads((tmp_path / where / "run" / "search-mapping" / "results.json").read_text())
    nodes = found["two"]["ray"]["trials_per_node"]
    assert len(nodes) == 2 and any(f"({second[:8]})" in n for n in nodes) and min(nodes.values()) >= 1
    assert len(found["one"]["ray"]["trials_per_node"]) == 1
    assert found["two"]["best"] == found["one"]["best"]
    assert found["two"]["exhaustive"]["ranked"] == found["one"]["exhaustive"]["ranked"]

    added = found["two"]["ray"]["cache_added_per_node"]
    [there] = [n for n in added if f"({second[:8]})" in n]
    [here] = [n for n in added if n != there]

    def made(node: str, kind: str) -> dict[str, int]:
        return {k: v for k, v in added[node].items() if k.startswith(f"{kind}/")}

    # the teacher ran once per node, on the same examples (the same fingerprint)
    assert (
        made(here, "teacher-outputs") == made(there, "teacher-outputs")
        and len(made(here, "teacher-outputs")) == 1
    )
    assert set(made(here, "teacher-outputs").values()) == {1}
    # what only the driver can make was copied there once: the fine-tuned teacher, the corpus sample
    assert made(there, "teachers") == made(here, "teachers") and set(made(there, "teachers").values()) == {1}
    corpus = {k: v for k, v in made(there, "tokenized").items() if k.startswith("tokenized/corpus-")}
    assert len(corpus) == 1 and set(corpus.values()) == {1}
    shelf = tmp_path / "two" / "run" / "artifacts"
    assert sorted(p.name for p in shelf.iterdir()) == ["teachers", "tokenized"]
    assert not (tmp_path / "one" / "run" / "artifacts").exists()  # Ray here alone: nothing travels


@needs_namespace
@pytest.mark.slow
def test_a_mapping_search_kept_at_a_uri_runs_on_both_nodes_without_a_shared_disk(
    cluster: tuple[str, Path, str], tmp_path: Path, glue_dir: Path, corpus_dir: Path, s3_folder: str
) -> None:
    """The run storage is S3; the second node sees neither the driver's cache nor its run folder: what
    its trials read comes from the URI, Ray Tune's records go there, and the search finds what one node
    finds with a local run folder."""
    address, hidden, second = cluster
    teacher = save_tiny_bert(tmp_path / "teacher", layers=4)
    found = {}
    for where, output in (("two", f"'{s3_folder}'"), ("one", str(tmp_path / "one" / "run"))):
        (tmp_path / where).mkdir()
        cfg = config(tmp_path / where, teacher, glue_dir, corpus_dir)
        text = cfg.read_text().replace(str(tmp_path / where / "cache"), str(hidden / f"{where}-uri-cache"))
        cfg.write_text(text.replace(f"output_dir: {tmp_path / where / 'run'}", f"output_dir: {output}"))
        args = ["search", "mapping", str(cfg), "--json"] + (["--address", address] if where == "two" else [])
        proc = run_process(*args, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        found[where] = json.loads(proc.stdout)
    nodes = found["two"]["ray"]["trials_per_node"]
    assert len(nodes) == 2 and any(f"({second[:8]})" in n for n in nodes) and min(nodes.values()) >= 1
    assert found["two"]["best"] == found["one"]["best"]
    assert found["two"]["exhaustive"]["ranked"] == found["one"]["exhaustive"]["ranked"]
    [there] = [n for n in found["two"]["ray"]["cache_added_per_node"] if f"({second[:8]})" in n]
    copied = found["two"]["ray"]["cache_added_per_node"][there]
    travelled = [k for k in copied if k.startswith(("teachers/", "tokenized/corpus-"))]
    assert len(travelled) == 2 and set(copied.values()) == {1}  # the fine-tuned teacher, the corpus sample
    files = Remote(s3_folder).files()
    assert all(f"artifacts/{k}/.distilnas-complete" in files for k in travelled)
    assert any(f.startswith("search-mapping/ray/search/") for f in files)
    assert json.loads(Remote(s3_folder).child("search-mapping/results.json").read_text()) == found["two"]
