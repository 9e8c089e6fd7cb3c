"""Helpers for the peer-link tests: good nodes (PeerManagers on 127.0.0.1, port 0) and adversaries built from our own
sans-IO pieces plus a raw trio-websocket client or server."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.lowlevel
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    connect_websocket_url,
    serve_websocket,
)

from overlay_node.config import SwarmSection
from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest, NotFound
from overlay_node.metrics import Metrics
from overlay_node.net.peers import PeerLink, PeerManager, TransferReceiver
from overlay_node.protocol import handshake as hs
from overlay_node.protocol.session import FrameOpener, FrameSealer, derive_link_keys
from overlay_node.wire import frames as f


def swarm_config(**overrides: Any) -> SwarmSection:
    """Loopback, a free port, no keepalive noise; timeouts short enough for tests (built directly: some are below
    the config loader's minimums)."""
    base = SwarmSection(host="127.0.0.1", port=0, keepalive_interval=60.0, handshake_timeout=5.0, request_timeout=5.0)
    return dataclasses.replace(base, **overrides)


@dataclass
class TransferResult:
    sender: str
    header: dict[str, Any]
    size: int
    digest: str
    max_buffered: int
    window: int


@dataclass
class GoodNode:
    """A PeerManager with a few handlers: ``echo``, ``fail``, ``crash``, ``big``, ``block`` requests; ``hello`` notices;
    ``put`` transfers (hashed), ``reject`` transfers (fail after the first chunk) and ``hold`` transfers (never
    read until ``unblock``)."""

    manager: PeerManager
    metrics: Metrics
    url: str
    notices: trio.MemoryReceiveChannel[tuple[str, dict[str, Any]]]
    transfers: trio.MemoryReceiveChannel[TransferResult]
    links_seen: list[PeerLink] = field(default_factory=list)
    unblock: trio.Event = field(default_factory=trio.Event)

    @property
    def key(self) -> str:
        return self.manager.identity_key

    def drops(self, reason: str) -> float:
        return self.metrics.registry.get_sample_value("overlay_peer_drops_total", {"reason": reason}) or 0.0

    def link_to(self, other: GoodNode) -> PeerLink:
        link = self.manager.link(other.key)
        assert link is not None, "not linked"
        return link


async def start_good_node(
    nursery: trio.Nursery, *, client_ssl: ssl.SSLContext | None = None, **overrides: Any
) -> GoodNode:
    identity = Identity.generate()
    metrics = Metrics()
    manager = PeerManager(identity, swarm_config(**overrides), metrics, client_ssl=client_ssl)
    notice_tx, notice_rx = trio.open_memory_channel[tuple[str, dict[str, Any]]](100)
    transfer_tx, transfer_rx = trio.open_memory_channel[TransferResult](10)
    node = GoodNode(manager=manager, metrics=metrics, url="", notices=notice_rx, transfers=transfer_rx)

    async def echo(link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        return {"from": link.peer_key, "body": body}

    async def fail(_link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        raise NotFound(f"nothing called {body.get('name')!r}")

    async def crash(_link: PeerLink, _body: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("a bug in a handler")

    async def big(_link: PeerLink, _body: dict[str, Any]) -> dict[str, Any]:
        return {"blob": bytes(manager._config.max_frame)}

    async def block(_link: PeerLink, _body: dict[str, Any]) -> dict[str, Any]:
        await node.unblock.wait()
        return {}

    async def hello(link: PeerLink, body: dict[str, Any]) -> None:
        await notice_tx.send((link.peer_key, body))

    async def put(link: PeerLink, header: dict[str, Any], receiver: TransferReceiver) -> None:
        digest = hashlib.sha256()
        size = 0
        async for chunk in receiver:
            digest.update(chunk)
            size += len(chunk)
            if header.get("slow"):
                await trio.lowlevel.checkpoint()  # let the sender run ahead and fill the window
                await trio.lowlevel.checkpoint()
        result = TransferResult(link.peer_key, header, size, digest.hexdigest(), receiver.max_buffered, receiver.window)
        await transfer_tx.send(result)

    async def hold(_link: PeerLink, _header: dict[str, Any], _receiver: TransferReceiver) -> None:
        await node.unblock.wait()  # reads nothing: the sender gets the first window of credit and no more

    async def reject(_link: PeerLink, _header: dict[str, Any], receiver: TransferReceiver) -> None:
        async for _ in receiver:
            raise BadRequest("this content is not wanted")

    manager.on_request("echo", echo)
    manager.on_request("fail", fail)
    manager.on_request("crash", crash)
    manager.on_request("block", block)
    manager.on_request("big", big)
    manager.on_notice("hello", hello)
    manager.on_transfer("put", put)
    manager.on_transfer("reject", reject)
    manager.on_transfer("hold", hold)
    manager.on_link(node.links_seen.append)
    urls: list[str] = await nursery.start(manager.run)
    node.url = urls[0]
    return node


# -- adversaries ------------------------------------------------------------------------------------------------


async def open_raw(nursery: trio.Nursery, url: str) -> WebSocketConnection:
    ws: WebSocketConnection = await connect_websocket_url(nursery, url, max_message_size=64 * 1024 * 1024)
    return ws


async def wait_close(ws: WebSocketConnection) -> tuple[int, str | None]:
    """Read (and discard) messages until the other side closes; return its close code and reason."""
    while True:
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            reason = exc.reason
            break
    assert reason is not None
    return reason.code, reason.reason


class RawInitiator:
    """A hand-driven initiator: the real handshake and frame sealing, but every step under the test's control."""

    def __init__(self, ws: WebSocketConnection, identity: Identity | None = None) -> None:
        self.ws = ws
        self.identity = identity or Identity.generate()
        self.sealer: FrameSealer | None = None
        self.opener: FrameOpener | None = None
        self.peer_key = ""

    async def handshake(self, *, send_hello: bool = True) -> None:
        initiator = hs.HandshakeInitiator(self.identity)
        await self.ws.send_message(initiator.initial_request())
        result = initiator.receive_response(await self.ws.get_message())
        keys = derive_link_keys(self.identity.shared_secret(result.peer_key), result)
        self.sealer = FrameSealer(keys.initiator_to_responder)
        self.opener = FrameOpener(keys.responder_to_initiator, f.DEFAULT_MAX_FRAME)
        self.peer_key = result.peer_key_hex
        if send_hello:
            await self.send(f.Hello(agent="raw"))
            hello = await self.receive()
            assert isinstance(hello, f.Hello)

    def seal(self, frame: f.Frame) -> bytes:
        assert self.sealer is not None
        return self.sealer.seal(f.encode(frame))

    async def send(self, frame: f.Frame) -> bytes:
        data = self.seal(frame)
        await self.ws.send_message(data)
        return data

    async def receive(self) -> f.Frame:
        assert self.opener is not None
        message = await self.ws.get_message()
        assert isinstance(message, bytes)
        return f.decode(self.opener.open(message))


async def impersonate(ws: WebSocketConnection, victim_key: str) -> None:
    """Claim someone else's identity key: the responder answers, but the link keys cannot be derived without the
    victim's private key, so the best an impersonator can do is guess."""
    request = hs.InitialRequest(identity_key=victim_key, initial_nonce=hs.create_nonce(Identity.generate()))
    await ws.send_message(request.to_json())
    await ws.get_message()  # the signed initialResponse
    await ws.send_message(FrameSealer(b"\x00" * 32).seal(f.encode(f.Hello(agent="mallory"))))


AdversaryBehaviour = Callable[[WebSocketConnection, Identity], Awaitable[None]]


async def bad_signature_responder(ws: WebSocketConnection, identity: Identity) -> None:
    """Answer the handshake correctly except for one flipped bit in the signature."""
    response, _ = hs.HandshakeResponder(identity).receive_request(await ws.get_message())
    obj = json.loads(response)
    obj["signature"][-1] ^= 1
    await ws.send_message(json.dumps(obj))


async def silent_responder(ws: WebSocketConnection, identity: Identity) -> None:
    """Accept the websocket and never answer the handshake."""


async def serve_adversary(
    nursery: trio.Nursery, behaviour: AdversaryBehaviour
) -> tuple[str, Identity, trio.MemoryReceiveChannel[tuple[int, str | None]]]:
    """A websocket server playing a misbehaving responder; reports the close code and reason each client sent."""
    identity = Identity.generate()
    closes_tx, closes_rx = trio.open_memory_channel[tuple[int, str | None]](10)

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await behaviour(ws, identity)
        await closes_tx.send(await wait_close(ws))

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}/p2p/1", identity, closes_rx


class SlowSocket:
    """A link's websocket whose first send is held up (a full socket buffer) until ``release`` is set."""

    def __init__(self, link: PeerLink) -> None:
        self.ws = link._ws
        self.sending, self.release = trio.Event(), trio.Event()
        link._ws = self  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ws, name)

    async def send_message(self, message: str | bytes) -> None:
        if not self.sending.is_set():
            self.sending.set()
            await self.release.wait()
        await self.ws.send_message(message)
