"""Authenticated peer links over real websockets on 127.0.0.1: three good nodes, adversaries, limits and timeouts.

Every test has a trio-clock time limit; nothing sleeps and polls: tests wait on events (links, notices, closes).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import ssl
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
import trio

from overlay_node.crypto.keys import Identity
from overlay_node.errors import (
    BadRequest,
    ConnectionLost,
    DialError,
    LocalProtocolError,
    NotFound,
    PeerTimeout,
    RemoteProtocolError,
)
from overlay_node.net.peers import PeerError, PeerLink, parse_address
from overlay_node.protocol.session import FRAME_OVERHEAD
from overlay_node.wire import frames as f

from .peer_fixtures import (
    GoodNode,
    RawInitiator,
    SlowSocket,
    bad_signature_responder,
    impersonate,
    open_raw,
    serve_adversary,
    silent_responder,
    start_good_node,
    wait_close,
)

LIMIT = 15  # seconds of trio time per test


async def _link_all(nodes: list[GoodNode]) -> None:
    """Every pair dials each other at the same time; afterwards each pair has exactly one link, the one dialed by
    the lower identity key, and any other link that came up is closed."""
    returned: list[tuple[GoodNode, GoodNode, PeerLink]] = []

    async def dial(src: GoodNode, dst: GoodNode) -> None:
        returned.append((src, dst, await src.manager.connect(dst.url, expect_key=dst.key)))

    async with trio.open_nursery() as nursery:
        for src, dst in itertools.permutations(nodes, 2):
            nursery.start_soon(dial, src, dst)
    for src, dst, link in returned:
        assert link.peer_key == dst.key
        kept = src.link_to(dst)
        if link is not kept:  # a link that lost the tie-break is closed, never left half-open
            await link.wait_closed()
            assert link.close_reason == "duplicate_link"
    for a, b in itertools.combinations(nodes, 2):
        ab, ba = a.link_to(b), b.link_to(a)
        lower = min(a.key, b.key)
        assert ab.initiator_key == ba.initiator_key == lower
        assert {ab.direction, ba.direction} == {"in", "out"}
    for node in nodes:
        infos = node.manager.links()
        assert sorted(i.identity_key for i in infos) == sorted(n.key for n in nodes if n is not node)
        for link in node.links_seen:
            if link is not node.manager.link(link.peer_key):
                await link.wait_closed()
    for node in nodes:
        assert node.metrics.registry.get_sample_value("overlay_peer_links") == len(nodes) - 1


async def _exchange(nodes: list[GoodNode], tag: str) -> None:
    """Requests and notices between every ordered pair; each side sees the other's authenticated key."""
    for src, dst in itertools.permutations(nodes, 2):
        answer = await src.link_to(dst).request("echo", {"tag": tag, "to": dst.key})
        assert answer == {"from": src.key, "body": {"tag": tag, "to": dst.key}}
        await src.link_to(dst).notify("hello", {"tag": tag})
    for node in nodes:
        got = sorted([await node.notices.receive() for _ in range(len(nodes) - 1)])
        assert got == sorted((n.key, {"tag": tag}) for n in nodes if n is not node)


@pytest.fixture
async def three(nursery: trio.Nursery) -> list[GoodNode]:
    nodes = [await start_good_node(nursery, transfer_window=3, chunk_size=16 * 1024) for _ in range(3)]
    with trio.fail_after(LIMIT):
        await _link_all(nodes)
    return nodes


async def _drained(ws_close: Awaitable[tuple[int, str | None]]) -> tuple[int, str | None]:
    with trio.fail_after(LIMIT):
        return await ws_close


