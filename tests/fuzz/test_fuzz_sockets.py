"""Socket-level fuzz of one real in-process node: random and mutated bytes on the HTTP port, MAC'd frames of fuzzed
content on the swarm websocket after a real handshake (and mangled handshakes), fuzzed and re-signed datagrams on the
DHT UDP port, and mutated requests on the control socket.

Throughout, a probe asks ``/health/live`` and the control ``status`` every quarter second; each must answer within
1 s. A crash is an error the node logs (an unexpected exception in a handler, the HTTP server or a service), an
``internal`` error answer on a link, or a probe that timed out. At the end, with every fuzzing connection closed,
RSS and open files (``/proc/self``) must be back near where they started."""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import cbor2
import pytest
import trio
import trio.lowlevel
from trio_websocket import ConnectionClosed, HandshakeError, connect_websocket_url

from overlay_node.crypto.keys import Identity
from overlay_node.errors import LocalProtocolError, OverlayError
from overlay_node.node import Node
from overlay_node.services.dht_rpc import Signer
from overlay_node.wire import dht
from overlay_node.wire import frames as f
from tests.conftest import NodeFactory
from tests.integration.peer_fixtures import RawInitiator

from . import seeds
from .mutate import RandomChooser, mutate, mutate_value, random_value
from .runner import FuzzReport, Surface, fuzz_seconds

pytestmark = pytest.mark.fuzz

PROBE_EVERY = 0.25
PROBE_LIMIT = 1.0
#: how far open files and RSS may stay above where they started once every fuzzing connection is closed
FD_SLACK = 8
RSS_SLACK = 64 * 1024 * 1024


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class CrashLog(logging.Handler):
    """Errors the node logs while it is fuzzed: each one is an unexpected failure somewhere."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("overlay_node"):
            detail = f"{record.name}: {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                detail += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self.records.append(detail[:400])


@dataclass
class Probe:
    """The node's liveness as a client sees it while the fuzz runs."""

    node: Node
    answers: int = 0
    slowest: float = 0.0
    failures: list[str] = field(default_factory=list)

    async def ask(self, what: str, call: Callable[[], Awaitable[bytes]]) -> None:
        began = trio.current_time()
        with trio.move_on_after(PROBE_LIMIT) as scope:
            try:
                answer = await call()
            except OSError as exc:
                self.failures.append(f"{what}: {exc}")
                return
        took = trio.current_time() - began
        self.slowest = max(self.slowest, took)
        if scope.cancelled_caught:
            self.failures.append(f"{what}: no answer within {PROBE_LIMIT} s")
        elif b" 200 " not in answer.split(b"\r\n", 1)[0]:
            self.failures.append(f"{what}: {answer[:80]!r}")
        else:
            self.answers += 1

    async def run(self) -> None:
        host, port = http_address(self.node)
        live = b"GET /health/live HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
        status = b"GET /v1/status HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
        while True:
            await self.ask(
                "/health/live", lambda: exchange(functools.partial(trio.open_tcp_stream, host, port), [live])
            )
            await self.ask(
                "status", lambda: exchange(functools.partial(trio.open_unix_socket, self.node.info.control), [status])
            )
            await trio.sleep(PROBE_EVERY)


def http_address(node: Node) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(node.info.http)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


async def exchange(
    connect: Callable[[], Awaitable[trio.SocketStream]], pieces: list[bytes], *, limit: float = 2.0
) -> bytes:
    """Send ``pieces``, end our side, and read the answer until the server closes (or ``limit`` passes)."""
    stream = await connect()
    answer = bytearray()
    try:
        for piece in pieces:
            await stream.send_all(piece)
        await stream.send_eof()
        with trio.move_on_after(limit):
            while len(answer) < 1 << 20:
                data = await stream.receive_some(65536)
                if not data:
                    break
                answer += data
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()
    return bytes(answer)


# -- http -----------------------------------------------------------------------------------------------------------


