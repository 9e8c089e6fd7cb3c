"""The HTTP/1.1 server over real sockets on 127.0.0.1 (and a unix socket): keep-alive, pipelining, bodies,
100-continue, streaming, HEAD, limits, timeouts, TLS, errors, the connection limit, accept failures and graceful
shutdown. No sleeps: every wait is on an event, a socket or the server's own timeouts (made short)."""

from __future__ import annotations

import errno
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from overlay_node.net.http_server import ASGIApp, HttpServer, HttpServerConfig, Message, Receive, Scope, Send
from overlay_node.net.listen import bind_tcp, bind_unix, serve_app
from overlay_node.tls import ensure_ca, issue_certificate

LOGGER = "overlay_node.net.http_server"


# -- the application under test -------------------------------------------------------------------------------------


@dataclass
class Probe:
    """What the test app reports and waits on."""

    entered: list[str] = field(default_factory=list)
    slow_entered: trio.Event = field(default_factory=trio.Event)
    release: trio.Event = field(default_factory=trio.Event)
    disconnects: list[str] = field(default_factory=list)
    disconnected: trio.Event = field(default_factory=trio.Event)
    lines: tuple[trio.MemorySendChannel[str], trio.MemoryReceiveChannel[str]] = field(
        default_factory=lambda: trio.open_memory_channel[str](16)
    )
    chunk_sizes: list[int] = field(default_factory=list)
    big_ended: trio.Event = field(default_factory=trio.Event)


