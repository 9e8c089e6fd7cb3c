"""Serving an ASGI app on trio with hypercorn, on sockets we bind ourselves.

Binding the sockets here (rather than letting hypercorn parse ``bind`` strings) lets port 0 report the real port,
lets the control socket get its 0600 mode before anyone can connect, and maps bind failures to our own errors.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.typing import ASGIFramework
from hypercorn.utils import wrap_app
from starlette.types import ASGIApp

from overlay_node.errors import DataDirError, TransportError

logger = logging.getLogger(__name__)


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot bind http on {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A unix socket at ``path`` with mode 0600; a stale socket file from a dead daemon is replaced."""
    if path.exists() or path.is_symlink():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        raise DataDirError(f"cannot create control socket {path}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.setblocking(False)
    return sock


def _hypercorn_config(graceful_timeout: float) -> HypercornConfig:
    config = HypercornConfig()
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("overlay_node.api.hypercorn")
    config.keep_alive_timeout = 30
    return config


async def serve_app(
    app: ASGIApp,
    sock: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout: float,
    tls: tuple[str, str] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the bound ``sock`` until ``shutdown_trigger`` returns, then drain gracefully; with
    ``tls`` (certificate and key files, checked by the caller) the socket speaks TLS.

    hypercorn's public ``serve`` cannot take pre-bound sockets; ``worker_serve`` (which it calls) can.
    """
    sock.listen(128)
    config = _hypercorn_config(graceful_timeout)
    if tls is None:
        sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    else:
        config.certfile, config.keyfile = tls
        sockets = Sockets(secure_sockets=[sock], insecure_sockets=[], quic_sockets=[])

    async def _serve(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await worker_serve(
            wrap_app(cast(ASGIFramework, app), config.wsgi_max_body_size, "asgi"),
            config,
            sockets=sockets,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(_serve)
        task_status.started()