async def test_three_nodes_link_talk_transfer_and_survive_adversaries(
    three: list[GoodNode], nursery: trio.Nursery
) -> None:
    a, b, c = three
    with trio.fail_after(LIMIT):
        await _exchange(three, "before")

        # a transfer of a few MB with a small window arrives intact and within credit
        payload = os.urandom(3 * 1024 * 1024 + 123)
        link = a.link_to(b)
        async with link.open_transfer("put", {"name": "blob", "slow": True}) as tx:
            assert tx.chunk_size == 16 * 1024
            view = memoryview(payload)
            for start in range(0, len(payload), 100_000):
                await tx.send(bytes(view[start : start + 100_000]))
                assert tx.credit <= 3
        result = await b.transfers.receive()
        assert result.sender == a.key
        assert result.header == {"name": "blob", "slow": True}
        assert (result.size, result.digest) == (len(payload), hashlib.sha256(payload).hexdigest())
        assert 1 <= result.max_buffered <= result.window == 3
        pieces = [len(payload[i : i + 100_000]) for i in range(0, len(payload), 100_000)]
        assert tx.chunks_sent == sum(-(-size // (16 * 1024)) for size in pieces)

        # adversary 1: a responder whose handshake signature is wrong
        url, _, closes = await serve_adversary(nursery, bad_signature_responder)
        with pytest.raises(RemoteProtocolError) as info:
            await a.manager.connect(url)
        assert info.value.reason == "bad_signature"
        assert await closes.receive() == (1008, "bad_signature")
        assert a.drops("bad_signature") == 1

        # adversaries 2-4: a peer that replays, alters, or oversizes a frame after a correct handshake
        for attack, reason in (("replay", "replay"), ("alter", "bad_mac"), ("oversize", "frame_too_large")):
            async with trio.open_nursery() as ws_nursery:
                raw = RawInitiator(await open_raw(ws_nursery, b.url))
                await raw.handshake()
                assert raw.peer_key == b.key
                sent = await raw.send(f.Request(id=0, method="echo", body={"x": 1}))
                answer = await raw.receive()
                assert answer == f.Response(id=0, body={"from": raw.identity.public_key_hex, "body": {"x": 1}})
                if attack == "replay":
                    await raw.ws.send_message(sent)
                elif attack == "alter":
                    forged = bytearray(raw.seal(f.Request(id=1, method="echo", body={"x": 1})))
                    forged[12] ^= 0xFF
                    await raw.ws.send_message(bytes(forged))
                else:
                    await raw.ws.send_message(b"\x00" * (b.manager._config.max_frame + FRAME_OVERHEAD + 100))
                assert await _drained(wait_close(raw.ws)) == (1008, reason)
                ws_nursery.cancel_scope.cancel()
            assert b.drops(reason) == 1

        # adversary 5: an initiator that skips its proof (a MAC'd request instead of the Hello)
        async with trio.open_nursery() as ws_nursery:
            raw = RawInitiator(await open_raw(ws_nursery, c.url))
            await raw.handshake(send_hello=False)
            await raw.send(f.Request(id=0, method="echo", body={}))
            assert await _drained(wait_close(raw.ws)) == (1008, "auth_required")
            ws_nursery.cancel_scope.cancel()
        assert c.drops("auth_required") == 1

        # adversary 6: an impersonator claiming a's key cannot produce the proof
        async with trio.open_nursery() as ws_nursery:
            ws = await open_raw(ws_nursery, c.url)
            await impersonate(ws, a.key)
            assert await _drained(wait_close(ws)) == (1008, "bad_mac")
            ws_nursery.cancel_scope.cancel()
        assert c.drops("bad_mac") == 1
        assert c.link_to(a).closed is False  # the real a is still linked

        # adversary 7: a sender that ignores transfer credit (the receiver granted a window of 3 and reads nothing)
        async with trio.open_nursery() as ws_nursery:
            raw = RawInitiator(await open_raw(ws_nursery, b.url))
            await raw.handshake()
            await raw.send(f.TransferOpen(id=0, method="hold", header={}))
            assert await raw.receive() == f.TransferCredit(id=0, credit=3)
            for _ in range(4):
                await raw.send(f.TransferChunk(id=0, data=b"x" * 100))
            assert await _drained(wait_close(raw.ws)) == (1008, "credit_exceeded")
            ws_nursery.cancel_scope.cancel()
        assert b.drops("credit_exceeded") == 1

        # a dialer that expects another identity refuses the answer
        with pytest.raises(RemoteProtocolError) as info:
            await a.manager.connect(c.url, expect_key=Identity.generate().public_key_hex)
        assert info.value.reason == "unexpected_identity"
        assert a.drops("unexpected_identity") == 1

        # the three good nodes are still linked with the same links and keep talking
        for x, y in itertools.permutations(three, 2):
            assert x.manager.link(y.key) is not None
        await _exchange(three, "after")


async def test_request_errors_map_to_overlay_errors(three: list[GoodNode]) -> None:
    a, b, _ = three
    link = a.link_to(b)
    with trio.fail_after(LIMIT):
        with pytest.raises(NotFound, match="nothing called 'x'"):
            await link.request("fail", {"name": "x"})
        with pytest.raises(PeerError) as info:
            await link.request("crash", {})
        assert info.value.code == "internal"
        with pytest.raises(PeerError) as info:
            await link.request("no.such.method", {})
        assert info.value.code == "unknown_method"
        with pytest.raises(PeerError) as info:  # an answer larger than our max_frame cannot be sent
            await link.request("big", {})
        assert info.value.code == "frame_too_large"
        with pytest.raises(LocalProtocolError):  # neither can such a request
            await link.request("echo", {"blob": bytes(b.manager._config.max_frame)})
        with pytest.raises(PeerTimeout):
            await link.request("block", {}, timeout=0.2)
        b.unblock.set()
        assert await link.request("echo", {"still": "alive"}) == {"from": a.key, "body": {"still": "alive"}}
    assert not link.closed
    samples = b.metrics.registry.get_sample_value
    assert samples("overlay_peer_requests_total", {"method": "crash", "outcome": "internal"}) == 1
    assert samples("overlay_peer_requests_total", {"method": "fail", "outcome": "not_found"}) == 1


async def test_a_request_cancelled_while_its_frame_is_on_the_way_keeps_the_link(nursery: trio.Nursery) -> None:
    """Sealing numbers a frame; a caller cancelled after that (a timeout, an interrupted download) must not leave a
    gap in the sequence, which the peer would refuse by dropping the link."""
    a = await start_good_node(nursery)
    b = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        slow = SlowSocket(link)
        async with trio.open_nursery() as calls:
            scope = trio.CancelScope()

            async def cancelled_call() -> None:
                with scope:
                    await link.request("echo", {"n": 1})

            calls.start_soon(cancelled_call)
            await slow.sending.wait()
            scope.cancel()
            slow.release.set()
        assert await link.request("echo", {"n": 2}) == {"from": a.key, "body": {"n": 2}}
    assert not link.closed
    assert b.drops("out_of_order") == 0


async def test_a_send_that_stalls_past_the_request_timeout_closes_the_link(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery, request_timeout=0.3)
    b = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        SlowSocket(link)  # never released
        with pytest.raises(ConnectionLost, match="a send stalled"):
            await link.request("echo", {})
        await link.wait_closed()
    assert link.close_reason == "send_stalled"


async def test_notices_arrive_in_order(three: list[GoodNode]) -> None:
    a, b, _ = three
    link = a.link_to(b)
    with trio.fail_after(LIMIT):
        for seq in range(300):
            await link.notify("hello", {"seq": seq})
        got = [await b.notices.receive() for _ in range(300)]
    assert [body["seq"] for _, body in got] == list(range(300))
    assert {key for key, _ in got} == {a.key}


async def test_busy_when_too_many_requests_in_flight(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery)
    b = await start_good_node(nursery, max_inflight=2)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        results: list[BaseException | dict[str, Any]] = []

        async def call() -> None:
            try:
                results.append(await link.request("block", {}))
            except PeerError as exc:
                results.append(exc)

        async with trio.open_nursery() as calls:
            for _ in range(2):
                calls.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            await call()  # the third one is refused at once
            assert isinstance(results[0], PeerError)
            assert results[0].code == "busy"
            b.unblock.set()
        assert results[1:] == [{}, {}]


async def _send_chunks(link: PeerLink, method: str, chunks: list[bytes]) -> None:
    async with link.open_transfer(method, {}) as tx:
        for chunk in chunks:
            await tx.send(chunk)


async def _give_up_after_one_chunk(link: PeerLink, header: dict[str, Any]) -> None:
    """A transfer left with an exception after its first chunk (the sender aborts it)."""
    async with link.open_transfer("put", header) as tx:
        await tx.send(b"x" * 100)
        raise RuntimeError("changed my mind")


async def test_transfer_refused_aborted_and_unknown(three: list[GoodNode]) -> None:
    a, b, _ = three
    link = a.link_to(b)
    with trio.fail_after(LIMIT):
        with pytest.raises(BadRequest, match="not wanted"):
            await _send_chunks(link, "reject", [b"x" * 1000] * 50)
        with pytest.raises(PeerError) as info:
            async with link.open_transfer("nobody", {}) as tx:
                await tx.send(b"x")
        assert info.value.code == "unknown_method"
        with pytest.raises(RuntimeError, match="changed my mind"):
            await _give_up_after_one_chunk(link, {"name": "half"})
        # an empty transfer still completes, and the link is healthy
        async with link.open_transfer("put", {"name": "empty"}) as tx:
            pass
        result = await b.transfers.receive()
        assert (result.header, result.size) == ({"name": "empty"}, 0)
        assert await link.request("echo", {}) == {"from": a.key, "body": {}}


async def test_close_and_persistent_reconnect(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery, reconnect_min=0.05, reconnect_max=0.2)
    b = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        first = await a.manager.connect(b.url, persistent=True)
        assert await a.manager.connect(b.url) is first  # one link per peer
        assert await a.manager.connect(b.url, expect_key=b.key) is first
        await b.link_to(a).aclose("going away")
        await first.wait_closed()
        assert first.close_reason == "going away"
        with pytest.raises(ConnectionLost):
            await first.request("echo", {})
        second = await a.manager.wait_linked(b.key)  # redialed by the keeper
        assert second is not first
        assert second.direction == "out"
        assert await second.request("echo", {}) == {"from": a.key, "body": {}}


async def test_max_links(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery, max_links=1)
    b = await start_good_node(nursery)
    c = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        await b.manager.connect(a.url)
        with pytest.raises(DialError, match="too_many_links"):
            await c.manager.connect(a.url)
        with pytest.raises(DialError, match="links already"):
            await a.manager.connect(c.url)


async def test_handshake_timeouts(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery, handshake_timeout=0.3)
    with trio.fail_after(LIMIT):
        # a silent client: connects and never sends initialRequest
        async with trio.open_nursery() as ws_nursery:
            ws = await open_raw(ws_nursery, a.url)
            assert await wait_close(ws) == (1008, "handshake_timeout")
            ws_nursery.cancel_scope.cancel()
        assert a.drops("handshake_timeout") == 1
        # a silent server: the dialer gives up
        url, _, closes = await serve_adversary(nursery, silent_responder)
        with pytest.raises(PeerTimeout):
            await a.manager.connect(url)
        assert await closes.receive() == (1008, "handshake_timeout")
        assert a.drops("handshake_timeout") == 2


async def test_idle_timeout_closes_a_silent_peer(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery, idle_timeout=0.4)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as ws_nursery:
            raw = RawInitiator(await open_raw(ws_nursery, a.url))
            await raw.handshake()
            linked = await a.manager.wait_linked(raw.identity.public_key_hex)
            assert await wait_close(raw.ws) == (1008, "idle_timeout")
            ws_nursery.cancel_scope.cancel()
        await linked.wait_closed()
        assert a.manager.link(raw.identity.public_key_hex) is None
        assert a.drops("idle_timeout") == 1


async def test_keepalive_keeps_links_up_and_measures_rtt(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery, idle_timeout=0.3, keepalive_interval=0.05)
    b = await start_good_node(nursery, idle_timeout=0.3, keepalive_interval=0.05)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        closed = trio.Event()

        async def watch() -> None:
            await link.wait_closed()
            closed.set()

        nursery.start_soon(watch)
        with trio.move_on_after(0.8):  # well past the idle timeout: pings keep it alive
            await closed.wait()
        assert not closed.is_set()
        assert link.rtt_ms is not None
        assert link.info().rtt_ms is not None


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:4760", "ws://127.0.0.1:4760/p2p/1"),
        ("ws://example.org:80/p2p/1", "ws://example.org:80/p2p/1"),
        ("wss://example.org:443", "wss://example.org:443/p2p/1"),
        ("[::1]:4760", "ws://[::1]:4760/p2p/1"),
    ],
)
def test_parse_address(address: str, expected: str) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["", "nohost", "http://x:1", "x:0", "x:99999", "ws://:5"])
def test_parse_bad_address(address: str) -> None:
    with pytest.raises(DialError):
        parse_address(address)


