"""The peer manager: the swarm listener, dialing, one link per peer, reconnects, and the handler registry.

Invariants:

1. At most one established link per peer key is registered, and both sides keep the same one. A registered link
   is never displaced by a link that was being set up at the same time, so whatever a caller got (from
   :meth:`PeerManager.connect`, :meth:`PeerManager.link`, :meth:`PeerManager.wait_linked` or an ``on_link``
   callback) stays the link to that peer. Every decision is taken before the deciding side sends its Hello, so a
   losing link is never established on the other side (the handshake order makes this possible: the responder
   registers a link before it sends its Hello, the dialer only once that Hello arrives):

   - a dial *claims* the peer's key while it is set up: from the start when the caller named the key
     (``expect_key``), else from the moment the responder proved it;
   - a dialer whose claimed key got a registered link meanwhile abandons its dial before sending its Hello and
     hands its caller the registered link;
   - a responder with a registered link to that peer keeps it when it is the better one (same direction -> the
     newer link wins, the older one is probably dead; opposite directions -> the one dialed by the lower identity
     key wins -- which, with the rules here on both sides, displaces only a link the dialer had already dropped);
   - a responder without one, but with its own dial to that peer in progress (a claim), keeps its own dial when
     its identity key is the lower one, and else accepts the inbound link (its own dial then loses on the other
     side, or abandons itself when it learns the peer's key).

   The loser is closed with reason ``duplicate_link`` before its Hello is sent; a dialer whose link lost that way
   waits (up to ``handshake_timeout``) for the link the peer keeps, so :meth:`PeerManager.connect` returns the
   kept link, never the loser.
2. At most ``max_links`` established links; at the limit inbound connections are closed with code 1013 and
   reason ``too_many_links`` and dialing raises :class:`~overlay_node.errors.DialError`. Inbound handshakes in
   progress are bounded apart from links, in all (``max_handshakes``) and per remote address
   (``max_handshakes_per_ip``): beyond either an upgrade request is refused before the websocket exists (HTTP 503,
   body ``too_many_handshakes``), so silent half-open links from one address cannot keep other peers out.
3. Concurrent dials of one address share one attempt.
4. A link's failure never escapes its own task: links run in the manager's nursery and end on their own.

Resource handling: :meth:`PeerManager.run` owns a nursery holding the websocket server, every link and the
reconnect loops; cancelling it closes every link (each with a short shielded close handshake).
"""

from __future__ import annotations

import logging
import random
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Final, NoReturn, TypeVar

import trio
from prometheus_client import Counter
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    Endpoint,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    wrap_client_stream,
)

from overlay_node import __version__
from overlay_node.config import SwarmSection
from overlay_node.crypto.keys import Identity, public_key_hex
from overlay_node.errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    DialError,
    NotFound,
    OverlayError,
    PeerTimeout,
    RemoteProtocolError,
)
from overlay_node.metrics import Metrics, instrument
from overlay_node.net.accept import AcceptGuard, accept_failures
from overlay_node.net.link import (
    CLOSE_GRACE,
    CLOSE_TRY_LATER,
    WS_SLACK,
    Direction,
    Handlers,
    LinkHooks,
    LinkInfo,
    LinkSuperseded,
    NoticeHandler,
    PeerError,
    PeerLink,
    RequestHandler,
    TransferHandler,
    TransferReceiver,
    TransferSender,
)
from overlay_node.net.listen import open_swarm_listeners
from overlay_node.net.tcp import eager_stream
from overlay_node.protocol.session import FRAME_OVERHEAD, Session
from overlay_node.wire.frames import MAX_ADDRESS_LEN, MAX_LISTEN, Hello

__all__ = [
    "PROTOCOL_PATH",
    "LinkInfo",
    "PeerError",
    "PeerLink",
    "PeerManager",
    "Resolver",
    "TransferReceiver",
    "TransferSender",
    "parse_address",
]

logger = logging.getLogger(__name__)

#: the websocket path of the peer-link protocol, version 1
PROTOCOL_PATH: Final = "/p2p/1"
#: bytes read from a peer's socket at once (trio-websocket's default of 4 KiB costs throughput on transfers)
RECEIVE_BUFFER: Final = 64 * 1024
AGENT: Final = f"overlay-node/{__version__}"
#: addresses tried per source (hints, each resolver) when reaching a peer by identity
REACH_ADDRESSES: Final = 8
#: known peers redialled at start, and the attempts per peer before giving up on it
REDIAL_PEERS: Final = 32
REDIAL_ATTEMPTS: Final = 6

