"""Ray start-up: Ray here (no address) or a cluster's, how many trials it runs at once, and the probe that
every node of a cluster sees the run's files before any work."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distilnas.distill.errors import UserError
from distilnas.distill.remote import Remote, is_uri, located, shown
from distilnas.search.config import RayConfig

PROBE_SECONDS = 120.0
"""How long a node may take to answer the probe (its first worker starts: imports torch, distilnas)."""


class RaySession:
    """The Ray this process started (alone on this machine) or joined (a cluster's: trials may run on
    machines without the driver's disk)."""

    joined: str | None = None
    """The cluster's address, when one was joined."""


class RunStorage:
    """The run kept at a URI that this process works on in a local copy (:mod:`distilnas.search.mirror`);
    None: the run folder is all there is."""

    local: Path | None = None
    uri: str | None = None


def remote_of(path: Path) -> str | None:
    """The URI of ``path`` in the run storage, for a path in the local copy of a run kept at a URI."""
    if RunStorage.local is None or RunStorage.uri is None:
        return None
    try:
        rel = path.resolve().relative_to(RunStorage.local)
    except ValueError:
        return None
    return Remote(RunStorage.uri).child(rel.as_posix()).uri


def shelf(folder: Path) -> str | None:
    """``folder`` (the run folder's artifacts; at the run storage's URI for a run kept at one) when Ray
    is a cluster's: the driver publishes there what trials read from its cache
    (:mod:`distilnas.distill.artifacts`); None when Ray runs here alone."""
    return (remote_of(folder) or str(folder.resolve())) if RaySession.joined else None


def init_ray(
    address: str | None, num_cpus: int | None = None, runtime_env: dict[str, Any] | None = None
) -> None:
    """Start Ray here (no address) or join a cluster; an unreachable address is a clear error.
    ``runtime_env`` (``ray.runtime_env``) is what Ray sets up in each worker: pip packages, a working_dir."""
    if ray.is_initialized():
        return
    if address and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise UserError(f"ray.address {address!r}: cannot connect ({exc})") from None
    try:
        if address:
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
            RaySession.joined = address
        else:
            # "local": a new Ray here, even where `ray start` left a cluster Ray would otherwise join
            RaySession.joined = None
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env=runtime_env,
            )
    except (ConnectionError, RuntimeError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if runtime_env and "runtime_env" in str(exc).lower():
            raise UserError(f"ray.runtime_env {runtime_env!r}: Ray cannot set it up ({reason})") from None
        raise UserError(f"ray.address {address!r}: cannot connect ({reason})") from None


def start_ray(ray_cfg: RayConfig, address: str | None = None) -> None:
    """Ray for a run: here, or the cluster at ``address`` (else the config's ``ray.address``), with the
    config's ``ray.runtime_env``."""
    init_ray(address or ray_cfg.address, runtime_env=ray_cfg.runtime_env)


def trial_slots(cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None) -> int:
    """How many trials the Ray cluster runs at once."""
    res = ray.cluster_resources()
    slots = int(res.get("CPU", 1) // cpus_per_trial) if cpus_per_trial else 1 << 30
    if gpus_per_trial:
        slots = min(slots, int(res.get("GPU", 0) // gpus_per_trial))
    if max_concurrent:
        slots = min(slots, max_concurrent)
    return max(1, slots)


# ---------------------------------------------------------------------- every node sees the run's files


def anchor(path: Path) -> Path:
    """The folder that holds ``path`` once it is made: itself, else its nearest existing ancestor."""
    path = path.resolve()
    while not path.is_dir():
        path = path.parent
    return path


def listing(folder: Path) -> list[tuple[str, int]]:
    """What a folder holds, as a node sees it: names and the sizes of its files."""
    return sorted((p.name, p.stat().st_size if p.is_file() else -1) for p in folder.iterdir())


def look(
    writable: dict[str, tuple[str, str]],
    readable: dict[str, tuple[str, list[tuple[str, int]]]],
    local: dict[str, str],
) -> tuple[str, str]:
    """On one node: in each local folder (or the nearest that exists) this node can write; each writable
    folder holds the driver's token file, and this node can write beside it; each readable folder lists
    as the driver lists it. The first problem and its field, or ('', '') when none."""
    node = ray.get_runtime_context().get_node_id()
    for field, folder in local.items():
        probe = anchor(Path(folder)) / f".distilnas-probe-{uuid.uuid4().hex}"
        try:
            probe.write_text("", encoding="utf-8")
            probe.unlink()
        except OSError as exc:
            return f"cannot write in {probe.parent} ({type(exc).__name__}: {exc.strerror or exc})", field
    for field, (folder, token) in writable.items():
        place, name = located(folder), shown(folder)
        seen, reason = "", ""
        try:
            seen = (place / f".distilnas-probe-{token}").read_text(encoding="utf-8")
        except OSError as exc:
            reason = f"; {str(exc).splitlines()[0]}" if is_uri(folder) else ""
        if seen != token:
            return f"does not see {field} {name} (the driver's probe file there is missing{reason})", field
        try:
            (place / f".distilnas-probe-{token}-{node}").write_text(token, encoding="utf-8")
        except OSError as exc:
            return f"cannot write in {field} {name} ({type(exc).__name__}: {exc.strerror or exc})", field
    for field, (folder, driver) in readable.items():
        try:
            here = [tuple(x) for x in listing(Path(folder))]
        except OSError as exc:
            return f"cannot read {field} {folder} ({type(exc).__name__}: {exc.strerror or exc})", field
        if here != [tuple(x) for x in driver]:
            return f"sees {field} {folder} unlike the driver (its files differ)", field
    return "", ""


def check_nodes(
    writable: dict[str, Path | str], readable: dict[str, Path], local: dict[str, Path] | None = None
) -> None:
    """Every alive node of the cluster sees the run's folders as a trial there needs them: ``writable``
    folders (the run storage: a shared folder, or a URI) are the driver's storage there and writable;
    ``readable`` ones (GLUE, the teacher) hold the same files; ``local`` ones (the cache: each node's
    own) can be written. One line naming the first node that does not, before any work; the probe's
    files are removed."""
    own = {field: str(path.resolve()) for field, path in (local or {}).items()}
    token = uuid.uuid4().hex
    folders = {f: located(p) if is_uri(p) else anchor(Path(p)) for f, p in writable.items()}
    nodes = [n for n in ray.nodes() if n["Alive"]]
    try:
        for folder in folders.values():
            (folder / f".distilnas-probe-{token}").write_text(token, encoding="utf-8")
        wants = {
            f: (folder.uri if isinstance(folder, Remote) else str(folder), token)
            for f, folder in folders.items()
        }
        shows = {f: (str(p.resolve()), listing(p.resolve())) for f, p in readable.items()}
        task = ray.remote(num_cpus=0, max_retries=0)(look)
        pending = {
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                wants, shows, own
            ): n
            for n in nodes
        }
        ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=PROBE_SECONDS)
        for ref in [*ready, *late]:
            node = pending[ref]
            where = f"ray node {node['NodeManagerAddress']} ({node['NodeID'][:8]})"
            if ref in late:
                for r in late:
                    ray.cancel(r, force=True)
                raise UserError(
                    f"{where}: did not answer the storage probe in {PROBE_SECONDS:.0f} s "
                    "(can it start workers?)"
                )
            try:
                problem, field = ray.get(ref)
            except Exception as exc:
                reason = str(exc).strip().splitlines()[-1][:300]
                raise UserError(
                    f"{where}: cannot run distilnas ({reason}): install it there from the same constraints "
                    "file, or set ray.runtime_env"
                ) from None
            if field in own:
                raise UserError(
                    f"{where}: {field} {own[field]}: {problem}: trials there build their caches in it; "
                    "make it a writable folder on every node"
                )
            if problem and isinstance(folders.get(field), Remote):
                raise UserError(
                    f"{where}: {problem}: trials there would fail; give every node the run storage's "
                    "network and credentials"
                )
            if problem:
                fields = ", ".join([*folders, *readable])
                raise UserError(
                    f"{where}: {problem}: trials there would fail; put the run's folders ({fields}) on a "
                    "filesystem every node mounts"
                )
    finally:
        names = [f".distilnas-probe-{token}", *(f".distilnas-probe-{token}-{n['NodeID']}" for n in nodes)]
        for folder in folders.values():
            for name in names:
                (folder / name).unlink(missing_ok=True)