class ProbeApp:
    """The app under test: Starlette routes that report to a :class:`Probe`, behind two paths where the raw ASGI
    app itself fails (``/boom`` before its response, ``/boom-late`` after it started)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.starlette = Starlette(
            routes=[
                Route("/hello", self.hello, methods=["GET"]),
                Route("/echo", self.echo, methods=["POST"]),
                Route("/info/{rest:path}", self.info, methods=["GET"]),
                Route("/slow", self.slow, methods=["GET"]),
                Route("/stream", self.stream, methods=["GET"]),
                Route("/big", self.big, methods=["GET"]),
                Route("/wait-disconnect", self.wait_disconnect, methods=["POST"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("boom before the response")
        if scope["path"] == "/boom-late":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
            await send({"type": "http.response.body", "body": b"12345", "more_body": True})
            raise RuntimeError("boom after the response started")
        await self.starlette(scope, receive, send)

    async def hello(self, _request: Request) -> Response:
        self.probe.entered.append("/hello")
        return PlainTextResponse("hello")

    async def echo(self, request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            if chunk:
                self.probe.chunk_sizes.append(len(chunk))
            body += chunk
        return Response(body, media_type="application/octet-stream")

    async def info(self, request: Request) -> Response:
        scope = request.scope
        return JSONResponse(
            {
                "scheme": scope["scheme"],
                "http_version": scope["http_version"],
                "path": scope["path"],
                "raw_path": scope["raw_path"].decode(),
                "query": scope["query_string"].decode(),
                "client": scope["client"],
                "server": scope["server"],
                "connections": scope["connections"],
            }
        )

    async def slow(self, _request: Request) -> Response:
        self.probe.entered.append("/slow")
        self.probe.slow_entered.set()
        await self.probe.release.wait()
        return PlainTextResponse("slow done")

    async def stream(self, _request: Request) -> Response:
        async def lines() -> AsyncIterator[bytes]:
            async for line in self.probe.lines[1]:
                yield (line + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def big(self, _request: Request) -> Response:
        async def pieces() -> AsyncIterator[bytes]:
            try:
                for _ in range(64):
                    yield b"x" * (1024 * 1024)
            finally:
                self.probe.big_ended.set()

        return StreamingResponse(pieces(), headers={"content-length": str(64 * 1024 * 1024)})

    async def wait_disconnect(self, request: Request) -> Response:
        await request.body()
        message = await request.receive()
        self.probe.disconnects.append(message["type"])
        self.probe.disconnected.set()
        return PlainTextResponse("gone")


def make_app(probe: Probe) -> ASGIApp:
    return ProbeApp(probe)


@dataclass
class Running:
    server: HttpServer
    port: int
    stop: trio.Event
    stopped: trio.Event

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def connect(self) -> RawClient:
        return RawClient(await trio.open_tcp_stream("127.0.0.1", self.port))


async def start(
    nursery: trio.Nursery,
    app: ASGIApp,
    *,
    config: HttpServerConfig | None = None,
    graceful: float = 5.0,
    sock: socket.socket | None = None,
) -> Running:
    sock = sock or bind_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = HttpServer(app, config)
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        try:
            await server.serve(sock, shutdown_trigger=stop.wait, graceful_timeout=graceful, task_status=task_status)
        finally:
            stopped.set()

    await nursery.start(run)
    return Running(server, port, stop, stopped)


# -- a raw client that reads responses itself -----------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class RawClient:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buf += data
        return bool(data)

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not await self._fill():
                raise EOFError(f"closed before {marker!r}; got {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(marker)
        return head + marker

    async def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise EOFError("closed in a body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def read_response(self, *, head: bool = False) -> RawResponse:
        raw = await self.read_until(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.lower()] = value.strip()
        if head or status in (204, 304) or status < 200:
            return RawResponse(status, headers, b"")
        if b"content-length" in headers:
            return RawResponse(status, headers, await self.read_exact(int(headers[b"content-length"])))
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size = int((await self.read_until(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await self.read_until(b"\r\n")
                    return RawResponse(status, headers, body)
                body += await self.read_exact(size)
                await self.read_exact(2)
        while await self._fill():
            pass
        body, self.buf = self.buf, b""
        return RawResponse(status, headers, body)

    async def at_eof(self) -> bool:
        """Whether the server closed the connection (and sent nothing more)."""
        if self.buf:
            return False
        try:
            return not await self._fill()
        except trio.BrokenResourceError:
            return True

    async def aclose(self) -> None:
        await self.stream.aclose()


def get(path: str, *extra: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: test\r\n" + b"".join(e + b"\r\n" for e in extra) + b"\r\n"


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    head = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(e + b"\r\n" for e in extra) + b"\r\n" + body


# -- keep-alive, pipelining, bodies ------------------------------------------------------------------------------------


async def test_keep_alive_serves_several_requests_on_one_connection(nursery: trio.Nursery) -> None:
    running = await start(nursery, make_app(Probe()))
    with trio.fail_after(10):
        client = await running.connect()
        for i in range(5):
            await client.send(post("/echo", b"ping %d" % i))
            response = await client.read_response()
            assert (response.status, response.body) == (200, b"ping %d" % i)
            assert b"connection" not in response.headers
            assert b"date" in response.headers
        assert running.server.statistics().requests == 5
        assert running.server.statistics().connections == 1
        await client.aclose()


async def test_httpx_reuses_the_connection(nursery: trio.Nursery) -> None:
    running = await start(nursery, make_app(Probe()))
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=running.base) as http:
            answers = [await http.get("/info/a%20b/c", params={"q": "1"}) for _ in range(3)]
        assert all(a.status_code == 200 for a in answers)
        body = answers[0].json()
        assert body["path"] == "/info/a b/c"
        assert body["raw_path"] == "/info/a%20b/c"
        assert body["query"] == "q=1"
        assert body["scheme"] == "http"
        assert body["http_version"] == "1.1"
        assert body["client"][0] == "127.0.0.1"
        assert body["server"] == ["127.0.0.1", running.port]
        assert running.server.statistics().requests == 3


async def test_the_scope_says_how_many_connections_are_open(nursery: trio.Nursery) -> None:
    """Rule 9: a request on the server's only connection sees 1; with a second one open (idle), 2; once it has
    closed, 1 again."""
    running = await start(nursery, make_app(Probe()))
    with trio.fail_after(10):

        async def connections(client: RawClient) -> int:
            await client.send(get("/info/x"))
            response = await client.read_response()
            assert response.status == 200
            return int(json.loads(response.body)["connections"])

        first = await running.connect()
        assert await connections(first) == 1
        second = await running.connect()
        assert await connections(second) == 2
        assert await connections(first) == 2
        await second.aclose()
        while running.server.statistics().connections > 1:  # the server sees the close at its next read
            await trio.testing.wait_all_tasks_blocked()
        assert await connections(first) == 1
        await first.aclose()


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery) -> None:
    running = await start(nursery, make_app(Probe()))
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(
            get("/hello")
            + post("/echo", b"first body")
            + b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            + get("/info/x")
            + get("/hello", b"Connection: close")
        )
        answers = [await client.read_response() for _ in range(5)]
        assert [a.body for a in answers[:3]] == [b"hello", b"first body", b"abc"]
        assert json.loads(answers[3].body)["path"] == "/info/x"
        assert answers[4].headers[b"connection"] == b"close"
        assert await client.at_eof()


async def test_a_chunked_upload_is_streamed_to_the_app(nursery: trio.Nursery) -> None:
    probe = Probe()
    running = await start(nursery, make_app(probe))
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        pieces = [b"a" * 10, b"b" * 1000, b"c" * 70000]
        for piece in pieces:
            await client.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        await client.send(b"0\r\nX-Trailer: yes\r\n\r\n")
        response = await client.read_response()
        assert response.status == 200
        assert response.body == b"".join(pieces)
        assert sum(probe.chunk_sizes) == 71010
        assert len(probe.chunk_sizes) >= 2


async def test_100_continue_is_sent_when_the_app_reads_the_body(nursery: trio.Nursery) -> None:
    running = await start(nursery, make_app(Probe()))
    with trio.fail_after(10):
        client = await running.connect()
        # as curl does for large uploads: the head, then the body only after 100 Continue
        await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert await client.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send(b"hello")
        response = await client.read_response()
        assert (response.status, response.body) == (200, b"hello")
        # the connection stays usable
        await client.send(get("/hello"))
        assert (await client.read_response()).body == b"hello"


async def test_no_100_continue_when_the_app_answers_without_reading(nursery: trio.Nursery) -> None:
    running = await start(nursery, make_app(Probe()))
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(b"GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        response = await client.read_response()
        assert response.status == 200
        assert response.body == b"hello"
        # the client may never send the body: the server closes rather than guess
        assert response.headers[b"connection"] == b"close"
        assert await client.at_eof()


async def test_an_unread_small_body_is_drained_and_the_connection_kept(nursery: trio.Nursery) -> None:
    running = await start(nursery, make_app(Probe()))
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(b"GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 400)
        response = await client.read_response()
        assert response.status == 200
        assert b"connection" not in response.headers
        await client.send(b"x" * 600 + get("/hello"))
        assert (await client.read_response()).body == b"hello"


async def test_the_app_sees_disconnect_when_the_client_goes_away(nursery: trio.Nursery) -> None:
    probe = Probe()
    running = await start(nursery, make_app(probe))
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(post("/wait-disconnect", b"body"))
        await client.aclose()
        await probe.disconnected.wait()
        assert probe.disconnects == ["http.disconnect"]


# -- responses ------------------------------------------------------------------------------------------------------


async def test_a_streamed_response_reaches_the_client_piece_by_piece(nursery: trio.Nursery) -> None:
    probe = Probe()
    running = await start(nursery, make_app(probe))
    send_line = probe.lines[0]
    with trio.fail_after(10):
        async with (
            httpx.AsyncClient(base_url=running.base) as http,
            http.stream("GET", "/stream") as response,
        ):
            assert response.headers["transfer-encoding"] == "chunked"
            lines = response.aiter_lines()
            for i in range(3):
                # each line is produced only after the previous one was read by the client
                await send_line.send(json.dumps({"event": "progress", "n": i}))
                assert json.loads(await anext(lines)) == {"event": "progress", "n": i}
            await send_line.send(json.dumps({"event": "result"}))
            assert json.loads(await anext(lines)) == {"event": "result"}
            await send_line.aclose()
            assert [line async for line in lines] == []


async def test_head_gets_the_headers_without_the_body(nursery: trio.Nursery) -> None:
    running = await start(nursery, make_app(Probe()))
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        response = await client.read_response(head=True)
        assert response.status == 200
        assert response.headers[b"content-length"] == b"5"
        # nothing else was sent: the next response starts right away
        await client.send(get("/hello"))
        response = await client.read_response()
        assert response.body == b"hello"
        assert client.buf == b""


async def test_http_1_0_is_answered_and_closed(nursery: trio.Nursery) -> None:
    probe = Probe()
    running = await start(nursery, make_app(probe))
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(b"GET /hello HTTP/1.0\r\n\r\n")
        response = await client.read_response()
        assert response.body == b"hello"
        assert response.headers[b"connection"] == b"close"
        assert await client.at_eof()
        # a streamed answer to HTTP/1.0 ends with the connection
        client = await running.connect()
        await client.send(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        await probe.lines[0].send("one")
        await probe.lines[0].send("two")
        await probe.lines[0].aclose()
        response = await client.read_response()
        assert b"transfer-encoding" not in response.headers
        assert response.body == b"one\ntwo\n"


# -- refusals and limits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (post("/echo", b"x" * 2000), 413, "body_too_large"),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + b"x" * 2048, 413, None),
        (get("/" + "a" * 600), 414, "uri_too_long"),
        (get("/hello", b"X-Big: " + b"v" * 3000), 431, "headers_too_large"),
        (get("/hello", *[b"X-%d: v" % i for i in range(40)]), 431, "headers_too_large"),
        (b"GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400, "bad_request"),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, None),
        (b"GET /hello HTTP/2.0\r\nHost: t\r\n\r\n", 505, "http_version"),
        (b"GET /hello HTTP/1.1\r\n\r\n", 400, "bad_request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "bad_request"),  # TLS to a plain port
    ],
)
async def test_bad_or_oversized_requests_get_their_status_and_a_close(
    nursery: trio.Nursery, request_bytes: bytes, status: int, code: str | None
) -> None:
    config = HttpServerConfig(max_body=1024, max_request_line=512, max_head=2048, max_headers=32)
    running = await start(nursery, make_app(Probe()), config=config)
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(request_bytes)
        response = await client.read_response()
        assert response.status == status
        assert response.headers[b"connection"] == b"close"
        body = json.loads(response.body)
        assert body["status"] == "error"
        assert code is None or body["code"] == code
        assert await client.at_eof()


async def test_a_partial_head_is_cut_off_after_the_head_timeout(nursery: trio.Nursery) -> None:
    running = await start(nursery, make_app(Probe()), config=HttpServerConfig(head_timeout=0.2))
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n")  # and never the blank line
        response = await client.read_response()
        assert response.status == 408
        assert await client.at_eof()
        # a connection that sends nothing at all is closed after the head timeout too
        silent = await running.connect()
        assert await silent.at_eof()


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(nursery: trio.Nursery) -> None:
    running = await start(nursery, make_app(Probe()), config=HttpServerConfig(keep_alive_timeout=0.2))
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(get("/hello"))
        assert (await client.read_response()).body == b"hello"
        assert await client.at_eof()  # no 408 for an idle connection


async def test_a_stalled_body_is_cut_off_after_the_read_timeout(nursery: trio.Nursery) -> None:
    running = await start(nursery, make_app(Probe()), config=HttpServerConfig(read_timeout=0.2))
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        response = await client.read_response()
        assert response.status == 408
        assert await client.at_eof()


async def test_a_client_that_stops_reading_is_cut_off_after_the_write_timeout(nursery: trio.Nursery) -> None:
    probe = Probe()
    running = await start(nursery, make_app(probe), config=HttpServerConfig(write_timeout=0.2))
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(get("/big"))  # and read nothing: the socket buffers fill, the write blocks
        await probe.big_ended.wait()  # the response was given up
        received = 0
        while await client._fill():
            received += len(client.buf)
            client.buf = b""
        assert received < 64 * 1024 * 1024


# -- application errors ------------------------------------------------------------------------------------------------


async def test_an_app_error_before_the_response_is_a_json_500_logged_once(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start(nursery, make_app(Probe()))
    with trio.fail_after(10), caplog.at_level(logging.ERROR, logger=LOGGER):
        client = await running.connect()
        await client.send(get("/boom"))
        response = await client.read_response()
        assert response.status == 500
        assert json.loads(response.body) == {"status": "error", "code": "internal", "message": "internal error"}
        errors = [r for r in caplog.records if r.name == LOGGER]
        assert len(errors) == 1
        assert "boom before the response" in str(errors[0].exc_info)


async def test_an_app_error_after_the_response_started_closes_the_connection(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start(nursery, make_app(Probe()))
    with trio.fail_after(10), caplog.at_level(logging.ERROR, logger=LOGGER):
        client = await running.connect()
        await client.send(get("/boom-late"))
        head = await client.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"content-length: 10" in head
        assert await client.read_exact(5) == b"12345"
        assert await client.at_eof()
        assert len([r for r in caplog.records if r.name == LOGGER]) == 1


# -- TLS and unix sockets ---------------------------------------------------------------------------------------------


async def test_tls_serving(nursery: trio.Nursery, tmp_path: Path) -> None:
    ca = ensure_ca(tmp_path / "ca")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    issue_certificate(ca, cert, key, ["127.0.0.1", "localhost"])
    sock = bind_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    stop = trio.Event()
    await nursery.start(
        partial(serve_app, make_app(Probe()), sock, shutdown_trigger=stop.wait, graceful_timeout=1.0,
                tls=(str(cert), str(key)))
    )  # fmt: skip
    verify = ssl.create_default_context(cafile=str(ca.cert))
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=verify) as http:
            for _ in range(2):
                answer = await http.get("/info/tls")
                assert answer.status_code == 200
                assert answer.json()["scheme"] == "https"
            echoed = await http.post("/echo", content=b"z" * 100_000)
            assert echoed.content == b"z" * 100_000
        # a client that does not trust the certificate is refused by its own side; the server goes on
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}") as untrusting:
                await untrusting.get("/hello")
        # a plain-text client gets nothing usable (its bytes are not a TLS handshake)
        raw = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        await raw.send(get("/hello"))
        assert await raw.at_eof()
    stop.set()


async def test_tls_handshake_timeout(nursery: trio.Nursery, tmp_path: Path) -> None:
    ca = ensure_ca(tmp_path / "ca")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    issue_certificate(ca, cert, key, ["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    sock = bind_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = HttpServer(make_app(Probe()), HttpServerConfig(tls_handshake_timeout=0.2), ssl_context=context)
    await nursery.start(partial(server.serve, sock, shutdown_trigger=trio.sleep_forever, graceful_timeout=1.0))
    with trio.fail_after(10):
        client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        assert await client.at_eof()  # said nothing: cut off after the handshake timeout


async def test_unix_socket_serving(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "http.sock"
    sock = bind_unix(path)
    stop = trio.Event()
    await nursery.start(partial(serve_app, make_app(Probe()), sock, shutdown_trigger=stop.wait, graceful_timeout=1.0))
    assert path.stat().st_mode & 0o777 == 0o600
    with trio.fail_after(10):
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            answer = await http.get("/info/unix")
            assert answer.json()["client"] is None
            assert answer.json()["server"] == [str(path), None]
            assert (await http.post("/echo", content=b"abc")).content == b"abc"
    stop.set()


# -- the connection limit, accept failures -----------------------------------------------------------------------------


async def test_at_the_connection_limit_an_idle_connection_makes_room_and_busy_ones_hold_clients_back(
    nursery: trio.Nursery,
) -> None:
    probe = Probe()
    running = await start(nursery, make_app(probe), config=HttpServerConfig(max_connections=1))
    with trio.fail_after(10):
        # an idle keep-alive connection is closed to make room for a new client
        idle = await running.connect()
        await idle.send(get("/hello"))
        await idle.read_response()
        other = await running.connect()
        await other.send(get("/hello"))
        assert (await other.read_response()).body == b"hello"
        assert await idle.at_eof()
        await other.aclose()
        # a busy connection holds the next client back until its response is done
        busy = await running.connect()
        await busy.send(get("/slow"))
        await probe.slow_entered.wait()
        waiting = await running.connect()
        await waiting.send(get("/hello"))
        await trio.testing.wait_all_tasks_blocked()
        assert probe.entered == ["/hello", "/hello", "/slow"]
        assert running.server.statistics().connections == 1
        probe.release.set()
        assert (await busy.read_response()).body == b"slow done"
        assert (await waiting.read_response()).body == b"hello"
        assert await busy.at_eof()  # went idle, then made room


class FlakyListener(socket.socket):
    """A listening socket whose first ``failures`` accepts fail as if the process were out of file descriptors."""

    failures = 0

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


async def test_emfile_on_accept_is_logged_once_and_retried(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    listener = FlakyListener(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.failures = 5
    with caplog.at_level(logging.INFO, logger=LOGGER):
        running = await start(nursery, make_app(Probe()), sock=listener)
        with trio.fail_after(10):
            client = await running.connect()
            await client.send(get("/hello"))
            assert (await client.read_response()).body == b"hello"
    assert running.server.statistics().accept_failures == 5
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 2, messages
    assert "cannot accept" in messages[0]
    assert "Too many open files" in messages[0]
    assert "again after 5 failed attempts" in messages[1]


# -- graceful shutdown -----------------------------------------------------------------------------------------------


async def test_graceful_shutdown_finishes_requests_in_flight_and_closes_idle_ones(nursery: trio.Nursery) -> None:
    probe = Probe()
    running = await start(nursery, make_app(probe), graceful=5.0)
    with trio.fail_after(10):
        idle = await running.connect()
        await idle.send(get("/hello"))
        await idle.read_response()
        busy = await running.connect()
        await busy.send(get("/slow"))
        await probe.slow_entered.wait()
        running.stop.set()
        assert await idle.at_eof()  # closed at once
        with pytest.raises(OSError, match="all attempts to connect"):
            await trio.open_tcp_stream("127.0.0.1", running.port)  # no longer accepting
        assert not running.stopped.is_set()
        probe.release.set()
        response = await busy.read_response()
        assert response.body == b"slow done"
        assert response.headers[b"connection"] == b"close"
        assert await busy.at_eof()
        await running.stopped.wait()


async def test_graceful_shutdown_cancels_what_outlives_the_grace(nursery: trio.Nursery) -> None:
    probe = Probe()
    running = await start(nursery, make_app(probe), graceful=0.2)
    with trio.fail_after(10):
        busy = await running.connect()
        await busy.send(get("/slow"))
        await probe.slow_entered.wait()
        running.stop.set()
        await running.stopped.wait()
        assert await busy.at_eof()
        assert running.server.statistics().connections == 0


async def test_serve_app_stops_when_the_trigger_fires_with_nothing_in_flight(nursery: trio.Nursery) -> None:
    sock = bind_tcp("127.0.0.1", 0)
    stop, done = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        await serve_app(make_app(Probe()), sock, shutdown_trigger=stop.wait, graceful_timeout=5.0,
                        task_status=task_status)  # fmt: skip
        done.set()

    await nursery.start(run)
    with trio.fail_after(10):
        stop.set()
        await done.wait()
    assert sock.fileno() == -1  # closed


async def test_a_raw_asgi_app_without_a_response_gets_a_500(nursery: trio.Nursery) -> None:
    async def silent(_scope: Scope, receive: Receive, _send: Send) -> None:
        message: Message = await receive()
        assert message["type"] == "http.request"

    running = await start(nursery, silent)
    with trio.fail_after(10):
        client = await running.connect()
        await client.send(get("/anything"))
        response = await client.read_response()
        assert response.status == 500
        assert json.loads(response.body)["code"] == "internal"