#: ``await resolver(identity_key) -> addresses`` where a peer may be dialled (see :meth:`PeerManager.reach`)
Resolver = Callable[[str], Awaitable[Sequence[str]]]
_DIAL_FAILURES: Final = (DialError, PeerTimeout, RemoteProtocolError, ConnectionLost)


_H = TypeVar("_H")


class _Registry(dict[str, _H]):
    """Handlers by method name. While ``starting()`` (the node has not finished starting), a method without a
    handler yet gets ``held(method)`` instead of nothing: a handler that waits for the start to finish, then serves
    with the handler registered by then (or refuses as before)."""

    def __init__(self, starting: Callable[[], bool], held: Callable[[str], _H]) -> None:
        super().__init__()
        self._starting = starting
        self._held = held

    def get(self, method: str, default: Any = None) -> Any:  # the links look a method up only this way
        handler = super().get(method)
        if handler is not None:
            return handler
        return self._held(method) if self._starting() else default


def parse_address(address: str) -> str:
    """The websocket URL for ``ws://host:port/p2p/1``, ``wss://...`` or ``host:port``.

    Raises:
        DialError: not one of those forms.
    """
    text = address.strip()
    if "://" not in text:
        text = f"ws://{text}"
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise DialError(f"bad peer address {address!r}: expected host:port or ws://host:port/p2p/1") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname or port is None or port == 0:
        raise DialError(f"bad peer address {address!r}: expected host:port or ws://host:port/p2p/1")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    path = parts.path or PROTOCOL_PATH
    return f"{parts.scheme}://{host}:{port}{path}"


@contextmanager
def _single_error() -> Iterator[None]:
    """Re-raise a one-exception group from our own nurseries as that exception (strict groups wrap everything)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], Exception):
            raise leaves[0] from leaves[0].__cause__
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        elif not isinstance(exc, trio.Cancelled):
            out.append(exc)
    return out


def _dial_error(url: str, exc: BaseException) -> DialError:
    if isinstance(exc, ConnectionRejected):
        said = (exc.body or b"").decode("utf-8", "replace").strip()[:64]  # e.g. too_many_handshakes: retry later
        return DialError(f"{url} rejected the websocket (HTTP {exc.status_code}{': ' + said if said else ''})")
    return DialError(f"cannot reach {url}: {exc}")


class _WatchedStream(trio.abc.Stream):
    """Forwards to a stream and sets ``ended`` once it closes or breaks.

    trio-websocket's client waits for the upgrade answer without noticing that the connection ended (for example
    a plain ws:// dial to a TLS port); the dialer races that wait against ``ended``.
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.ended = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.inner.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise
        if not data:
            self.ended.set()
        return data

    async def aclose(self) -> None:
        self.ended.set()
        await self.inner.aclose()


