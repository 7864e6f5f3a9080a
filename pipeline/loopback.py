"""Beam's local multi-process runs listen on loopback only.

FnApiRunner's `multi_processing` mode talks to its worker processes over gRPC: the driver's GrpcServer
(apache_beam/runners/portability/fn_api_runner/worker_handlers.py: control, data, state and logging) and one
logging server per worker (local_job_service.SubprocessSdkWorker) each call
`grpc.server(...).add_insecure_port('[::]:0')`, which listens on every interface although the workers always
connect to `localhost:PORT`. Beam has no option for the address, so while `loopback_grpc()` is active,
`grpc.server` hands out servers whose wildcard ports are bound to 127.0.0.1 instead. Explicit addresses are
left alone, and nothing changes outside the `with` block.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

LOOPBACK = "127.0.0.1"
_WILDCARD_HOSTS = ("[::]", "0.0.0.0", "")  # "" as in ":0"
_LOCK = threading.Lock()


def loopback_address(address: str) -> str:
    """'[::]:0' -> '127.0.0.1:0'; any address that names a host keeps it."""
    host, sep, port = address.rpartition(":")
    return f"{LOOPBACK}:{port}" if sep and host in _WILDCARD_HOSTS else address


class _LoopbackServer:
    """A grpc.Server whose add_insecure_port binds loopback where a wildcard was asked for."""

    def __init__(self, server):
        self._server = server

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(loopback_address(address))

    def __getattr__(self, name: str):
        return getattr(self._server, name)


_active = 0  # loopback_grpc blocks open now (nested, or in several threads): grpc.server is restored after the last


@contextlib.contextmanager
def loopback_grpc() -> Iterator[None]:
    """Every gRPC server created in this process while the block runs listens on loopback (see the module)."""
    import grpc

    global _active
    with _LOCK:
        if _active == 0:
            grpc.server = _loopback_factory(grpc.server)
        _active += 1
    try:
        yield
    finally:
        with _LOCK:
            _active -= 1
            if _active == 0:
                grpc.server = grpc.server.original


def _loopback_factory(original):
    def server(*args, **kwargs):
        return _LoopbackServer(original(*args, **kwargs))

    server.original = original
    return server
