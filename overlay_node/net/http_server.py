"""Our HTTP/1.1 server: ASGI 3 applications (the ``http`` scope) on a listening socket bound by the caller (TCP,
TCP with TLS, or a unix socket), on trio, over the sans-IO codec in ``overlay_node/wire/http1.py``.

Why not hypercorn: on a 2-core machine hypercorn + h11 spent 0.3-0.4 ms of the event loop's CPU per trivial request;
this server is the thin shell the overlay host's request rates need (``bench/bench_http.py``).

Theory of operation:

1. One task per connection, none per request: the task reads a request head, calls the application, and reads
   the next head (pipelined requests are answered in order) once the response is complete and the body read or
   drained. The application's ``receive()`` reads the socket on demand (the body, as ``http.request`` messages with
   ``more_body``; ``100 Continue`` first when the client expects it); its ``send()`` writes each body piece at
   once (a streamed NDJSON line reaches the client when it is sent). When the application gives a
   ``Content-Length`` the status line and headers wait for the first body piece, so that a short answer is one
   write; without one (a streamed answer) they go out at ``http.response.start``.
2. Plain sockets are driven directly (a non-blocking ``recv``/``send`` first, ``trio.lowlevel.wait_readable`` /
   ``wait_writable`` only when it would block); TLS goes through ``trio.SSLStream``.
3. Each connection has one deadline, a float moved in place, and one cancel scope; one watcher task per server
   cancels the connections whose deadline passed, every ``tick`` (a quarter of the shortest timeout, 5 ms to 1 s),
   so a timeout fires up to a tick late and no timer is armed per request (moving a trio deadline costs more than
   parsing the request). The deadline is: the time to send a whole request head (``head_timeout``, from a new
   connection or from the head's first byte: slowloris), the idle time between requests (``keep_alive_timeout``),
   the TLS handshake (``tls_handshake_timeout``), a body read or a response write that blocks (``read_timeout``,
   ``write_timeout``). While the application runs it is infinite (a long NDJSON operation is fine); a read or write
   that completes at once does not touch it.
4. ASGI spec 2.4: ``send()`` raises :class:`ClientDisconnected` (an ``OSError``) once a write fails;
   ``receive()`` answers ``http.disconnect`` when the client closed its side, after the response is complete, or
   when the body broke a rule (its 4xx is then answered instead of the application's response).
5. Errors: a malformed or oversized head is answered with its status (400, 413, 414, 431, 501, 505) and the
   connection closed; an application error before its response started is answered ``500
   {"status":"error","code":"internal","message":"internal error"}`` and logged once; after it started, the
   connection is closed (and the error logged once). ``EMFILE``/``ENFILE`` (and other out-of-resources errors) on
   accept are counted (``on_accept_failure``), logged as one warning line per burst and at most once per
   ``ACCEPT_WARN_INTERVAL``, never with a traceback, and retried with a doubling backoff (10 ms to 1 s); the
   connections already open are served meanwhile.
6. At most ``max_connections`` connections: at the limit, when a new client is waiting in the listen backlog, the
   longest-idle keep-alive connection is closed to make room; when every connection is busy, new clients wait in the
   backlog until one ends or goes idle (no 503: accepting a client only to refuse it costs what serving it would).
   With ``max_connections_per_ip``, a TCP client whose IP address already has that many connections open is
   answered ``503 too_many_connections`` with ``Retry-After`` and closed at once, so that one address (slowloris)
   cannot hold the slots every other client waits for.
7. Graceful shutdown (``shutdown_trigger`` returns): the listening socket is closed, idle keep-alive connections
   are closed at once, requests in flight finish within ``graceful_timeout`` (their responses say
   ``Connection: close``), then everything left is cancelled.
8. With ``max_body_memory``, the request bodies of the requests in progress hold at most that many bytes, all
   connections together: a ``Content-Length`` body over ``SMALL_BODY`` (64 KiB) takes its room when the application
   first asks for it (before ``100 Continue``), a chunked one as its bytes past ``SMALL_BODY`` arrive, and the room
   is given back when the application returns. A body that finds no room waits (unread: TCP pushes back on the
   client) in order of arrival, at most ``body_wait``; then it is answered ``503 busy`` with ``Retry-After`` and
   the connection closed. Small bodies never wait (together they are bounded by ``max_connections`` times
   ``SMALL_BODY``); a body larger than the whole budget gets in when it is the only one.

9. Each request's scope says how many connections the server had open when its head was read
   (``scope["connections"]``, a key of this server's): 1 means no other client's request is in progress or can
   begin before this one yields, but on a connection not accepted yet (the overlay engine's lone submissions use it).

The lifespan protocol is not spoken: our Starlette apps have no lifespan handlers.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Final
from urllib.parse import unquote

import trio

from overlay_node.errors import ConfigError, LocalProtocolError
from overlay_node.wire.http1 import (
    CONTINUE_RESPONSE,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_HEAD,
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_REQUEST_LINE,
    HttpError,
    Request,
    RequestParser,
    ResponseWriter,
    error_response,
)

__all__ = ["ASGIApp", "ClientDisconnected", "HttpServer", "HttpServerConfig", "ServerStatistics", "serve_asgi"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: bytes asked of the socket per read
RECEIVE_SIZE: Final = 64 * 1024
#: at most this many unread bytes are read and dropped before closing a refused connection (lingering close)
LINGER_BYTES: Final = 256 * 1024
#: and for at most this long
LINGER_SECONDS: Final = 2.0
#: a request body up to this size takes no room in ``max_body_memory`` (all of them together are bounded by
#: ``max_connections`` times this)
SMALL_BODY: Final = 64 * 1024
#: seconds a client refused for ``max_connections_per_ip`` or ``max_body_memory`` is asked to wait (Retry-After)
RETRY_AFTER: Final = 1
#: bounds of the deadline watcher's period (a quarter of the shortest timeout)
TICK_MIN: Final = 0.005
TICK_MAX: Final = 1.0
ACCEPT_BACKOFF_MIN: Final = 0.01
ACCEPT_BACKOFF_MAX: Final = 1.0
#: seconds between warnings about failed accepts
ACCEPT_WARN_INTERVAL: Final = 10.0
#: accept errors that mean "out of resources": retried after a backoff (trio's serve_listeners' list)
_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: accept errors about the one connection being accepted (accept(2)): retried at once
_TRANSIENT_ERRNOS: Final = frozenset(
    getattr(errno, name)
    for name in ("ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH",
                 "EOPNOTSUPP", "ENETUNREACH", "EPERM", "EINTR")
    if hasattr(errno, name)
)  # fmt: skip
_INF: Final = math.inf


class ClientDisconnected(ConnectionError):
    """The client is gone: raised from the ASGI ``send()`` once a write to it failed (ASGI HTTP spec 2.4)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpServerConfig:
    """Limits and timeouts of one server (seconds and bytes).

    Raises:
        ConfigError: a limit below 1 or a timeout not above 0.
    """

    #: longest request line (414 beyond it)
    max_request_line: int = DEFAULT_MAX_REQUEST_LINE
    #: largest request head (431 beyond it)
    max_head: int = DEFAULT_MAX_HEAD
    #: most header lines (431 beyond it)
    max_headers: int = DEFAULT_MAX_HEADERS
    #: largest request body (413 beyond it); the applications enforce their own, smaller limits
    max_body: int = DEFAULT_MAX_BODY
    #: most connections open at once (see the module's rule 6)
    max_connections: int = 1000
    #: the listen backlog
    backlog: int = 1024
    #: time to receive a whole request head, from the connection's start or the head's first byte
    head_timeout: float = 10.0
    #: idle time allowed between two requests on a keep-alive connection
    keep_alive_timeout: float = 30.0
    #: time a body read may wait for the client's bytes
    read_timeout: float = 60.0
    #: time one response write (a head, a body piece) may wait for the client to read
    write_timeout: float = 60.0
    #: time to complete a TLS handshake
    tls_handshake_timeout: float = 10.0
    #: an unread request body of up to this many bytes is read and dropped to keep the connection; a larger one
    #: closes it
    drain_limit: int = 64 * 1024
    #: most connections open at once from one client IP address (None: no such limit; see the module's rule 6)
    max_connections_per_ip: int | None = None
    #: most bytes of request bodies held by requests in progress, all connections together (None: no budget; see
    #: the module's rule 8)
    max_body_memory: int | None = None
    #: how long a request body waits for room in ``max_body_memory`` before it is answered 503
    body_wait: float = 5.0

    def __post_init__(self) -> None:
        limits = ("max_request_line", "max_head", "max_headers", "max_body", "max_connections", "backlog")
        for name in limits:
            if getattr(self, name) < 1:
                raise ConfigError(f"http server: {name} must be at least 1")
        for name in ("head_timeout", "keep_alive_timeout", "read_timeout", "write_timeout", "tls_handshake_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"http server: {name} must be above 0")
        if self.drain_limit < 0:
            raise ConfigError("http server: drain_limit must not be negative")
        for name in ("max_connections_per_ip", "max_body_memory"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"http server: {name} must be at least 1")
        if not self.body_wait > 0:
            raise ConfigError("http server: body_wait must be above 0")


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """What :meth:`HttpServer.statistics` reports."""

    #: connections open now (handshaking, idle or busy)
    connections: int
    #: of which idle between requests
    idle: int
    #: requests handed to the application so far
    requests: int
    #: accept attempts that failed for lack of resources (EMFILE, ENFILE, ...)
    accept_failures: int
    #: connections refused because their IP address had ``max_connections_per_ip`` open
    refused_per_ip: int = 0
    #: bytes of ``max_body_memory`` held by requests in progress now, and the most ever held
    body_bytes: int = 0
    body_bytes_peak: int = 0
    #: request bodies answered 503 because ``max_body_memory`` stayed full for ``body_wait``
    body_refused: int = 0


class BodyBudgetFull(HttpError):
    """The node-wide budget of request body bytes stayed full for ``body_wait``: 503 with ``Retry-After``."""

    code = "busy"
    http_status = 503


class _BodyBudget:
    """Bytes of request bodies that requests in progress may hold, all connections together (rule 8).

    A request takes room before its body is read (a ``Content-Length`` body all at once, a chunked one piece by
    piece) and gives it back when its exchange ends. Requests that find no room wait in order of arrival; a body
    larger than the whole budget gets in when it is the only one. Waiters hold nothing, so waiting cannot deadlock.
    """

    __slots__ = ("held", "limit", "peak", "refused", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.refused = 0
        #: the waiting requests in order: the event set when their room is taken for them -> the bytes they want
        self.waiters: dict[trio.Event, int] = {}

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    def _take(self, size: int) -> None:
        self.held += size
        self.peak = max(self.peak, self.held)

    async def acquire(self, size: int, wait: float) -> bool:
        """Take ``size`` bytes, waiting at most ``wait`` seconds for room; whether they were taken."""
        if not self.waiters and self._fits(size):
            self._take(size)
            return True
        ready = trio.Event()
        self.waiters[ready] = size
        try:
            with trio.move_on_after(wait):
                await ready.wait()
        except BaseException:  # cancelled while waiting (the connection ends): give back what we hold
            if ready.is_set():
                self.release(size)
            else:
                del self.waiters[ready]
                self._wake()
            raise
        if ready.is_set():
            return True  # taken for us by release()
        del self.waiters[ready]
        self._wake()  # a large waiter at the head gave up: those behind it may fit
        self.refused += 1
        return False

    def release(self, size: int) -> None:
        self.held -= size
        self._wake()

    def _wake(self) -> None:
        """Hand room to the waiters at the head of the line, in order, while they fit."""
        while self.waiters:
            ready, size = next(iter(self.waiters.items()))
            if not self._fits(size):
                return
            del self.waiters[ready]
            self._take(size)
            ready.set()


def with_retry_after(answer: bytes, seconds: int = RETRY_AFTER) -> bytes:
    """``answer`` (a whole response from ``error_response``) with a ``Retry-After`` header."""
    status_line, crlf, rest = answer.partition(b"\r\n")
    return b"%s%sRetry-After: %d\r\n%s" % (status_line, crlf, seconds, rest)


# -- transports -----------------------------------------------------------------------------------------------------


class _SocketIO:
    """A plain (TCP or unix) socket driven directly: a read or write that can complete at once costs one system call
    and no trip through trio's scheduler."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def receive_nowait(self) -> bytes | None:
        """Bytes (``b""``: end of stream or reset), or ``None`` when nothing is there yet."""
        try:
            return self.sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    async def receive(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                return self.sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return b""

    def send_nowait(self, data: bytes) -> int:
        """Bytes written without waiting. Raises ClientDisconnected."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise ClientDisconnected(f"the client has gone away: {exc}") from exc

    async def send_rest(self, view: memoryview) -> None:
        while view:
            await trio.lowlevel.wait_writable(self.sock)
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                continue
            except OSError as exc:
                raise ClientDisconnected(f"the client has gone away: {exc}") from exc

    def send_eof(self) -> bool:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return True

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class _StreamIO:
    """A trio stream (``trio.SSLStream`` for TLS)."""

    __slots__ = ("stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    def receive_nowait(self) -> bytes | None:
        return None

    async def receive(self) -> bytes:
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        return data if isinstance(data, bytes) else bytes(data)

    def send_nowait(self, _data: bytes) -> int:
        return 0

    async def send_rest(self, view: memoryview) -> None:
        try:
            await self.stream.send_all(view)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientDisconnected(f"the client has gone away: {exc}") from exc

    def send_eof(self) -> bool:
        return False

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


_IO = _SocketIO | _StreamIO


# -- one request/response exchange ------------------------------------------------------------------------------------


class _Exchange:
    """The ASGI ``receive``/``send`` pair of one request."""

    __slots__ = (
        "body_done",
        "body_error",
        "broken",
        "conn",
        "continue_sent",
        "disconnect_wait",
        "error_sent",
        "final_sent",
        "request",
        "reserved",
        "seen",
        "writer",
    )

    def __init__(self, conn: _Connection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.writer: ResponseWriter | None = None
        #: the last http.request message was handed out (or the body cannot be read any more)
        self.final_sent = False
        #: the body was read whole
        self.body_done = not request.has_body
        #: the body broke a rule: answered with its status instead of the application's response
        self.body_error: HttpError | None = None
        self.error_sent = False
        #: a write to the client failed
        self.broken = False
        self.continue_sent = False
        self.disconnect_wait: trio.CancelScope | None = None
        #: bytes of the server's body budget this request holds (given back when its exchange ends)
        self.reserved = 0
        #: body bytes of a chunked request handed out so far
        self.seen = 0

    @property
    def started(self) -> bool:
        return self.error_sent or (self.writer is not None and self.writer.started)

    async def receive(self) -> Message:
        if self.final_sent:
            if not (self.body_error or self.error_sent or self.broken or (self.writer and self.writer.complete)):
                await self._wait_disconnect()
            return {"type": "http.disconnect"}
        conn = self.conn
        parser = conn.parser
        budget = conn.server.body_budget
        if budget is not None and not self.reserved:
            length = self.request.content_length
            if length and length > SMALL_BODY and not await self._reserve(budget, length):
                return {"type": "http.disconnect"}
        try:
            data, done = parser.read_body()
            while not data and not done:
                if conn.eof:
                    self.final_sent = True
                    return {"type": "http.disconnect"}
                if self.request.expect_continue and not self.continue_sent and not self.started:
                    self.continue_sent = True
                    try:
                        await conn.write(CONTINUE_RESPONSE)
                    except ClientDisconnected:
                        self.broken = conn.eof = self.final_sent = True
                        return {"type": "http.disconnect"}
                chunk = await conn.read(conn.config.read_timeout)
                if not chunk:
                    conn.eof = True
                    self.final_sent = True
                    return {"type": "http.disconnect"}
                parser.receive_data(chunk)
                data, done = parser.read_body()
        except HttpError as exc:
            logger.debug("%s: request body refused: %s", conn.label, exc)
            self.body_error = exc
            conn.must_close = True
            self.final_sent = True
            return {"type": "http.disconnect"}
        if budget is not None and self.request.chunked and data:
            # a chunked body takes room as it arrives (past its first SMALL_BODY bytes)
            self.seen += len(data)
            wanted = self.seen - SMALL_BODY - self.reserved
            if wanted > 0 and not await self._reserve(budget, wanted):
                return {"type": "http.disconnect"}
        if done:
            self.final_sent = self.body_done = True
        return {"type": "http.request", "body": data, "more_body": not done}

    async def _reserve(self, budget: _BodyBudget, size: int) -> bool:
        """Take ``size`` bytes of the body budget for this request (rule 8); when it stays full for ``body_wait``
        the body is refused (503 with Retry-After, the connection closed) and False returned."""
        if await budget.acquire(size, self.conn.config.body_wait):
            self.reserved += size
            return True
        logger.debug("%s: request body refused: the body budget is full", self.conn.label)
        self.body_error = BodyBudgetFull(
            f"the server is reading too many request bodies at once; retry after {RETRY_AFTER} s"
        )
        self.conn.must_close = True
        self.final_sent = True
        return False

    async def _wait_disconnect(self) -> None:
        """Until the client closes its side or the response is complete; bytes of a pipelined request that arrive
        meanwhile are kept (up to one head's worth)."""
        conn = self.conn
        if conn.eof:
            return
        with trio.CancelScope() as scope:
            self.disconnect_wait = scope
            try:
                while True:
                    if conn.parser.buffered > conn.config.max_head:
                        await trio.sleep_forever()
                    data = await conn.io.receive()
                    if not data:
                        conn.eof = True
                        return
                    conn.parser.receive_data(data)
            finally:
                self.disconnect_wait = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            writer = self.writer
            if writer is None:
                raise LocalProtocolError("http.response.body before http.response.start")
            if self.body_error is not None:
                return  # the body's error status was answered instead
            if self.broken:
                raise ClientDisconnected("the client has gone away")
            if not writer.started:
                self._decide_keep_alive(writer)
            conn = self.conn
            pieces = writer.body(message.get("body", b""), message.get("more_body", False))
            try:
                for piece in pieces:
                    await conn.write(piece)
            except ClientDisconnected:
                self.broken = True
                raise
            if writer.complete and self.disconnect_wait is not None:
                self.disconnect_wait.cancel()
            return
        if kind == "http.response.start":
            if self.writer is not None or self.error_sent:
                raise LocalProtocolError("the response was already started")
            if self.body_error is not None:
                await self.conn.send_refusal(self.body_error)
                self.error_sent = True
                return
            request = self.request
            writer = ResponseWriter(
                head_request=request.method == "HEAD",
                http11=request.version == "1.1",
                keep_alive=request.keep_alive,
                date=self.conn.server.date(),
            )
            writer.start(message["status"], message.get("headers", ()))
            self.writer = writer
            if writer.declared_length is None:
                # a streamed answer (no length): the client sees the status now, not with the first piece, which
                # may be long in coming (NDJSON progress). With a length, the head waits for the body: one write.
                self._decide_keep_alive(writer)
                try:
                    await self.conn.write(writer.head())
                except ClientDisconnected:
                    self.broken = True
                    raise
            return
        raise LocalProtocolError(f"unexpected ASGI message {kind!r}")

    def _decide_keep_alive(self, writer: ResponseWriter) -> None:
        """Just before the head goes out: may the connection stay open after this response?"""
        conn = self.conn
        if conn.server.closing or conn.eof or conn.must_close:
            writer.keep_alive = False
        elif not self.body_done and not conn.parser.body_complete:
            remaining = conn.parser.body_remaining
            waiting = self.request.expect_continue and not self.continue_sent  # the client may never send it
            if waiting or remaining is None or remaining > conn.config.drain_limit:
                writer.keep_alive = False


# -- one connection ---------------------------------------------------------------------------------------------------


class _Connection:
    """One client connection: its requests in order, under one cancel scope that carries every timeout."""

    __slots__ = (
        "cancel_scope",
        "client",
        "config",
        "current",
        "deadline",
        "eof",
        "head_started",
        "io",
        "label",
        "must_close",
        "parser",
        "server",
    )

    def __init__(self, server: HttpServer, io: _IO, client: tuple[str, int] | None, label: str) -> None:
        self.server = server
        self.config = server.config
        self.io = io
        self.client = client
        self.label = label
        cfg = self.config
        self.parser = RequestParser(
            max_request_line=cfg.max_request_line,
            max_head=cfg.max_head,
            max_headers=cfg.max_headers,
            max_body=cfg.max_body,
        )
        #: cancelled when the connection must end (its deadline passed, the server evicts it or shuts down)
        self.cancel_scope = trio.CancelScope()
        #: when the connection times out (trio's clock; infinite while the application runs); the server's deadline
        #: watcher cancels it after that
        self.deadline = _INF
        #: the client closed its side (or reset the connection)
        self.eof = False
        #: close after the current response (the request body cannot be read to its end)
        self.must_close = False
        #: a request head has begun arriving and is not complete
        self.head_started = False
        self.current: _Exchange | None = None

    async def read(self, timeout: float) -> bytes:
        """Bytes from the client (``b""``: gone), waiting at most ``timeout`` (cancels the connection)."""
        io = self.io
        data = io.receive_nowait()
        if data is not None:
            return data
        previous = self.deadline
        self.deadline = trio.current_time() + timeout
        try:
            return await io.receive()
        finally:
            self.deadline = previous

    async def write(self, data: bytes) -> None:
        """Send all of ``data``; a write that blocks longer than ``write_timeout`` cancels the connection.

        Raises:
            ClientDisconnected: the client is gone.
        """
        io = self.io
        sent = io.send_nowait(data)
        if sent == len(data):
            return
        previous = self.deadline
        self.deadline = trio.current_time() + self.config.write_timeout
        try:
            await io.send_rest(memoryview(data)[sent:])
        finally:
            self.deadline = previous

    async def send_error(self, status: int, code: str, message: str) -> None:
        """Our own JSON error answer, with ``Connection: close``."""
        try:
            await self.write(error_response(status, code, message, date=self.server.date()))
        except ClientDisconnected:
            self.eof = True

    async def send_refusal(self, error: HttpError) -> None:
        """The answer to a request refused while its body was read (503 ones say when to retry)."""
        answer = error_response(error.http_status, error.code, str(error), date=self.server.date())
        if error.http_status == 503:
            answer = with_retry_after(answer)
        try:
            await self.write(answer)
        except ClientDisconnected:
            self.eof = True

    async def run(self, tls: ssl.SSLContext | None, sock: socket.socket) -> None:
        server = self.server
        try:
            with self.cancel_scope:
                if tls is not None:
                    await self._handshake(tls, sock)
                await self._serve()
            if self.cancel_scope.cancelled_caught:
                self._on_timeout()
        except Exception:
            # this connection's own failure (a bug or an unexpected socket error): it must not stop the server
            logger.exception("%s: http connection failed", self.label)
        finally:
            server._idle.pop(self, None)
            with trio.CancelScope(shield=True):
                await self.io.aclose()
            server._connection_closed(self)

    async def _handshake(self, tls: ssl.SSLContext, sock: socket.socket) -> None:
        stream = trio.SSLStream(
            trio.SocketStream(trio.socket.from_stdlib_socket(sock)), tls, server_side=True, https_compatible=True
        )
        self.io = _StreamIO(stream)
        self.deadline = trio.current_time() + self.config.tls_handshake_timeout
        try:
            await stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("%s: TLS handshake failed: %s", self.label, exc.__cause__ or exc)
            self.eof = True

    def _on_timeout(self) -> None:
        """The connection's deadline passed (or the server closed it): a request that was cut short gets a
        best-effort 408."""
        exchange = self.current
        if self.head_started or (exchange is not None and not exchange.started and not exchange.broken):
            try:
                self.io.send_nowait(error_response(408, "timeout", "request timed out", date=self.server.date()))
            except ClientDisconnected:
                pass

    async def _serve(self) -> None:
        if self.eof:
            return
        server = self.server
        cfg = self.config
        parser = self.parser
        io = self.io
        idle_timeout = cfg.head_timeout  # a new connection has head_timeout to send its first request
        waited = True
        while True:
            try:
                request = parser.next_request()
            except HttpError as exc:
                logger.debug("%s: request refused: %s", self.label, exc)
                self.head_started = False
                await self.send_error(exc.http_status, exc.code, str(exc))
                await self._linger()
                return
            if request is None:
                if not parser.buffered and not self.head_started:
                    # idle between requests
                    if server.closing:
                        return
                    # no speculative recv here: the client is rarely that quick, and the wait is the checkpoint
                    # that lets the other connections run
                    server._idle[self] = None
                    server._wake_acceptor()
                    self.deadline = trio.current_time() + idle_timeout
                    try:
                        data = await io.receive()
                    finally:
                        server._idle.pop(self, None)
                else:
                    if not self.head_started:
                        self.head_started = True
                        self.deadline = trio.current_time() + cfg.head_timeout
                    data = await io.receive()
                waited = True
                if not data:
                    return  # the client closed (a partial head is dropped)
                parser.receive_data(data)
                continue
            if not waited:
                await trio.lowlevel.checkpoint()  # pipelined requests: let other connections run between them
            waited = False
            self.head_started = False
            idle_timeout = cfg.keep_alive_timeout
            self.deadline = _INF
            if not await self._exchange(request) or server.closing:
                return

    async def _exchange(self, request: Request) -> bool:
        """Run the application for ``request``; whether the connection can carry another request."""
        server = self.server
        exchange = _Exchange(self, request)
        self.current = exchange
        server._requests += 1
        raw_path = request.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request.version,
            "method": request.method,
            "scheme": server.scheme,
            "path": path,
            "raw_path": raw_path,
            "query_string": request.query,
            "root_path": "",
            "headers": request.headers,
            "client": self.client,
            "server": server.address,
            "connections": len(server._connections),
        }
        try:
            await server.app(scope, exchange.receive, exchange.send)
        except Exception as exc:  # noqa: BLE001 -- the app boundary: a failing app gets a 500, the server goes on
            self.current = None
            return await self._app_failed(exchange, exc)
        finally:
            budget = server.body_budget
            if exchange.reserved and budget is not None:  # the application is done with the body
                budget.release(exchange.reserved)
                exchange.reserved = 0
        # (left set when cancelled: the connection's timeout handler looks at it)
        self.current = None
        if exchange.body_error is not None:
            if not exchange.started:
                await self.send_refusal(exchange.body_error)
            if isinstance(exchange.body_error, BodyBudgetFull):
                await self._linger()  # the client may still be sending the body: let it read the 503 first
            return False
        writer = exchange.writer
        if writer is None or not writer.started:
            logger.error("%s %s: the application returned without a response", request.method, path)
            await self.send_error(500, "internal", "internal error")
            return False
        if not writer.complete:
            logger.error("%s %s: the application returned before its response was complete", request.method, path)
            return False
        if not writer.keep_alive or self.eof or self.must_close:
            return False
        if not self.parser.body_complete:
            return await self._drain()
        return True

    async def _app_failed(self, exchange: _Exchange, exc: Exception) -> bool:
        request = exchange.request
        if exchange.broken or self.eof or exchange.body_error is not None:
            # the client went away (or sent a bad body): the application's failure is a consequence
            logger.debug("%s %s failed after the client went away: %r", request.method, request.path, exc)
            if exchange.body_error is not None and not exchange.started:
                await self.send_refusal(exchange.body_error)
            return False
        logger.error("%s %s failed", request.method, request.path.decode("ascii", "replace"), exc_info=exc)
        if not exchange.started:
            await self.send_error(500, "internal", "internal error")
        return False

    async def _drain(self) -> bool:
        """Read and drop the rest of a body the application left unread (at most ``drain_limit`` bytes, checked
        when the response started); whether the connection can go on."""
        parser = self.parser
        try:
            while True:
                _, done = parser.read_body()
                if done:
                    return True
                data = await self.read(self.config.read_timeout)
                if not data:
                    return False
                parser.receive_data(data)
        except HttpError:
            return False

    async def _linger(self) -> None:
        """After refusing a request: close our side, then read and drop what the client still sends for a moment,
        so that closing with unread bytes does not reset the connection before the client read our answer."""
        if not self.io.send_eof():
            return
        self.deadline = min(self.deadline, trio.current_time() + LINGER_SECONDS)
        dropped = 0
        while dropped < LINGER_BYTES:
            data = await self.io.receive()
            if not data:
                return
            dropped += len(data)


# -- the server ---------------------------------------------------------------------------------------------------


class HttpServer:
    """Serves one ASGI application on one listening socket (see the module's docstring).

    Args:
        app: the ASGI 3 application (http scope only).
        config: limits and timeouts.
        ssl_context: serve TLS with this server-side context.
        on_accept_failure: called once per accept that failed for lack of resources (a metric).
    """

    def __init__(
        self,
        app: ASGIApp,
        config: HttpServerConfig | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        on_accept_failure: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.config = config or HttpServerConfig()
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context is not None else "http"
        #: the ASGI ``server`` value: (host, port), or (path, None) for a unix socket
        self.address: tuple[str, int | None] | None = None
        #: set when the graceful shutdown began
        self.closing = False
        self._connections: set[_Connection] = set()
        #: idle keep-alive connections, longest idle first
        self._idle: dict[_Connection, None] = {}
        self._slot: trio.Event | None = None
        self._all_closed: trio.Event | None = None
        self._requests = 0
        self._accept_failures = 0
        #: open connections per client IP address (TCP), when ``max_connections_per_ip`` is set
        self._per_ip: dict[str, int] = {}
        self._refused_per_ip = 0
        cfg = self.config
        #: the body budget (rule 8), when ``max_body_memory`` is set
        self.body_budget = _BodyBudget(cfg.max_body_memory) if cfg.max_body_memory is not None else None
        self._on_accept_failure = on_accept_failure
        self._accept_quiet_until = -_INF
        self._date_second = -1
        self._date = b""
        timeouts = (cfg.head_timeout, cfg.keep_alive_timeout, cfg.read_timeout, cfg.write_timeout)
        #: how often connection deadlines are checked: a timeout fires up to this much late
        self.tick = min(max(min(*timeouts, cfg.tls_handshake_timeout) / 4, TICK_MIN), TICK_MAX)

    def statistics(self) -> ServerStatistics:
        budget = self.body_budget
        return ServerStatistics(
            connections=len(self._connections),
            idle=len(self._idle),
            requests=self._requests,
            accept_failures=self._accept_failures,
            refused_per_ip=self._refused_per_ip,
            body_bytes=budget.held if budget is not None else 0,
            body_bytes_peak=budget.peak if budget is not None else 0,
            body_refused=budget.refused if budget is not None else 0,
        )

    def date(self) -> bytes:
        """The ``Date`` header's value, formatted once a second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, usegmt=True).encode("ascii")
        return self._date

    async def serve(
        self,
        listener: socket.socket,
        *,
        shutdown_trigger: Callable[[], Awaitable[None]],
        graceful_timeout: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve connections on the bound ``listener`` until ``shutdown_trigger`` returns, then shut
        down gracefully (rule 7) and return. The listener is closed when this returns.

        Resource handling: every connection is closed before this returns, also when it is cancelled.
        """
        try:
            listener.listen(self.config.backlog)
            listener.setblocking(False)
            name = listener.getsockname()
            if listener.family == socket.AF_UNIX:
                self.address = (os.fsdecode(name) if name else "", None)
            else:
                self.address = (str(name[0]), int(name[1]))
        except BaseException:
            listener.close()
            raise
        async with trio.open_nursery() as nursery:
            accepting = trio.CancelScope()

            async def accept() -> None:
                try:
                    with accepting:
                        await self._accept_loop(listener, nursery)
                finally:
                    trio.lowlevel.notify_closing(listener)
                    listener.close()

            nursery.start_soon(accept)
            nursery.start_soon(self._watch_deadlines)
            task_status.started()
            await shutdown_trigger()
            # rule 7: stop accepting, close idle connections, give the others graceful_timeout
            accepting.cancel()
            self.closing = True
            for conn in list(self._idle):
                conn.cancel_scope.cancel()
            self._idle.clear()
            if self._connections:
                self._all_closed = trio.Event()
                with trio.move_on_after(graceful_timeout):
                    await self._all_closed.wait()
            nursery.cancel_scope.cancel()

    async def _accept_loop(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        cfg = self.config
        tcp = listener.family in (socket.AF_INET, socket.AF_INET6)
        per_ip = cfg.max_connections_per_ip
        backoff = 0.0
        failures = 0
        reported = False
        while True:
            if len(self._connections) >= cfg.max_connections:
                await self._wait_for_room(listener)
                continue
            try:
                sock, peer = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno in _CAPACITY_ERRNOS:
                    self._accept_failures += 1
                    if self._on_accept_failure is not None:
                        self._on_accept_failure()
                    if not failures and trio.current_time() >= self._accept_quiet_until:
                        logger.warning(
                            "cannot accept http connections: %s (%d open); retrying with backoff",
                            os.strerror(exc.errno or 0),
                            len(self._connections),
                        )
                        reported = True
                    failures += 1
                    backoff = min(max(backoff * 2, ACCEPT_BACKOFF_MIN), ACCEPT_BACKOFF_MAX)
                    await trio.sleep(backoff)
                    continue
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue
                raise
            if failures:
                if reported:
                    logger.warning("accepting http connections again after %d failed attempts", failures)
                    self._accept_quiet_until = trio.current_time() + ACCEPT_WARN_INTERVAL
                failures = 0
                backoff = 0.0
                reported = False
            sock.setblocking(False)
            if tcp:
                ip = str(peer[0])
                if per_ip is not None and self._per_ip.get(ip, 0) >= per_ip:
                    self._refuse_per_ip(sock)
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client: tuple[str, int] | None = (ip, int(peer[1]))
                label = f"http {peer[0]}:{peer[1]}"
            else:
                client = None
                label = f"http unix fd {sock.fileno()}"
            conn = _Connection(self, _SocketIO(sock), client, label)
            self._connections.add(conn)
            if client is not None and per_ip is not None:
                self._per_ip[client[0]] = self._per_ip.get(client[0], 0) + 1
            nursery.start_soon(conn.run, self.ssl_context, sock)
            await trio.lowlevel.checkpoint()

    def _refuse_per_ip(self, sock: socket.socket) -> None:
        """Rule 6: the client's IP address has ``max_connections_per_ip`` connections open: a best-effort 503 and
        close (one non-blocking write; the slots stay with the other addresses)."""
        self._refused_per_ip += 1
        answer = error_response(
            503,
            "too_many_connections",
            f"too many connections from your address; close some or retry after {RETRY_AFTER} s",
            date=self.date(),
        )
        try:
            sock.send(with_retry_after(answer))
        except OSError:
            pass
        sock.close()

    async def _wait_for_room(self, listener: socket.socket) -> None:
        """At the connection limit: once a client waits in the backlog, close the longest-idle connection, else
        wait for a connection to end or go idle (rule 6)."""
        await trio.lowlevel.wait_readable(listener)
        while len(self._connections) >= self.config.max_connections:
            if self._idle:
                victim = next(iter(self._idle))
                del self._idle[victim]
                victim.cancel_scope.cancel()
            self._slot = trio.Event()
            await self._slot.wait()
        self._slot = None

    async def _watch_deadlines(self) -> None:
        """Rule 3: every ``tick``, cancel the connections whose deadline has passed. One timer for the whole server
        instead of one per request: moving a trio deadline costs more than the request's own parsing."""
        while True:
            await trio.sleep(self.tick)
            now = trio.current_time()
            for conn in self._connections:
                if conn.deadline <= now:
                    conn.cancel_scope.cancel()

    def _wake_acceptor(self) -> None:
        if self._slot is not None:
            self._slot.set()

    def _connection_closed(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        client = conn.client
        if client is not None and self.config.max_connections_per_ip is not None:
            left = self._per_ip.pop(client[0], 1) - 1
            if left > 0:
                self._per_ip[client[0]] = left
        self._wake_acceptor()
        if self._all_closed is not None and not self._connections:
            self._all_closed.set()


async def serve_asgi(
    app: ASGIApp,
    listener: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    config: HttpServerConfig | None = None,
    on_accept_failure: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the bound ``listener`` until ``shutdown_trigger`` returns (see :meth:`HttpServer.serve`)."""
    server = HttpServer(app, config, ssl_context=ssl_context, on_accept_failure=on_accept_failure)
    await server.serve(
        listener, shutdown_trigger=shutdown_trigger, graceful_timeout=graceful_timeout, task_status=task_status
    )