class _PendingDial:
    """One dial in progress; later callers for the same address wait for its outcome."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.link: PeerLink | None = None
        self.error: BaseException | None = None

    async def wait(self) -> PeerLink:
        await self.done.wait()
        if self.link is None:
            assert self.error is not None
            raise self.error
        return self.link


class PeerManager:
    """Owns the swarm port and every peer link of a node.

    Args:
        identity: the node's key (its public key names it to peers).
        config: the ``[swarm]`` section.
        metrics: the node's instruments.
        client_ssl: how ``wss://`` dials verify the peer's certificate (default: the system's CAs).
    """

    def __init__(
        self,
        identity: Identity,
        config: SwarmSection,
        metrics: Metrics,
        *,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self._identity = identity
        self._config = config
        self._metrics = metrics
        # set by hold_unknown_methods(), until all_methods_registered(): see there
        self._starting: trio.Event | None = None
        self._handlers = Handlers(
            requests=_Registry(self._is_starting, self._held_request),
            notices=_Registry(self._is_starting, self._held_notice),
            transfers=_Registry(self._is_starting, self._held_transfer),
        )
        self._on_link: list[Callable[[PeerLink], None]] = []
        self._links: dict[str, PeerLink] = {}
        self._link_events: dict[str, trio.Event] = {}
        self._handshaking: set[PeerLink] = set()
        self._dials: dict[str, _PendingDial] = {}
        # our dials in progress whose peer key is known (their claims; invariant 1)
        self._claims: dict[PeerLink, str] = {}
        self._keepers: set[str] = set()
        # inbound handshakes in progress, from the upgrade request until established or ended (invariant 2): in
        # all, by remote address, and the address of each link in setup
        self._inbound_handshakes = 0
        self._handshakes_by_ip: dict[str, int] = {}
        self._handshake_ips: dict[PeerLink, str] = {}
        self._refused = instrument(
            metrics,
            Counter,
            "overlay_swarm_refused",
            "Inbound swarm connections refused before their handshake, by reason",
            ["reason"],
        )
        self._accept_guard = AcceptGuard("swarm", accept_failures(metrics).labels("swarm").inc)
        self._resolvers: list[Resolver] = []
        self._nursery: trio.Nursery | None = None
        self._listen: list[str] = []
        self._server_ssl: ssl.SSLContext | None = None
        self._client_ssl = client_ssl
        # websocket messages up to this size reach our own checks (which answer frame_too_large)
        self._max_message = config.max_frame + FRAME_OVERHEAD + WS_SLACK

    # -- registration ---------------------------------------------------------------------------------------------

    def on_request(self, method: str, handler: RequestHandler) -> None:
        """Serve peer requests for ``method``: ``await handler(link, body) -> answer body``."""
        self._handlers.requests[method] = handler

    def on_notice(self, method: str, handler: NoticeHandler) -> None:
        """Handle one-way notices for ``method``."""
        self._handlers.notices[method] = handler

    def on_transfer(self, method: str, handler: TransferHandler) -> None:
        """Receive transfers for ``method``: ``await handler(link, header, receiver)``; iterate ``receiver``."""
        self._handlers.transfers[method] = handler

    def hold_unknown_methods(self) -> None:
        """Until :meth:`all_methods_registered`, a peer's request, notice or transfer for a method that has no handler
        yet waits for it instead of being refused with ``unknown_method``. The node calls this before the peer
        manager runs, because links are accepted before every service has registered its methods (a peer that
        reconnects to a restarting node must not be told that its streams or payments do not exist). What waits
        counts against ``swarm.max_inflight`` as any request does, and the peer's own timeout bounds it."""
        if self._starting is None:
            self._starting = trio.Event()

    def all_methods_registered(self) -> None:
        """Every service has registered its methods: what waits is served (or refused as unknown) now."""
        if self._starting is not None:
            self._starting.set()

    def _is_starting(self) -> bool:
        return self._starting is not None and not self._starting.is_set()

    async def _started(self) -> None:
        if self._starting is not None:
            await self._starting.wait()

    def _held_request(self, method: str) -> RequestHandler:
        async def held(link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
            await self._started()
            handler: RequestHandler | None = self._handlers.requests.get(method)
            if handler is None:
                raise PeerError(f"no handler for {method!r}", code="unknown_method")
            return await handler(link, body)

        return held

    def _held_notice(self, method: str) -> NoticeHandler:
        async def held(link: PeerLink, body: dict[str, Any]) -> None:
            await self._started()  # notices are handled one at a time: the ones after it wait too (their order)
            handler: NoticeHandler | None = self._handlers.notices.get(method)
            if handler is not None:
                await handler(link, body)

        return held

    def _held_transfer(self, method: str) -> TransferHandler:
        async def held(link: PeerLink, header: dict[str, Any], receiver: TransferReceiver) -> None:
            await self._started()
            handler: TransferHandler | None = self._handlers.transfers.get(method)
            if handler is None:
                raise PeerError(f"no handler for {method!r}", code="unknown_method")
            await handler(link, header, receiver)

        return held

    def on_link(self, callback: Callable[[PeerLink], None]) -> None:
        """Call ``callback(link)`` (synchronously) each time a link is authenticated and registered."""
        self._on_link.append(callback)

    # -- inspection -----------------------------------------------------------------------------------------------

    @property
    def identity_key(self) -> str:
        return self._identity.public_key_hex

    @property
    def listen_addresses(self) -> list[str]:
        """The dialable swarm URLs (after :meth:`run` started)."""
        return list(self._listen)

    def link(self, identity_key: str) -> PeerLink | None:
        """The established link to ``identity_key`` (hex), if any."""
        link = self._links.get(identity_key.lower())
        return None if link is None or link.closed else link

    def links(self) -> list[LinkInfo]:
        """A snapshot of every established link."""
        return [link.info() for link in self._links.values() if not link.closed]

    async def wait_linked(self, identity_key: str) -> PeerLink:
        """Wait until a link to ``identity_key`` is established and return it."""
        key = identity_key.lower()
        while True:
            link = self.link(key)
            if link is not None:
                return link
            event = self._link_events.get(key)
            if event is None:
                event = self._link_events[key] = trio.Event()
            await event.wait()

    # -- running --------------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:port``, report the listen URLs, dial the bootstrap peers, serve until cancelled.

        Raises:
            ConfigError: the TLS certificate or key cannot be loaded.
            TransportError: the port cannot be bound.
        """
        cfg = self._config
        self._setup_tls()
        listeners, endpoints = await open_swarm_listeners(cfg.host, cfg.port, self._server_ssl, self._accept_guard)
        server = WebSocketServer(
            self._serve_connection,
            listeners,  # type: ignore[arg-type]  # any trio Listener works; the hint is narrower
            max_message_size=self._max_message,
            receive_buffer_size=RECEIVE_BUFFER,
            connect_timeout=cfg.handshake_timeout,
            disconnect_timeout=CLOSE_GRACE,
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(server.run)
            scheme = "wss" if self._server_ssl is not None else "ws"
            self._listen = [self._listen_url(scheme, host, port) for host, port in endpoints][:MAX_LISTEN]
            logger.info("swarm listening on %s as %s", ", ".join(self._listen), self.identity_key[:16])
            for address in cfg.bootstrap:
                nursery.start_soon(self._keep_linked, address, None)
            task_status.started(list(self._listen))
            await trio.sleep_forever()

    def _setup_tls(self) -> None:
        cfg = self._config
        if bool(cfg.tls_cert) != bool(cfg.tls_key):
            raise ConfigError("swarm.tls_cert and swarm.tls_key must be set together")
        if cfg.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"swarm.tls_cert/tls_key: cannot load: {exc}") from exc
            self._server_ssl = context

    def _listen_url(self, scheme: str, host: Any, port: int) -> str:
        name = self._config.advertise_host or str(host)
        if name in ("0.0.0.0", ""):
            name = "127.0.0.1"
        elif name == "::":
            name = "::1"
        if ":" in name:
            name = f"[{name}]"
        return f"{scheme}://{name}:{port}{PROTOCOL_PATH}"[:MAX_ADDRESS_LEN]

    def _hello(self) -> Hello:
        return Hello(agent=AGENT, listen=tuple(self._listen), max_frame=self._config.max_frame)

    def _new_link(self, ws: WebSocketConnection, *, initiator: bool, address: str, expect_key: str | None) -> PeerLink:
        session = Session(self._identity, initiator=initiator, hello=self._hello(), expect_key=expect_key)
        direction: Direction = "out" if initiator else "in"
        return PeerLink(
            ws,
            session,
            config=self._config,
            metrics=self._metrics,
            handlers=self._handlers,
            direction=direction,
            address=address,
            local_key=self.identity_key,
            hooks=LinkHooks(
                on_established=self._register,
                on_peer_key=self._claim if initiator else None,
                on_closed=self._unregister,
            ),
        )

    # -- inbound --------------------------------------------------------------------------------------------------

    async def _serve_connection(self, request: WebSocketRequest) -> None:
        """One inbound websocket (runs in trio-websocket's handler task; must not raise for a peer's sake)."""
        address = "(gone)"
        try:
            # the peer's address comes from the socket: a client that reset the connection after its upgrade request
            # makes getpeername fail (ENOTCONN), which must end this connection only, not the listener
            remote = request.remote
            ip = str(remote.address) if isinstance(remote, Endpoint) else str(remote)
            address = f"{remote.address}:{remote.port}" if isinstance(remote, Endpoint) else str(remote)
            if request.path != PROTOCOL_PATH:
                await request.reject(404, body=b"not a peer-link endpoint\n")
                return
            refusal = self._handshake_refusal(ip)
            if refusal is not None:
                # before the upgrade: no websocket, no session, no close handshake to wait for
                self._refused.labels(refusal).inc()
                logger.debug("refusing link from %s: %s", address, refusal)
                await request.reject(503, extra_headers=[(b"Retry-After", b"1")], body=b"too_many_handshakes\n")
                return
            await self._serve_inbound(request, ip, address)
        except (RemoteProtocolError, PeerTimeout, LinkSuperseded):
            pass  # logged and counted by the link
        except (ConnectionLost, ConnectionClosed, HandshakeError, trio.BrokenResourceError, OSError) as exc:
            logger.debug("inbound link from %s ended during setup: %s", address, exc)

    def _handshake_refusal(self, ip: str) -> str | None:
        """Why an inbound upgrade from ``ip`` is refused now (invariant 2), or None."""
        cfg = self._config
        if self._inbound_handshakes >= cfg.max_handshakes:
            return "too_many_handshakes"
        if self._handshakes_by_ip.get(ip, 0) >= cfg.max_handshakes_per_ip:
            return "too_many_handshakes_per_ip"
        return None

    async def _serve_inbound(self, request: WebSocketRequest, ip: str, address: str) -> None:
        """Accept the upgrade and run the link, holding one of ``ip``'s handshake slots until it is established (see
        :meth:`_handshake_over`) or ends."""
        self._inbound_handshakes += 1
        self._handshakes_by_ip[ip] = self._handshakes_by_ip.get(ip, 0) + 1
        link: PeerLink | None = None
        try:
            deadline = trio.current_time() + self._config.handshake_timeout
            ws = await request.accept()
            if len(self._links) >= self._config.max_links:
                logger.info("refusing link from %s: %d links already", address, self._config.max_links)
                self._refused.labels("too_many_links").inc()
                with trio.move_on_after(CLOSE_GRACE):
                    await ws.aclose(CLOSE_TRY_LATER, "too_many_links")
                return
            link = self._new_link(ws, initiator=False, address=address, expect_key=None)
            self._handshaking.add(link)
            self._handshake_ips[link] = ip
            try:
                await link.run(handshake_deadline=deadline)
            finally:
                self._handshaking.discard(link)
        finally:
            if link is None or link in self._handshake_ips:
                self._release_handshake(link, ip)

    def _handshake_over(self, link: PeerLink) -> None:
        """An inbound link's handshake ended (established): its slot is free for the next one."""
        ip = self._handshake_ips.get(link)
        if ip is not None:
            self._release_handshake(link, ip)

    def _release_handshake(self, link: PeerLink | None, ip: str) -> None:
        if link is not None:
            self._handshake_ips.pop(link, None)
        self._inbound_handshakes -= 1
        left = self._handshakes_by_ip[ip] - 1
        if left:
            self._handshakes_by_ip[ip] = left
        else:
            del self._handshakes_by_ip[ip]

    # -- registry -------------------------------------------------------------------------------------------------

    def _claim(self, link: PeerLink, key: str) -> PeerLink | None:
        """Called by a dialing link once the responder proved ``key``, before its Hello: go on (None), or abandon it
        for the link already registered for that peer (invariant 1)."""
        kept = self.link(key)
        if kept is not None:
            logger.info(
                "linked with %s meanwhile (%s); abandoning the dial to %s", key[:16], kept.direction, link.address
            )
            self._claims.pop(link, None)
            return kept
        self._claims[link] = key
        return None

    def _rival_dial(self, link: PeerLink) -> PeerLink | None:
        """Our own dial in progress to the peer of the inbound ``link`` when it wins the tie-break (lower key)."""
        if self.identity_key >= link.peer_key:
            return None
        for own, key in self._claims.items():
            if key == link.peer_key and own is not link and not own.closed:
                return own
        return None

    def _register(self, link: PeerLink) -> PeerLink | str:
        """Called by a link once established: keep it, keep another one, or refuse (invariant 1 and 2)."""
        key = link.peer_key
        self._handshaking.discard(link)
        self._handshake_over(link)
        self._claims.pop(link, None)
        old = self._links.get(key)
        if old is not None and not old.closed:
            if self._prefer(link, old) is old:
                logger.info("keeping the existing link to %s; closing the new %s one", key[:16], link.direction)
                return old
            logger.info("link to %s replaced by a new %s link", key[:16], link.direction)
            assert self._nursery is not None
            self._nursery.start_soon(old.aclose, "duplicate_link")
        elif link.direction == "in" and (own := self._rival_dial(link)) is not None:
            logger.info("keeping our own dial to %s (%s); closing its inbound link", key[:16], own.address)
            return own
        elif len(self._links) >= self._config.max_links:
            return "too_many_links"
        self._links[key] = link
        self._metrics.peer_links.set(len(self._links))
        self._metrics.peer_links_opened.labels(link.direction).inc()
        logger.info("linked with %s (%s, %s)", key[:16], link.direction, link.address)
        event = self._link_events.pop(key, None)
        if event is not None:
            event.set()
        for callback in self._on_link:
            callback(link)
        return link

    @staticmethod
    def _prefer(new: PeerLink, old: PeerLink) -> PeerLink:
        if new.initiator_key == old.initiator_key:
            return new
        return new if new.initiator_key < old.initiator_key else old

    def _unregister(self, link: PeerLink) -> None:
        if self._links.get(link.peer_key) is link:
            del self._links[link.peer_key]
            self._metrics.peer_links.set(len(self._links))

    # -- outbound -------------------------------------------------------------------------------------------------

    async def connect(self, address: str, *, expect_key: str | None = None, persistent: bool = False) -> PeerLink:
        """Return an authenticated link to the peer at ``address``, dialing it if needed.

        Args:
            address: ``ws://host:port/p2p/1``, ``wss://...`` or ``host:port``.
            expect_key: the peer's identity key when known; a different key fails with ``unexpected_identity``.
            persistent: keep the peer linked: redial with backoff (``reconnect_min`` .. ``reconnect_max``)
                whenever the link ends, until the manager stops.

        Raises:
            DialError: bad address, unreachable, refused, or the manager is not running.
            PeerTimeout: the handshake did not finish within ``handshake_timeout``.
            RemoteProtocolError: the peer failed the handshake (``bad_signature``, ``unexpected_identity``, ...).
        """
        url = parse_address(address)
        key: str | None = None
        if expect_key is not None:
            try:
                key = public_key_hex(expect_key)
            except BadRequest as exc:
                raise DialError(f"bad expected identity key: {exc}") from None
        link = self._existing(url, key)
        if link is None:
            link = await self._dial(url, key)
        if persistent and url not in self._keepers:
            assert self._nursery is not None
            self._keepers.add(url)
            self._nursery.start_soon(self._keep_linked, url, link)
        return link

    def _existing(self, url: str, key: str | None) -> PeerLink | None:
        if key is not None:
            return self.link(key)
        for link in self._links.values():
            if not link.closed and (link.address == url or url in link.listen_addresses):
                return link
        return None

    async def _dial(self, url: str, key: str | None) -> PeerLink:
        if self._nursery is None:
            raise DialError("the peer manager is not running")
        pending = self._dials.get(url)
        if pending is not None:
            return await pending.wait()
        pending = self._dials[url] = _PendingDial()
        try:
            link: PeerLink = await self._nursery.start(self._outbound, url, key)
        except BaseException as exc:
            # the callers waiting on this dial get its error; never the first caller's cancellation (a Cancelled
            # raised in another task would cancel whatever that task's nursery holds: the manager's own nursery)
            pending.error = (
                exc
                if isinstance(exc, Exception)
                else DialError(f"the dial to {url} was abandoned by its first caller; try again")
            )
            if isinstance(exc, RemoteProtocolError):
                outcome = exc.reason
            else:
                outcome = exc.code if isinstance(exc, OverlayError) else "cancelled"
            self._metrics.dials.labels(outcome).inc()
            raise
        else:
            pending.link = link
            self._metrics.dials.labels("ok").inc()
            return link
        finally:
            pending.done.set()
            del self._dials[url]

    async def _outbound(self, url: str, key: str | None, *, task_status: trio.TaskStatus[PeerLink]) -> None:
        """Dial ``url`` and run the link; reports the established link (or the one kept instead) via started()."""
        cfg = self._config
        if len(self._links) >= cfg.max_links:
            raise DialError(f"cannot dial {url}: {cfg.max_links} links already")
        deadline = trio.current_time() + cfg.handshake_timeout
        link: PeerLink | None = None
        tcp: list[trio.abc.Stream] = []
        try:
            with _single_error():
                async with trio.open_nursery() as ws_nursery:
                    ws = await self._open_ws(ws_nursery, url, deadline, tcp)
                    link = self._new_link(ws, initiator=True, address=url, expect_key=key)
                    self._handshaking.add(link)
                    if key is not None:
                        self._claims[link] = key
                    try:
                        await link.run(handshake_deadline=deadline, task_status=task_status)
                    finally:
                        self._handshaking.discard(link)
                        self._claims.pop(link, None)
                    # the websocket's reader (in ws_nursery) ends by itself once the peer closes the connection after
                    # the close handshake; until then it is what completes a close another task may be waiting on
                    # (``PeerLink.aclose``: cancelled here at once, that close waited out its whole grace). A peer
                    # that never closes gets CLOSE_GRACE
                    ws_nursery.cancel_scope.deadline = min(
                        ws_nursery.cancel_scope.deadline, trio.current_time() + CLOSE_GRACE
                    )
        except LinkSuperseded as exc:
            task_status.started(exc.winner)
        except ConnectionLost as exc:
            # the responder refused this link because it keeps another one with us: use that one. It is registered
            # here already, or it is the responder's own dial to us, whose Hello is on its way (invariant 1)
            if link is not None and link.close_reason == "duplicate_link" and link.peer_key:
                kept = self.link(link.peer_key)
                if kept is None:
                    with trio.move_on_after(cfg.handshake_timeout):
                        kept = await self.wait_linked(link.peer_key)
                if kept is not None:
                    task_status.started(kept)
                    return
            raise DialError(f"{url} refused the link: {exc}") from None
        except (ConnectionClosed, HandshakeError, trio.BrokenResourceError, OSError) as exc:
            if link is not None and link.established:
                logger.debug("link to %s ended: %s", url, exc)  # after started(): nobody waits for an error
                return
            raise _dial_error(url, exc) from exc
        finally:
            # the TCP connection is closed here, whatever ended the dial or the link: the websocket's close returns
            # at once without closing its stream when the close handshake is over already (a peer that shut down
            # first), and the socket then stayed open until the garbage collector found it
            for stream in tcp:
                await trio.aclose_forcefully(stream)

    async def _open_ws(
        self, nursery: trio.Nursery, url: str, deadline: float, tcp: list[trio.abc.Stream]
    ) -> WebSocketConnection:
        """TCP (+ TLS for wss://) and the websocket upgrade, all before ``deadline``; failures are DialError. The
        TCP stream goes in ``tcp`` as soon as it is connected: the caller closes it when it is done."""
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port or 0
        try:
            with trio.fail_at(deadline):
                # a frame's send yields only when the socket's buffer is full (net/tcp.py)
                stream: trio.abc.Stream = eager_stream(await trio.open_tcp_stream(host, port))
                tcp.append(stream)
                if parts.scheme == "wss":
                    # the certificate is verified (system CAs unless client_ssl says otherwise): without that an
                    # active man in the middle could read the traffic, though never alter or forge it
                    context = self._client_ssl or ssl.create_default_context()
                    tls = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
                    await tls.do_handshake()
                    stream = tls
                watched = _WatchedStream(stream)
                opened: list[WebSocketConnection] = []

                async def upgrade() -> None:
                    ws = await wrap_client_stream(
                        nursery,
                        watched,  # type: ignore[arg-type]  # any trio Stream works; the hint is narrower
                        f"{host}:{port}",
                        parts.path or PROTOCOL_PATH,
                        max_message_size=self._max_message,
                        receive_buffer_size=RECEIVE_BUFFER,
                    )
                    opened.append(ws)
                    race.cancel_scope.cancel()

                async def watch() -> None:
                    await watched.ended.wait()
                    race.cancel_scope.cancel()

                async with trio.open_nursery() as race:
                    race.start_soon(upgrade)
                    race.start_soon(watch)
                if not opened:
                    raise DialError(f"{url} closed the connection during the websocket upgrade")
                return opened[0]
        except trio.TooSlowError:
            raise PeerTimeout(f"connecting to {url} timed out") from None
        except trio.BrokenResourceError as exc:
            raise DialError(f"cannot reach {url}: {exc.__cause__ or exc}") from exc
        except (OSError, HandshakeError, ConnectionClosed) as exc:
            raise _dial_error(url, exc) from exc

    async def _keep_linked(self, address: str, link: PeerLink | None) -> NoReturn:
        """Keep a link to ``address`` up: redial with exponential backoff and jitter whenever it ends."""
        cfg = self._config
        try:
            url = parse_address(address)
        except DialError as exc:
            logger.warning("not dialing bootstrap peer: %s", exc)
            await trio.sleep_forever()
        self._keepers.add(url)  # (bootstrap peers; connect() adds its own)
        delay = cfg.reconnect_min
        key = link.peer_key if link is not None else None
        while True:
            if link is None and key is not None:
                link = self.link(key)  # the peer may have dialed us meanwhile
            if link is not None:
                since = trio.current_time()
                await link.wait_closed()
                key = link.peer_key
                link = None
                if trio.current_time() - since >= cfg.reconnect_max:
                    delay = cfg.reconnect_min
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, cfg.reconnect_max)
                continue
            began = trio.current_time()
            try:
                link = await self._dial(url, key)
                key = link.peer_key
            except (DialError, PeerTimeout, RemoteProtocolError, ConnectionLost) as exc:
                # the backoff counts from the start of the attempt: a dial that timed out (nothing answers, as
                # across a network cut) has waited already, and the next one goes out sooner after a heal
                pause = max(0.0, delay * random.uniform(0.5, 1.0) - (trio.current_time() - began))
                logger.info("dial %s failed (%s); retrying in %.2gs", url, exc, pause)
                await trio.sleep(pause)
                delay = min(delay * 2, cfg.reconnect_max)

    # -- reaching a peer by identity ------------------------------------------------------------------------------

    def add_resolver(self, resolver: Resolver) -> None:
        """Add a source of addresses for :meth:`reach`, asked after the earlier ones (the node adds the
        ``known_peers`` table, then the DHT ``node:`` records and the adverts seen)."""
        self._resolvers.append(resolver)

    async def reach(self, identity_key: str, *, hints: Sequence[str] = ()) -> PeerLink:
        """The link to the peer ``identity_key`` (hex), dialled by identity alone if there is none.

        Tried in order, each address at most once, each dial expecting that key: the live link; ``hints`` (fresh
        addresses the caller holds, such as a provider or stream record's); then each resolver's addresses, asked
        only once the sources before it failed. A link the peer dials to us meanwhile ends the search.

        Raises:
            BadRequest: not a public key, or this node's own.
            NotFound: no source knows an address of the peer.
            DialError, PeerTimeout, RemoteProtocolError, ConnectionLost: every address known failed (the last
                failure).
        """
        key = public_key_hex(identity_key)
        if key == self.identity_key:
            raise BadRequest("that is this node's own identity key")
        link = self.link(key)
        if link is not None:
            return link
        tried: set[str] = set()
        failure: OverlayError | None = None
        sources: list[Resolver] = [partial(_given, tuple(hints)), *self._resolvers]
        for source in sources:
            try:
                addresses = list(await source(key))[:REACH_ADDRESSES]
            except OverlayError as exc:
                logger.debug("resolving %s: %s", key[:16], exc)
                failure = failure or exc
                continue
            for address in addresses:
                try:
                    url = parse_address(address)
                except DialError:
                    continue
                if url in tried:
                    continue
                tried.add(url)
                try:
                    return await self.connect(url, expect_key=key)
                except _DIAL_FAILURES as exc:
                    failure = exc
                    logger.debug("reaching %s at %s failed: %s", key[:16], url, exc)
                link = self.link(key)
                if link is not None:
                    return link
        if failure is None or not tried:
            raise NotFound(
                f"no address known for node {key[:16]}…: find it with `overlay-node ctl discover`, "
                "or link it with `overlay-node ctl connect HOST:PORT`"
            )
        raise failure

    def redial(self, peers: Sequence[tuple[str, str]]) -> None:
        """Dial the ``(identity_key, address)`` peers this node knew (most recent first; at most
        ``REDIAL_PEERS``) in the background, each until it is linked (either way) or after ``REDIAL_ATTEMPTS``
        attempts with backoff (``reconnect_min`` .. ``reconnect_max``); for a restarted node to rejoin its
        neighbours. A peer already linked or kept linked (bootstrap, ``connect(persistent=True)``) is skipped.

        Raises:
            DialError: the manager is not running.
        """
        if self._nursery is None:
            raise DialError("the peer manager is not running")
        seen: set[str] = set()
        for key, address in peers:
            if len(seen) >= REDIAL_PEERS:
                break
            try:
                url = parse_address(address)
            except DialError:
                continue
            if key in seen or key == self.identity_key or url in self._keepers or self.link(key) is not None:
                continue
            seen.add(key)
            self._nursery.start_soon(self._redial_one, key, url)

    async def _redial_one(self, key: str, url: str) -> None:
        cfg = self._config
        delay = cfg.reconnect_min
        for attempt in range(1, REDIAL_ATTEMPTS + 1):
            if self.link(key) is not None:
                return
            try:
                await self.connect(url, expect_key=key)
            except _DIAL_FAILURES as exc:
                logger.info("redial %s at %s failed (%d/%d): %s", key[:16], url, attempt, REDIAL_ATTEMPTS, exc)
            else:
                return
            if attempt < REDIAL_ATTEMPTS:
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, cfg.reconnect_max)


async def _given(addresses: tuple[str, ...], _key: str) -> tuple[str, ...]:
    return addresses