async def fuzz_http(node: Node, rng: random.Random, surface: Surface) -> None:
    host, port = http_address(node)
    choose = RandomChooser(rng)
    corpus = list(seeds.HTTP_REQUESTS)
    for body in seeds.JSON_BODIES[:4]:
        text = json.dumps(body).encode()
        corpus.append(b"POST /lookup HTTP/1.1\r\nHost: n\r\nContent-Length: %d\r\n\r\n%b" % (len(text), text))
    beef = seeds.chain_seeds().beef_v1
    corpus.append(
        b'POST /submit HTTP/1.1\r\nHost: n\r\nContent-Type: application/octet-stream\r\nx-topics: ["tm_ship"]\r\n'
        b"Content-Length: %d\r\n\r\n%b" % (len(beef), beef)
    )
    while True:
        pick = rng.random()
        if pick < 0.1:
            data = rng.randbytes(rng.randint(0, 300))
        elif pick < 0.3:
            # each route with its own kind of body, now and then another's
            path, seed = rng.choice(
                [
                    (b"/lookup", seeds.JSON_BODIES[0]),
                    (b"/requestSyncResponse", seeds.JSON_BODIES[7]),
                    (b"/requestForeignGASPNode", seeds.JSON_BODIES[8]),
                    (b"/submit", rng.choice(seeds.JSON_BODIES)),
                ]
            )
            body = json.dumps(mutate_value(seed, choose, lambda: random_value(rng, json_safe=True))).encode()
            data = b"POST %b HTTP/1.1\r\nHost: n\r\nx-bsv-topic: tm_ship\r\nContent-Length: %d\r\n\r\n%b" % (
                path,
                len(body),
                body,
            )
        else:
            data = mutate(rng.choice(corpus), corpus, choose)
        cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 3)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        try:
            answer = await exchange(functools.partial(trio.open_tcp_stream, host, port), pieces)
        except OSError:
            continue
        surface.inputs += 1
        status = answer.split(b" ", 2)[1:2]
        if status:
            key = f"status_{status[0].decode('latin-1')}"
            surface.notes[key] = surface.notes.get(key, 0) + 1


# -- swarm ----------------------------------------------------------------------------------------------------------


def _bodies() -> list[Any]:
    m = seeds.message_seeds()
    return [*m.maps, *(frame.get("b", frame.get("h", {})) for frame in seeds.frame_maps())]


async def _drain(raw: RawInitiator, internal: list[str], surface: Surface) -> None:
    try:
        while True:
            frame = await raw.receive()
            key = f"answer_{frame.code}" if isinstance(frame, f.ErrorResponse) else f"frame_{type(frame).__name__}"
            surface.notes[key] = surface.notes.get(key, 0) + 1
            if isinstance(frame, f.ErrorResponse) and frame.code == "internal":
                internal.append(frame.message)
    except (ConnectionClosed, OverlayError, AssertionError, trio.ClosedResourceError):
        pass


def _fuzzed_frame(rng: random.Random, methods: list[str], next_id: int, bodies: list[Any]) -> f.Frame | None:
    choose = RandomChooser(rng)
    body = mutate_value(rng.choice(bodies), choose, lambda: random_value(rng))
    if not isinstance(body, dict):
        body = {"value": body}
    try:
        pick = rng.random()
        if pick < 0.6:
            return f.Request(id=next_id, method=rng.choice(methods), body=body)
        if pick < 0.8:
            return f.Notice(method=rng.choice(methods), body=body)
        if pick < 0.9:
            return f.TransferOpen(id=next_id, method=rng.choice(methods), header=body)
        return rng.choice(seeds.frame_seeds()[7:])
    except LocalProtocolError:
        return None  # not a frame we could send (a body the codec refuses)


async def _one_link(node: Node, rng: random.Random, surface: Surface, methods: list[str], internal: list[str]) -> None:
    url = node.info.swarm[0]
    choose = RandomChooser(rng)
    bodies = _bodies()
    async with trio.open_nursery() as nursery:
        ws = await connect_websocket_url(nursery, url, max_message_size=1 << 22)
        raw = RawInitiator(ws, Identity.generate())
        try:
            if rng.random() < 0.1:
                request, response = seeds.handshake_seeds()
                text = mutate(rng.choice([request, response]).encode(), [], choose).decode("utf-8", "replace")
                await ws.send_message(text if rng.random() < 0.7 else text.encode())
                surface.inputs += 1
                with trio.move_on_after(1):
                    await ws.get_message()
                return
            await raw.handshake()
            nursery.start_soon(_drain, raw, internal, surface)
            for i in range(rng.randint(1, 60)):
                if rng.random() < 0.15:
                    assert raw.sealer is not None
                    data = mutate(rng.choice(seeds.frame_bytes()), seeds.frame_bytes(), choose)
                    await ws.send_message(raw.sealer.seal(data))
                else:
                    frame = _fuzzed_frame(rng, methods, i, bodies)
                    if frame is None:
                        continue
                    await raw.send(frame)
                surface.inputs += 1
                await trio.lowlevel.checkpoint()
        except ConnectionClosed:
            pass
        finally:
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def fuzz_swarm(node: Node, rng: random.Random, surface: Surface, internal: list[str]) -> None:
    handlers = node.peers._handlers
    methods = sorted({*handlers.requests, *handlers.notices, *handlers.transfers, "no.such.method"})
    while True:
        try:
            await _one_link(node, rng, surface, methods, internal)
        except (OSError, trio.BrokenResourceError, OverlayError, HandshakeError) as exc:
            surface.notes["connect_errors"] = surface.notes.get("connect_errors", 0) + 1
            surface.notes["last_connect_error"] = repr(exc)[:200]


