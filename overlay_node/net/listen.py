"""Listening sockets and serving an ASGI app on them with our HTTP/1.1 server (``net/http_server.py``).

Binding the sockets here, before serving, lets port 0 report the real port, lets the control socket get its 0600
mode before anyone can connect, and maps bind failures to our own errors (one line and exit code 7 from
``overlay-node run``). The node serves its public and control apps with it, the devnet its ARC app; the peer
manager binds the swarm port with :func:`open_swarm_listeners`.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from overlay_node.errors import DataDirError, TransportError
from overlay_node.net.accept import AcceptGuard, GuardedListener
from overlay_node.net.http_server import ASGIApp, HttpServerConfig, serve_asgi
from overlay_node.net.tcp import EagerListener

__all__ = ["bind_tcp", "bind_unix", "open_swarm_listeners", "serve_app", "server_ssl_context"]


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


async def open_swarm_listeners(
    host: str, port: int, ssl_context: ssl.SSLContext | None, guard: AcceptGuard
) -> tuple[list[trio.abc.Listener[trio.abc.Stream]], list[tuple[str, int]]]:
    """The swarm port's listeners on ``host:port`` (every interface when ``host`` is empty; port 0 picks a free
    one), speaking TLS with ``ssl_context``, their accepts guarded by ``guard``; and the ``(address, port)`` each
    one is bound to.

    Raises:
        TransportError: the port cannot be bound (taken, privileged, the host does not resolve).
    """
    try:
        sockets = await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TransportError(
            f"cannot bind swarm on {host or '*'}:{port}: {reason}; choose another with "
            "`overlay-node run --swarm-host HOST --swarm-port PORT` (or swarm.host/swarm.port in config.toml)"
        ) from exc
    endpoints = [(str(s.socket.getsockname()[0]), int(s.socket.getsockname()[1])) for s in sockets]
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    for listener in sockets:
        inner: trio.abc.Listener[Any] = EagerListener(listener)  # a frame's send yields only for a full buffer
        if ssl_context is not None:
            inner = trio.SSLListener(inner, ssl_context, https_compatible=True)
        listeners.append(GuardedListener(inner, guard))
    return listeners, endpoints


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


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """The TLS context the http port serves with: the certificate chain and key (checked by the caller), TLS 1.2 or
    later, ALPN ``http/1.1``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def serve_app(
    app: ASGIApp,
    sock: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout: float,
    tls: tuple[str, str] | None = None,
    config: HttpServerConfig | None = None,
    on_accept_failure: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the bound ``sock`` until ``shutdown_trigger`` returns, then drain gracefully: idle
    connections close at once, requests in flight get ``graceful_timeout`` seconds; with ``tls`` (certificate and
    key files, checked by the caller) the socket speaks TLS. ``config``: the server's limits and timeouts (the
    defaults of :class:`~overlay_node.net.http_server.HttpServerConfig` without it); ``on_accept_failure``: called
    for each accept that failed for lack of descriptors or memory. The socket is closed when this returns.
    """
    await serve_asgi(
        app,
        sock,
        shutdown_trigger=shutdown_trigger,
        graceful_timeout=graceful_timeout,
        ssl_context=server_ssl_context(*tls) if tls is not None else None,
        config=config,
        on_accept_failure=on_accept_failure,
        task_status=task_status,
    )
