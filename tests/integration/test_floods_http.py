"""Floods on the HTTP server over real sockets: one address holding every connection with slow request heads, and
many large request bodies at once. The attacker connects from 127.0.0.2 (Linux routes all of 127/8 to the loopback
interface), the honest client from 127.0.0.1. Waits are on sockets, events and ``wait_all_tasks_blocked`` (every
client has sent what it can and waits for the server), never on sleeps."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
import trio.testing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from overlay_node.net.http_server import SMALL_BODY, HttpServerConfig
from tests.integration.test_http_server import RawClient, RawResponse, get, post, start

ATTACKER = "127.0.0.2"
LIMIT = 20  # seconds per test


@dataclass
class Holder:
    """An app whose ``/hold`` reads the whole body and keeps it until ``release`` is set; ``/echo`` answers at once.
    It measures what the server lets requests hold at once."""

    release: trio.Event = field(default_factory=trio.Event)
    held: int = 0
    peak: int = 0
    inside: int = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/hold", self.hold, methods=["POST"]),
                Route("/echo", self.echo, methods=["POST"]),
                Route("/hello", self.hello, methods=["GET"]),
            ]
        )

    async def hold(self, request: Request) -> Response:
        body = await request.body()
        self.held += len(body)
        self.inside += 1
        self.peak = max(self.peak, self.held)
        try:
            await self.release.wait()
        finally:
            self.held -= len(body)
            self.inside -= 1
        return PlainTextResponse(str(len(body)))

    async def echo(self, request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    async def hello(self, _request: Request) -> Response:
        return PlainTextResponse("hello")


async def connect_from(host: str, port: int) -> RawClient:
    sock = trio.socket.socket()
    await sock.bind((host, 0))
    await sock.connect(("127.0.0.1", port))
    return RawClient(trio.SocketStream(sock))


async def test_one_address_with_slow_heads_cannot_hold_every_connection() -> None:
    """Slowloris from one address: it gets ``max_connections_per_ip`` slots, its other connections are refused 503
    at once, and a client from another address is answered while the slow heads are still open."""
    holder = Holder()
    config = HttpServerConfig(max_connections=8, max_connections_per_ip=4, head_timeout=60.0)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            running = await start(nursery, holder.app(), config=config)
            slow = []
            for _ in range(8):
                client = await connect_from(ATTACKER, running.port)
                await client.send(b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Slow: ")
                slow.append(client)
            # the server accepts in order: the first four are open (a head in progress), the others refused
            for client in slow[4:]:
                answer = await client.read_response()
                assert answer.status == 503
                assert answer.headers[b"retry-after"] == b"1"
                assert b"too_many_connections" in answer.body
                assert await client.at_eof()
            stats = running.server.statistics()
            assert stats.connections == 4
            assert stats.refused_per_ip == 4
            # without the per-address bound the eight slow heads would hold all eight slots for head_timeout
            honest = await running.connect()
            await honest.send(get("/hello"))
            assert (await honest.read_response()).body == b"hello"
            # the attacker's slots come back when its connections end
            for client in slow[:4]:
                await client.aclose()
            again = await connect_from(ATTACKER, running.port)
            await again.send(get("/hello"))
            assert (await again.read_response()).status == 200
            for client in (honest, again, *slow[4:]):
                await client.aclose()
            running.stop.set()


async def test_request_bodies_held_at_once_stay_within_the_budget() -> None:
    """Ten 300 KiB bodies against a 1 MiB budget: three are read and held at once, the others wait unread, a small
    request is answered meanwhile, and every large one is served in turn once room is given back."""
    holder = Holder()
    budget = 1024 * 1024
    size = 300 * 1024
    config = HttpServerConfig(max_body_memory=budget, body_wait=LIMIT)
    answers: list[RawResponse] = []
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            running = await start(nursery, holder.app(), config=config)

            async def upload() -> None:
                client = await connect_from(ATTACKER, running.port)
                await client.send(post("/hold", b"b" * size))
                answers.append(await client.read_response())
                await client.aclose()

            async with trio.open_nursery() as uploads:
                for _ in range(10):
                    uploads.start_soon(upload)
                await trio.testing.wait_all_tasks_blocked()
                # every client has sent its body; the server holds what the budget lets it read
                assert holder.inside == 3
                assert holder.held == 3 * size
                assert running.server.statistics().body_bytes == 3 * size
                assert running.server.body_budget is not None
                assert len(running.server.body_budget.waiters) == 7
                # a small body never waits for the budget
                honest = await running.connect()
                await honest.send(post("/echo", b"s" * SMALL_BODY))
                assert (await honest.read_response()).body == b"s" * SMALL_BODY
                await honest.aclose()
                holder.release.set()
            assert [a.status for a in answers] == [200] * 10
            assert all(a.body == str(size).encode() for a in answers)
            assert holder.peak <= budget
            stats = running.server.statistics()
            assert stats.body_bytes_peak <= budget
            assert stats.body_bytes == 0
            assert stats.body_refused == 0
            running.stop.set()


async def test_a_body_that_finds_no_room_in_time_is_answered_503_and_changes_nothing() -> None:
    holder = Holder()
    config = HttpServerConfig(max_body_memory=512 * 1024, body_wait=0.3)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            running = await start(nursery, holder.app(), config=config)
            first = await connect_from(ATTACKER, running.port)
            await first.send(post("/hold", b"a" * (400 * 1024)))
            await trio.testing.wait_all_tasks_blocked()
            assert holder.inside == 1
            # 400 KiB + 200 KiB is over the budget: the second body waits body_wait, unread, then is refused
            second = await connect_from(ATTACKER, running.port)
            await second.send(post("/hold", b"b" * (200 * 1024)))
            refused = await second.read_response()
            assert refused.status == 503
            assert refused.headers[b"retry-after"] == b"1"
            assert b'"code": "busy"' in refused.body
            assert b"retry after 1 s" in refused.body
            assert await second.at_eof()
            # a chunked body takes room as it arrives: past its first SMALL_BODY bytes it waits too
            third = await connect_from(ATTACKER, running.port)
            piece = b"c" * (256 * 1024)
            await third.send(
                b"POST /hold HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%s\r\n" % (len(piece), piece)
                + b"0\r\n\r\n"
            )
            assert (await third.read_response()).status == 503
            await trio.testing.wait_all_tasks_blocked()
            assert holder.inside == 1
            stats = running.server.statistics()
            assert stats.body_refused == 2
            assert stats.body_bytes == 400 * 1024
            holder.release.set()
            assert (await first.read_response()).body == str(400 * 1024).encode()
            await trio.testing.wait_all_tasks_blocked()
            assert running.server.statistics().body_bytes == 0
            # with the room given back, the same body is taken
            again = await connect_from(ATTACKER, running.port)
            await again.send(post("/hold", b"b" * (200 * 1024)))
            assert (await again.read_response()).status == 200
            for client in (first, second, third, again):
                await client.aclose()
            running.stop.set()
