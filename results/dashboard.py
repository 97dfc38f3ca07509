"""optuna-dashboard on a run's storage, on 127.0.0.1 by default."""

from __future__ import annotations

import socket

import optuna

from distilnas.distill.errors import UserError


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def serve(storage: optuna.storages.BaseStorage, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the dashboard until interrupted; a port in use is a clear error before anything starts."""
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise UserError("the dashboard needs optuna-dashboard (pip install 'distilnas[dashboard]')") from None
    if not port_free(host, port):
        raise UserError(f"--port {port}: already in use on {host}")
    run_server(storage, host=host, port=port)
