"""Ray start-up: Ray here (no address) or a cluster's, and how many trials it runs at once."""

from __future__ import annotations

import socket

import ray

from distilnas.distill.errors import UserError


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Start Ray here (no address) or join a cluster; an unreachable address is a clear error."""
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
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"ray.address {address!r}: cannot connect ({exc})") from None


def trial_slots(cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None) -> int:
    """How many trials the Ray cluster runs at once."""
    res = ray.cluster_resources()
    slots = int(res.get("CPU", 1) // cpus_per_trial) if cpus_per_trial else 1 << 30
    if gpus_per_trial:
        slots = min(slots, int(res.get("GPU", 0) // gpus_per_trial))
    if max_concurrent:
        slots = min(slots, max_concurrent)
    return max(1, slots)