async def test_dial_errors(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        with trio.socket.socket() as sock:  # a bound port nobody listens on
            await sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            with pytest.raises(DialError):
                await a.manager.connect(f"127.0.0.1:{port}")
        with pytest.raises(DialError, match="HTTP 404"):
            await a.manager.connect(a.url.replace("/p2p/1", "/nope"))
        with pytest.raises(DialError, match="expected identity"):
            await a.manager.connect(a.url, expect_key="zz")
        with pytest.raises(DialError, match="self_link"):  # dialing ourselves: our own responder refuses
            await a.manager.connect(a.url)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
async def test_wss_with_a_configured_certificate(nursery: trio.Nursery, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await trio.run_process(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        capture_stdout=True,
        capture_stderr=True,
    )
    # a short handshake timeout: trio-websocket's server drops a failed TLS connection only when it expires
    server = await start_good_node(nursery, tls_cert=str(cert), tls_key=str(key), handshake_timeout=0.3)
    assert server.url.startswith("wss://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(cert))
    client = await start_good_node(nursery, client_ssl=trusting)
    stranger = await start_good_node(nursery)  # trusts only the system CAs
    with trio.fail_after(LIMIT):
        link = await client.manager.connect(server.url, expect_key=server.key)
        assert await link.request("echo", {"over": "tls"}) == {"from": client.key, "body": {"over": "tls"}}
        with pytest.raises(DialError):
            await stranger.manager.connect(server.url)
        with pytest.raises(DialError, match="during the websocket upgrade"):  # plain ws to a TLS port
            await stranger.manager.connect(server.url.replace("wss://", "ws://"))