# -- dht ------------------------------------------------------------------------------------------------------------


async def _count_answers(sock: trio.socket.SocketType, surface: Surface) -> None:
    while True:
        await sock.recv(2048)
        surface.notes["answers"] = surface.notes.get("answers", 0) + 1


async def fuzz_dht(node: Node, rng: random.Random, surface: Surface) -> None:
    host, _, port = node.info.dht.rpartition(":")
    target = (host.strip("[]"), int(port))
    choose = RandomChooser(rng)
    sender = Signer(seeds.keys().alice)
    pub = seeds.keys().alice.public_key
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_count_answers, sock, surface)
            while True:
                now = time.time()
                fresh = dht.Store(
                    rpc_id=b"\x09" * 8, record=seeds.dht_record(expires=int(now) + 600, seq=rng.randint(0, 9))
                )
                messages = (*seeds.dht_messages(), fresh)
                datagrams = [dht.encode(m, sender_pub=pub, now=now, sign=sender.sign) for m in messages]
                for _ in range(64):
                    pick = rng.random()
                    if pick < 0.1:
                        data = rng.randbytes(rng.randint(0, 1500))
                    elif pick < 0.5:
                        data = mutate(rng.choice(datagrams), datagrams, choose)
                    else:
                        inner = cbor2.loads(cbor2.loads(rng.choice(datagrams))[0])
                        fuzzed = mutate_value(inner, choose, lambda: random_value(rng))
                        try:
                            data = seeds.sign_datagram(bytes(cbor2.dumps(fuzzed, canonical=True)))
                        except (cbor2.CBOREncodeError, ValueError, TypeError):
                            continue
                    await sock.sendto(data, target)
                    surface.inputs += 1
                await trio.lowlevel.checkpoint()
    finally:
        sock.close()


# -- control socket -------------------------------------------------------------------------------------------------


#: control routes whose handlers only read their bodies and answer (nothing that dials out, spends, waits or stops)
def control_routes() -> tuple[tuple[bytes, bytes, Any], ...]:
    return (
        (b"GET", b"/v1/status", None),
        (b"GET", b"/v1/peers", None),
        (b"GET", b"/v1/dht", None),
        (b"GET", b"/v1/content", None),
        (b"GET", b"/v1/streams", None),
        (b"GET", b"/v1/wallet/balance", None),
        (b"GET", b"/v1/content/" + b"ab" * 32 + b"/status", None),
        (b"POST", b"/v1/dht/get", {"namespace": "ship", "name": "tm_foo"}),
        (b"POST", b"/v1/dht/put", {"namespace": "fuzz", "name": "n", "value": "v", "ttl": 60}),
        (b"POST", b"/v1/discover", {"topic": "tm_fuzz", "capabilities": ["gpu"], "max_price": 3}),
        (b"POST", b"/v1/content/search", {"tags": ["a"], "content_type": "text/plain", "max_price": 1}),
        (b"POST", b"/v1/content/lineage", {"hash": "ab" * 32, "depth": 2}),
        (b"POST", b"/v1/overlay/lookup", {"service": "ls_ship", "query": {"findAll": True}}),
        (b"POST", b"/v1/overlay/history", {"outpoint": "ab" * 32 + ".0", "depth": 1}),
        (b"POST", b"/v1/overlay/submit", {"topics": ["tm_ship"], "beef_hex": seeds.chain_seeds().beef_v1.hex()}),
        (b"POST", b"/v1/reports/analytics", {"stream_id": "s1"}),
        (b"POST", b"/v1/streams", {"stream_id": "fuzz-stream", "rate": 1, "tags": ["t"]}),
    )


def _control_request(method: bytes, path: bytes, body: bytes) -> bytes:
    head = b"%b %b HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n" % (method, path)
    return head + b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body)


async def fuzz_control(node: Node, rng: random.Random, surface: Surface) -> None:
    choose = RandomChooser(rng)
    routes = control_routes()
    whole = [_control_request(m, p, json.dumps(b).encode() if b is not None else b"") for m, p, b in control_routes()]
    while True:
        method, path, seed = rng.choice(routes)
        pick = rng.random()
        if pick < 0.5 and seed is not None:
            body = json.dumps(mutate_value(seed, choose, lambda: random_value(rng, json_safe=True))).encode()
            data = _control_request(method, path, body)
        elif pick < 0.8:
            text = json.dumps(seed).encode() if seed is not None else b"{}"
            data = _control_request(method, path, mutate(text, [], choose))
        else:
            data = mutate(rng.choice(whole), whole, choose)
        if b"/v1/shutdown" in data:
            continue
        answer = await exchange(functools.partial(trio.open_unix_socket, node.info.control), [data])
        surface.inputs += 1
        status = answer.split(b" ", 2)[1:2]
        if status:
            key = f"status_{status[0].decode('latin-1')}"
            surface.notes[key] = surface.notes.get(key, 0) + 1


# -- the run --------------------------------------------------------------------------------------------------------


async def _settle(start_fds: int) -> int:
    """Open files once the node has closed what the fuzz opened (it closes connections on its own timeouts)."""
    with trio.move_on_after(15):
        # no event says when the node has closed its side of every connection: a bounded poll
        while open_fds() > start_fds + FD_SLACK:  # noqa: ASYNC110
            await trio.sleep(0.2)
    return open_fds()


async def test_sockets_of_a_running_node(start_node: NodeFactory, fuzz_report: FuzzReport) -> None:
    node = await start_node(
        "fuzz",
        **{
            "dht.max_datagrams_per_source": 10_000_000,
            "dht.max_datagrams_per_ip": 10_000_000,
            "swarm.max_handshakes_per_ip": 10_000,
            "http.head_timeout": 2.0,
            # the GASP routes without BRC-104 first: any peer that authenticates reaches them, and so does the fuzz
            "auth.require": [],
        },
    )
    seed = int(os.environ.get("FUZZ_SEED", str(random.randrange(2**32))))
    rng = random.Random(seed)
    crash_log = CrashLog()
    logging.getLogger().addHandler(crash_log)
    probe = Probe(node)
    internal: list[str] = []
    found: list[str] = []
    start_rss, start_fds = rss(), open_fds()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe.run)
            phases: list[tuple[str, Callable[..., Awaitable[None]]]] = [
                ("http", fuzz_http),
                ("swarm", fuzz_swarm),
                ("dht", fuzz_dht),
                ("control", fuzz_control),
            ]
            for name, fuzz in phases:
                surface = fuzz_report.surface(f"socket: {name}")
                began = time.monotonic()
                seen = len(crash_log.records) + len(probe.failures) + len(internal)
                args = (node, rng, surface, internal) if name == "swarm" else (node, rng, surface)
                with trio.move_on_after(fuzz_seconds()):
                    await fuzz(*args)
                surface.seconds = time.monotonic() - began
                surface.crashes = len(crash_log.records) + len(probe.failures) + len(internal) - seen
            nursery.cancel_scope.cancel()
    finally:
        logging.getLogger().removeHandler(crash_log)
    found = [*crash_log.records, *(f"internal error answer: {m}" for m in internal), *probe.failures]
    end_fds = await _settle(start_fds)
    end_rss = rss()
    fuzz_report.extra["socket_fuzz"] = {
        "seed": seed,
        "rss_before_mib": round(start_rss / 2**20, 1),
        "rss_after_mib": round(end_rss / 2**20, 1),
        "fds_before": start_fds,
        "fds_after": end_fds,
        "probe_answers": probe.answers,
        "probe_slowest_s": round(probe.slowest, 3),
        "crashes": found[:20],
    }
    assert not found, "\n".join(found[:20])
    assert end_fds <= start_fds + FD_SLACK
    assert end_rss <= start_rss + RSS_SLACK
