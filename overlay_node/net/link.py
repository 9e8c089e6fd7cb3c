"""One authenticated peer link over one websocket: the I/O shell around :class:`~overlay_node.protocol.session.Session`.

Resource handling: a :class:`PeerLink` owns its websocket. :meth:`PeerLink.run` performs the handshake under the
handshake deadline, then runs one reader task, one writer task, one keepalive task, one notice worker and the request
clock in its own nursery; request and transfer handlers run in that nursery too (each in a task of its own while it
runs -- a request worker waiting for the next request serves it if one waits -- at most ``max_inflight`` at once),
so they are cancelled when the link ends. Notices are handled one at a time in arrival order (a stream's
packets stay in order); when ``max_inflight`` notices are waiting, the reader stops reading and TCP pushes back on the
peer. The websocket is always closed when ``run`` returns (with a short shielded grace for the close handshake).

Sending: frames are sealed (numbered) in the caller's task and written in that order. ``notify`` queues its frame
for the writer task and returns (it waits only while more than ``OUTBOX_BYTES`` are queued), so a caller sending
notices in a loop takes no turn of the event loop per notice and its caller's cancellation cannot lose a sealed
frame. Other frames are written by their caller when nobody is writing (under a shielded scope bounded by
``request_timeout``; the link's own answers and pongs, which only the link's end cancels, without one: the
keepalive task watches those writes as it does the writer's), else queued behind the others, the caller waiting
until the writer wrote them. A request made with the default timeout is timed out by the link's request clock
(one task for all of them) rather than by a cancel scope of its own.

Error handling:

- A :class:`~overlay_node.errors.RemoteProtocolError` from the session (or from transfer bookkeeping) drops the
  link: a websocket close with code 1008 and the reason, ``metrics.peer_drops{reason}``, a WARNING log naming the
  peer. Only that link ends. The same happens for ``handshake_timeout``, ``idle_timeout`` and ``keepalive_timeout``
  (see :meth:`PeerLink._keepalive`).
- Before the link is established, ``run`` raises (``RemoteProtocolError``, :class:`~overlay_node.errors.PeerTimeout`,
  :class:`~overlay_node.errors.ConnectionLost`, or :class:`LinkSuperseded` when the manager keeps another link to
  the same peer: a dialer learns that before it sends its Hello, a responder before it sends its own); afterwards
  it returns normally and the reason is in :attr:`PeerLink.close_reason`.
- Handlers that raise an :class:`~overlay_node.errors.OverlayError` produce an error answer with its ``code``; any
  other exception gives ``internal`` and is logged with its traceback. Neither ends the link.
- Sending on a closed link raises :class:`~overlay_node.errors.ConnectionLost`; trio-websocket's
  ``ConnectionClosed`` never escapes this module.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from overlay_node.clock import wall_time
from overlay_node.config import SwarmSection
from overlay_node.errors import (
    ConnectionLost,
    LocalProtocolError,
    OverlayError,
    PeerTimeout,
    ProtocolError,
    RemoteProtocolError,
    TransportError,
)
from overlay_node.metrics import Metrics
from overlay_node.net.transfers import TransferReceiver, TransferSender
from overlay_node.protocol.session import Established, Session
from overlay_node.protocol.transfer import (
    IncomingTransfer,
    LocalIdSpace,
    OutgoingTransfer,
    PeerIdSpace,
    TransferState,
)
from overlay_node.wire.frames import (
    MAX_CODE_LEN,
    MAX_MESSAGE_LEN,
    Close,
    ErrorResponse,
    Frame,
    Hello,
    Notice,
    Ping,
    Pong,
    Request,
    Response,
    TransferAbort,
    TransferAck,
    TransferCancel,
    TransferChunk,
    TransferCredit,
    TransferEnd,
    TransferOpen,
)

__all__ = [
    "CLOSE_GRACE",
    "WS_SLACK",
    "Direction",
    "Handlers",
    "LinkHooks",
    "LinkInfo",
    "LinkSuperseded",
    "NoticeHandler",
    "PeerError",
    "PeerLink",
    "RequestHandler",
    "TransferHandler",
    "TransferReceiver",
    "TransferSender",
    "rebuild_error",
]

logger = logging.getLogger(__name__)

#: how long a closing link waits for the websocket close handshake (shielded) before it drops the TCP stream
CLOSE_GRACE: Final = 1.0
#: the same when the link is cancelled (node shutdown): our websocket reader is being cancelled too, so the
#: peer's answer could not be read anyway; send the close frame and go
SHUTDOWN_GRACE: Final = 0.05
#: the websocket layer accepts messages this much larger than ``max_frame + FRAME_OVERHEAD`` so that our own size
#: check answers with ``frame_too_large``; beyond it trio-websocket closes with 1009 (counted the same way)
WS_SLACK: Final = 64 * 1024
#: CBOR bytes around the data of a chunk frame (map, kind, id) -- kept out of a chunk's payload size
_CHUNK_FRAME_OVERHEAD: Final = 64
#: bytes of sealed notices a link holds for its writer before ``notify`` waits until they are out (back-pressure)
OUTBOX_BYTES: Final = 64 * 1024
#: ``notify`` lets other tasks run (a turn of the event loop) at least once in this many notices
NOTICE_TURN: Final = 16
#: frames a link counts before it adds them to the node's metrics (each add takes the metric's lock); the rest are
#: added at every keepalive and when the link ends
_METRICS_BATCH: Final = 64
#: request workers a link keeps waiting for the next request once they served one (a new task costs more than a
#: turn of a waiting one)
_IDLE_WORKERS: Final = 4

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_TRY_LATER: Final = 1013

Direction = Literal["in", "out"]
RequestHandler = Callable[["PeerLink", dict[str, Any]], Awaitable[dict[str, Any]]]
NoticeHandler = Callable[["PeerLink", dict[str, Any]], Awaitable[None]]
TransferHandler = Callable[["PeerLink", dict[str, Any], "TransferReceiver"], Awaitable[None]]
#: called when the link is established; returns the link to keep for the peer (this one, an older one, or -- for an
#: inbound link -- the manager's own dial to that peer, still being set up) or a refusal reason (``too_many_links``)
EstablishedCallback = Callable[["PeerLink"], "PeerLink | str"]
#: called on a dialer once the responder proved its key (given as hex), before our Hello goes out; returns a link
#: the manager already keeps for that peer (this one is then abandoned: ``duplicate_link``) or None to go on
PeerKeyCallback = Callable[["PeerLink", str], "PeerLink | None"]


class PeerError(OverlayError):
    """The peer answered with an error whose code has no class of its own here (``busy``, ``internal``, ...)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class LinkSuperseded(Exception):
    """Internal: the manager keeps ``winner`` for this peer, so the new link closed itself (``duplicate_link``)."""

    def __init__(self, winner: PeerLink) -> None:
        super().__init__("duplicate link")
        self.winner = winner


def rebuild_error(code: str, message: str) -> OverlayError:
    """The local error for a peer's ``(code, message)``: the OverlayError class with that code, else PeerError.

    Transport and protocol errors are never rebuilt as such (they describe *our* link, not the peer's answer).
    """
    found: dict[str, type[OverlayError]] = {}
    queue: list[type[OverlayError]] = list(OverlayError.__subclasses__())
    while queue:
        cls = queue.pop(0)
        queue.extend(cls.__subclasses__())
        if issubclass(cls, TransportError | ProtocolError) or cls.__init__ is not OverlayError.__init__:
            continue
        found.setdefault(cls.code, cls)
    cls_for_code = found.get(code)
    if cls_for_code is None:
        return PeerError(message or code, code=code)
    return cls_for_code(message)


@dataclass
class Handlers:
    """The application's handlers by method name; shared by every link of a manager."""

    requests: dict[str, RequestHandler] = field(default_factory=dict)
    notices: dict[str, NoticeHandler] = field(default_factory=dict)
    transfers: dict[str, TransferHandler] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkHooks:
    """What a link tells its manager (the registry of links); each is optional."""

    #: the link is established (see EstablishedCallback)
    on_established: EstablishedCallback | None = None
    #: a dialing link learned the responder's proven key (see PeerKeyCallback)
    on_peer_key: PeerKeyCallback | None = None
    #: an established link has ended
    on_closed: Callable[[PeerLink], None] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkInfo:
    """A snapshot of one link for status pages and the control API."""

    identity_key: str
    address: str
    direction: Direction
    connected_at: float
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    rtt_ms: float | None


class _Waiter:
    __slots__ = ("event", "frame", "over", "timed_out")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.frame: Response | ErrorResponse | None = None
        #: the link's request clock (:meth:`PeerLink._expire_requests`) gave up on the answer
        self.timed_out = False
        #: the request has returned or raised: the clock can forget it
        self.over = False


class _Worker:
    """A request worker of a link, waiting for its next request (``job``, set by whoever wakes it)."""

    __slots__ = ("job", "task")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.job: tuple[RequestHandler, Request] | None = None


class _DropLink(Exception):
    """Internal: end the link for a local reason (timeouts) that still counts as a peer drop."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PeerLink:
    """One authenticated websocket session with a peer.

    Built and run by :class:`~overlay_node.net.peers.PeerManager`; the application gets it once established.
    """

    def __init__(
        self,
        ws: WebSocketConnection,
        session: Session,
        *,
        config: SwarmSection,
        metrics: Metrics,
        handlers: Handlers,
        direction: Direction,
        address: str,
        local_key: str,
        hooks: LinkHooks | None = None,
    ) -> None:
        self._ws = ws
        self._session = session
        self._config = config
        self._metrics = metrics
        self._handlers = handlers
        self.direction: Direction = direction
        self.address = address
        self._local_key = local_key
        hooks = hooks or LinkHooks()
        self._on_established = hooks.on_established
        self._on_peer_key = hooks.on_peer_key
        self._on_closed = hooks.on_closed
        #: hex identity key of the other side (set once authenticated)
        self.peer_key = ""
        self.connected_at = 0.0
        #: someone is writing to the websocket: a direct sender (:meth:`_send_frame`) or the writer task
        self._sending = False
        #: sealed messages waiting for the writer task (:meth:`_write`), in sequence order, and their bytes
        self._outbox: deque[str | bytes] = deque()
        self._outbox_bytes = 0
        #: messages ever put in the outbox, and how many of them the writer wrote
        self._queued = self._written = 0
        #: callers waiting until the writer wrote their message: (its number in the outbox, woken by)
        self._written_waiters: deque[tuple[int, trio.Event]] = deque()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._writer_parked = False
        #: notices queued since ``notify`` last let other tasks run
        self._unyielded = 0
        #: when the writer task (or an ``owned`` direct sender, see :meth:`_send_frame`) began writing its current
        #: message (infinite while none is writing): the stall watch
        self._write_began = math.inf
        self._nursery: trio.Nursery | None = None
        self._established = False
        self._closing = False
        self._stopping = False
        self._closed = trio.Event()
        self.close_reason: str | None = None
        #: the websocket's close handshake did not finish within its grace (the link was closed all the same)
        self.close_overran = False
        self._request_ids = LocalIdSpace()
        self._transfer_ids = LocalIdSpace()
        self._peer_transfer_ids = PeerIdSpace()
        self._waiters: dict[int, _Waiter] = {}
        #: (deadline, waiter) of requests with the default timeout, in deadline order (see :meth:`_expire_requests`)
        self._deadlines: deque[tuple[float, _Waiter]] = deque()
        self._out: dict[int, TransferSender] = {}
        self._in: dict[int, TransferReceiver] = {}
        self._inflight = 0
        #: request workers waiting for a request (see :meth:`_request_worker`)
        self._idle_workers: list[_Worker] = []
        self._notice_tx, self._notice_rx = trio.open_memory_channel[tuple[NoticeHandler, Notice]](config.max_inflight)
        self._ping_nonces = itertools.count()
        self._ping_sent: tuple[int, float] | None = None
        #: when the reader began waiting for the peer's next message (infinite while it is busy with one, and before
        #: it has begun): the keepalive's "silent since", from which it also counts the idle timeout
        self._waiting_since = math.inf
        self.rtt_ms: float | None = None
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        # what the counters above hold beyond what was added to the metrics (``_METRICS_BATCH``)
        self._counted = (0, 0, 0, 0)
        self._m_frames_in = metrics.frames.labels("in")
        self._m_frames_out = metrics.frames.labels("out")
        self._m_bytes_in = metrics.frame_bytes.labels("in")
        self._m_bytes_out = metrics.frame_bytes.labels("out")

    # -- inspection ---------------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the link is closing or closed (no new requests)."""
        return self._closing or self._closed.is_set()

    @property
    def established(self) -> bool:
        return self._established

    @property
    def initiator_key(self) -> str:
        """The identity key of the side that dialed."""
        return self.peer_key if self.direction == "in" else self._local_key

    @property
    def peer_hello(self) -> Hello | None:
        return self._session.peer_hello

    @property
    def listen_addresses(self) -> tuple[str, ...]:
        """The swarm addresses the peer says it listens on (from its Hello)."""
        hello = self._session.peer_hello
        return () if hello is None else hello.listen

    def info(self) -> LinkInfo:
        return LinkInfo(
            identity_key=self.peer_key,
            address=self.address,
            direction=self.direction,
            connected_at=self.connected_at,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            rtt_ms=self.rtt_ms,
        )

    async def wait_closed(self) -> None:
        """Wait until the link has ended."""
        await self._closed.wait()

    def __repr__(self) -> str:
        return f"PeerLink({self.peer_key[:16] or '?'}, {self.direction}, {self.address})"

    # -- application API ----------------------------------------------------------------------------------------

    async def request(self, method: str, body: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Ask the peer to run ``method`` with ``body`` and return its answer.

        Raises:
            PeerTimeout: no answer within ``timeout`` (default ``swarm.request_timeout``).
            ConnectionLost: the link closed first.
            OverlayError: the peer answered with an error (rebuilt from its code and message, see
                :func:`rebuild_error`).
            LocalProtocolError: ``body`` holds values a frame cannot carry.
        """
        if self.closed:
            raise ConnectionLost(f"link to {self.peer_key[:16]} is closed ({self.close_reason})")
        rid = self._request_ids.allocate()
        frame = Request(id=rid, method=method, body=body)
        waiter = _Waiter()
        limit = self._config.request_timeout
        if (timeout is None or timeout == limit) and not (self._sending or self._outbox):
            # the common case: the link's request clock times the answer out (no cancel scope of our own), and the
            # frame is written at once (the direct write is bounded by the same timeout, see _send_frame)
            deadlines = self._deadlines
            while deadlines and deadlines[0][1].over:
                deadlines.popleft()
            if len(deadlines) > 2 * len(self._waiters) + 16:
                # one slow request at the head holds many finished ones behind it: keep the pending ones (in order)
                pending = [entry for entry in deadlines if not entry[1].over]
                deadlines.clear()
                deadlines.extend(pending)
            deadlines.append((trio.current_time() + limit, waiter))
            self._waiters[rid] = waiter
            try:
                await self._send_frame(frame)
                await waiter.event.wait()
            finally:
                waiter.over = True
                self._waiters.pop(rid, None)
            timed_out = waiter.timed_out
        else:
            limit = limit if timeout is None else timeout
            self._waiters[rid] = waiter
            try:
                with trio.move_on_after(limit) as scope:
                    await self._send_frame(frame)
                    await waiter.event.wait()
            finally:
                self._waiters.pop(rid, None)
            timed_out = scope.cancelled_caught
        answer = waiter.frame
        if answer is None:
            if timed_out:
                raise PeerTimeout(f"{method} to {self.peer_key[:16]} timed out after {limit:g}s")
            raise ConnectionLost(f"link to {self.peer_key[:16]} closed during {method} ({self.close_reason})")
        if isinstance(answer, ErrorResponse):
            raise rebuild_error(answer.code, answer.message)
        return answer.body

    async def notify(self, method: str, body: dict[str, Any]) -> None:
        """Send a one-way notice: sealed at once and written by the link's writer task, in order with every other
        frame. Returns once it is queued; while more than :data:`OUTBOX_BYTES` wait, once it is out.

        A caller cancelled before the call gets Cancelled and nothing is sent. A caller sending notices in a loop
        (a stream's sender) lets the other tasks run at least every :data:`NOTICE_TURN` notices, and whenever it
        waits for the writer; the notices in between cost no turn of the event loop each.

        Raises:
            ConnectionLost: the link is closed (or closed before a notice we waited for was out).
            LocalProtocolError: ``body`` holds values a frame cannot carry, or is too large for the peer.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        number = self._seal_and_queue(Notice(method=method, body=body))
        if self._outbox_bytes > OUTBOX_BYTES:
            self._unyielded = 0
            await self._until_written(number)
        else:
            self._unyielded += 1
            if self._unyielded >= NOTICE_TURN:
                self._unyielded = 0
                await trio.lowlevel.cancel_shielded_checkpoint()

    def open_transfer(self, method: str, header: dict[str, Any]) -> AbstractAsyncContextManager[TransferSender]:
        """Open a chunked transfer to the peer's ``on_transfer`` handler for ``method``.

        ``async with link.open_transfer("m", {...}) as tx: await tx.send(chunk)``. Leaving the block normally sends
        ``end`` and waits (up to ``swarm.request_timeout``) until the receiver's handler finished; leaving it with
        an exception sends ``abort``.

        Raises (on entry, from ``send`` or on exit):
            ConnectionLost, PeerTimeout, or the receiver's error rebuilt from its code (e.g. ``unknown_method``).
        """
        return self._transfer(method, header)

    async def aclose(self, reason: str = "normal") -> None:
        """Close the link on purpose: a ``close`` frame with ``reason``, then the websocket close (code 1000).

        Returns once the link has ended (at once if it already had).
        """
        if not self.closed and self._established:
            try:
                with trio.move_on_after(CLOSE_GRACE):
                    await self._send_frame(Close(reason=_short(reason, MAX_CODE_LEN)))
            except ConnectionLost:
                pass
        await self._close_ws(CLOSE_NORMAL, reason)
        if self._nursery is not None:
            await self._closed.wait()

    # -- running ------------------------------------------------------------------------------------------------

    async def run(
        self,
        *,
        handshake_deadline: float,
        task_status: trio.TaskStatus[PeerLink] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Handshake, then serve the link until it ends.

        Args:
            handshake_deadline: trio time by which the handshake must be complete.

        Raises (only before ``task_status.started``):
            RemoteProtocolError: the peer failed the handshake (the link was dropped with that reason).
            PeerTimeout: the handshake did not complete in time.
            ConnectionLost: the peer closed during the handshake (the message names its close reason).
            LinkSuperseded: the manager keeps another link to this peer (an older one, or for an inbound link its
                own dial to the peer, which wins the tie-break).
        """
        try:
            try:
                with trio.fail_at(handshake_deadline):
                    await self._handshake()
            except trio.TooSlowError:
                await self._drop("handshake_timeout", "handshake not complete in time")
                raise PeerTimeout(f"handshake with {self.address} timed out") from None
            except RemoteProtocolError as exc:
                await self._drop(exc.reason, str(exc))
                raise
            except LinkSuperseded:
                await self._close_ws(CLOSE_NORMAL, "duplicate_link")
                raise
            except _DropLink as exc:
                await self._close_ws(CLOSE_TRY_LATER, exc.reason)
                raise ConnectionLost(f"link to {self.address} refused locally: {exc.reason}") from None
            task_status.started(self)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write)
                nursery.start_soon(self._keepalive)
                nursery.start_soon(self._serve_notices)
                nursery.start_soon(self._expire_requests)
                await self._serve()
                nursery.cancel_scope.cancel()
        finally:
            # cancelled from outside (node shutdown)? then don't wait for the peer's close answer (see SHUTDOWN_GRACE)
            self._stopping = trio.current_effective_deadline() == -math.inf
            with trio.CancelScope(shield=True):
                await self._finish()

    async def _handshake(self) -> None:
        session = self._session
        session.start()
        await self._flush()
        while True:
            try:
                message = await self._ws.get_message()
            except ConnectionClosed as exc:
                reason = (exc.reason.reason if exc.reason is not None else None) or "closed"
                self.close_reason = reason
                self.peer_key = session.peer_key or ""
                raise ConnectionLost(f"{self.address} closed the link during the handshake: {reason}") from None
            self._count_in(message)
            knew_key = session.peer_key is not None
            event = session.receive_message(message)
            if session.initiator and not knew_key and session.peer_key is not None and self._on_peer_key is not None:
                # the responder's key is proven and our Hello is queued, not sent: the last moment a dialer can
                # step back without the responder ever registering this link
                kept = self._on_peer_key(self, session.peer_key)
                if kept is not None:
                    self.peer_key = session.peer_key
                    raise LinkSuperseded(kept)
            if isinstance(event, Established):
                self.peer_key = event.peer_key
                self.connected_at = wall_time()
                self._established = True
                if self._on_established is not None:
                    verdict = self._on_established(self)
                    if isinstance(verdict, str):
                        self._established = False
                        raise _DropLink(verdict, f"link refused: {verdict}")
                    if verdict is not self:
                        self._established = False
                        raise LinkSuperseded(verdict)
                # flushed after registration: the initiator is established only once we are (module rule)
                await self._flush()
                return
            await self._flush()

    async def _serve(self) -> None:
        """The reader: one message at a time, until the websocket closes or the peer breaks the protocol.

        The idle timeout is the keepalive task's (:meth:`_keepalive`): the reader only notes when it began waiting,
        which costs far less per frame than moving a cancel scope's deadline twice."""
        session = self._session
        current_time = trio.current_time
        try:
            while True:
                # the idle clock runs only while we wait for the peer, not while a slow handler holds us up
                self._waiting_since = current_time()
                try:
                    message = await self._ws.get_message()
                except ConnectionClosed as exc:
                    await self._on_ws_closed(exc)
                    return
                self._waiting_since = math.inf
                self._count_in(message)
                frame = session.receive_message(message)
                assert not isinstance(frame, Established)
                assert frame is not None
                if await self._dispatch(frame):
                    return
        except ConnectionLost:
            return  # our own send failed: the websocket is gone
        except RemoteProtocolError as exc:
            await self._drop(exc.reason, str(exc))

    def _silent_since(self) -> float:
        """When the reader began waiting for the peer's next message; infinite while it is busy with one (a slow
        handler holding it up is our own back-pressure, not a silent peer) or before it has begun."""
        return self._waiting_since

    async def _keepalive(self) -> None:
        """Liveness: after ``keepalive_interval`` in which nothing arrived, a ping; if nothing at all arrives in the
        ``keepalive_timeout`` after it was written, the link is dropped (``keepalive_timeout``).

        Any frame is proof of life, so a busy link never pings and a pong is only needed on a quiet one. The
        timeout counts from when the ping was handed to the socket: a ping that waits behind our own sends (the
        peer's window is full) is a slow peer's, not a dead one's, and a send held up past ``request_timeout``
        closes the link by itself (``send_stalled``; a write of the writer task is checked here, at the next wake
        after ``request_timeout``). A reader that has waited ``idle_timeout`` for the peer's next frame drops the
        link too (``idle_timeout``).
        """
        cfg = self._config
        #: while a ping is unanswered: since when the peer has been silent, and when the ping was written
        unanswered: tuple[float, float] | None = None
        while not self.closed:
            since = self._silent_since()
            if unanswered is not None and unanswered[0] != since:
                unanswered = None  # heard from the peer (or the reader is busy with a message from it)
            now = trio.current_time()
            if now >= since + cfg.idle_timeout:
                await self._drop("idle_timeout", f"nothing received for {cfg.idle_timeout:g}s")
                return
            if now >= self._write_began + cfg.request_timeout:
                # the writer task has been writing one message for that long; closing the websocket ends the write
                await self._close_ws(CLOSE_GOING_AWAY, "send_stalled")
                return
            if unanswered is not None:
                if now >= unanswered[1] + cfg.keepalive_timeout:
                    # closing the websocket ends the reader too (its next read sees the close)
                    message = f"nothing received for {cfg.keepalive_timeout:g}s after a keepalive ping"
                    await self._drop("keepalive_timeout", message)
                    return
                wake = min(unanswered[1] + cfg.keepalive_timeout, now + cfg.keepalive_interval)
            elif since == math.inf:
                wake = now + cfg.keepalive_interval
            elif now >= since + cfg.keepalive_interval:
                nonce = next(self._ping_nonces)
                try:
                    await self._send_frame(Ping(nonce=nonce))
                except ConnectionLost:
                    return
                self._ping_sent = (nonce, trio.current_time())
                unanswered = (since, self._ping_sent[1])
                continue
            else:
                wake = since + cfg.keepalive_interval
            await trio.sleep_until(min(wake, since + cfg.idle_timeout))
            self._add_metrics()

    async def _expire_requests(self) -> None:
        """The request clock: times out requests made with the default timeout (:meth:`request`), which then raise
        PeerTimeout. One sleep for them all instead of a cancel scope per request.

        Their deadlines are ``request_timeout`` after they were made, so they come in deadline order, and one made
        while this task sleeps is never due before it wakes (it sleeps until the first deadline or, with none
        pending, for ``request_timeout``)."""
        deadlines = self._deadlines
        limit = self._config.request_timeout
        while True:
            now = trio.current_time()
            while deadlines and deadlines[0][0] <= now:
                waiter = deadlines.popleft()[1]
                if not waiter.over and not waiter.event.is_set():
                    waiter.timed_out = True
                    waiter.event.set()
            await trio.sleep_until(deadlines[0][0] if deadlines else now + limit)

    # -- receiving ----------------------------------------------------------------------------------------------

    def _count_in(self, message: str | bytes) -> None:
        self.frames_in += 1
        self.bytes_in += len(message)
        if self.frames_in - self._counted[0] >= _METRICS_BATCH:
            self._add_metrics()

    def _add_metrics(self) -> None:
        """Add the frames and bytes counted since the last call to the node's metrics."""
        frames_in, bytes_in, frames_out, bytes_out = self._counted
        self._counted = (self.frames_in, self.bytes_in, self.frames_out, self.bytes_out)
        if self.frames_in > frames_in:
            self._m_frames_in.inc(self.frames_in - frames_in)
            self._m_bytes_in.inc(self.bytes_in - bytes_in)
        if self.frames_out > frames_out:
            self._m_frames_out.inc(self.frames_out - frames_out)
            self._m_bytes_out.inc(self.bytes_out - bytes_out)

    async def _dispatch(self, frame: Frame) -> bool:
        """Act on one frame; returns True when the peer closed the link. Raises RemoteProtocolError."""
        if isinstance(frame, TransferChunk):  # the hot path first
            receiver = self._in.get(frame.id)
            if receiver is None:
                self._peer_transfer_ids.check_known(frame.id)
                return False  # stale: the transfer finished on our side
            receiver._on_chunk(frame.data)
        elif isinstance(frame, Request):
            self._start_request(frame)
        elif isinstance(frame, Response | ErrorResponse):
            waiter = self._waiters.get(frame.id)
            if waiter is None:
                if not self._request_ids.issued(frame.id):
                    raise RemoteProtocolError(f"answer to unknown request {frame.id}", reason="unknown_request")
                return False  # late answer after a timeout
            waiter.frame = frame
            waiter.event.set()
        elif isinstance(frame, Notice):
            await self._queue_notice(frame)
        elif isinstance(frame, TransferCredit | TransferAck | TransferCancel):
            self._to_sender(frame)
        elif isinstance(frame, TransferOpen):
            await self._open_incoming(frame)
        elif isinstance(frame, TransferEnd | TransferAbort):
            self._to_receiver(frame)
        else:
            return await self._link_control(frame)
        return False

    def _to_sender(self, frame: TransferCredit | TransferAck | TransferCancel) -> None:
        """A receiver's answer about one of our transfers."""
        sender = self._outgoing(frame.id)
        if sender is None:
            return
        if isinstance(frame, TransferCredit):
            sender._on_credit(frame.credit)
        elif isinstance(frame, TransferAck):
            sender._on_ack()
        else:
            sender._on_cancel(rebuild_error(frame.code, frame.message))

    def _to_receiver(self, frame: TransferEnd | TransferAbort) -> None:
        """The end of one of the peer's transfers to us."""
        receiver = self._incoming(frame.id)
        if receiver is None:
            return
        if isinstance(frame, TransferEnd):
            receiver._on_end()
        else:
            receiver._on_abort(rebuild_error(frame.code, frame.message))

    async def _link_control(self, frame: Frame) -> bool:
        """Ping, Pong and Close; returns True when the link is over."""
        if isinstance(frame, Ping):
            try:
                await self._send_frame(Pong(nonce=frame.nonce), owned=True)
            except ConnectionLost:
                return True
        elif isinstance(frame, Pong):
            sent = self._ping_sent
            if sent is not None and sent[0] == frame.nonce:
                self.rtt_ms = round((trio.current_time() - sent[1]) * 1000, 3)
                self._ping_sent = None
        elif isinstance(frame, Close):
            self.close_reason = frame.reason
            logger.info("peer %s closed the link: %s", self.peer_key[:16], frame.reason)
            await self._close_ws(CLOSE_NORMAL, frame.reason)
            return True
        else:  # pragma: no cover - Hello is handled by the session
            raise RemoteProtocolError(f"unexpected {type(frame).__name__}", reason="unexpected_frame")
        return False

    def _incoming(self, transfer_id: int) -> TransferReceiver | None:
        receiver = self._in.get(transfer_id)
        if receiver is None:
            self._peer_transfer_ids.check_known(transfer_id)
        return receiver

    def _outgoing(self, transfer_id: int) -> TransferSender | None:
        sender = self._out.get(transfer_id)
        if sender is None and not self._transfer_ids.issued(transfer_id):
            raise RemoteProtocolError(f"frame for unknown transfer {transfer_id}", reason="unknown_transfer")
        return sender

    def _admit(self) -> bool:
        if self._inflight >= self._config.max_inflight:
            return False
        self._inflight += 1
        return True

    def _start_request(self, frame: Request) -> None:
        requests = self._handlers.requests
        # a plain dict lookup first (the manager's registry overrides get() for methods not registered yet)
        handler = dict.get(requests, frame.method) or requests.get(frame.method)
        assert self._nursery is not None
        if handler is None:
            self._metrics.peer_request("unknown", "unknown_method").inc()
            reply = ErrorResponse(id=frame.id, code="unknown_method", message=f"no handler for {frame.method!r}")
            self._nursery.start_soon(self._reply, reply)
        elif not self._admit():
            self._metrics.peer_request(frame.method, "busy").inc()
            busy = ErrorResponse(id=frame.id, code="busy", message=f"more than {self._config.max_inflight} in flight")
            self._nursery.start_soon(self._reply, busy)
        elif self._idle_workers:
            # an idle request worker takes it: a turn of that task, without the cost of a new one
            worker = self._idle_workers.pop()
            worker.job = (handler, frame)
            trio.lowlevel.reschedule(worker.task)
        else:
            self._nursery.start_soon(self._request_worker, handler, frame)

    async def _request_worker(self, handler: RequestHandler, frame: Request) -> None:
        """Serve requests, one at a time, each in this task; between them wait (idle) for the next one from the
        reader (:meth:`_start_request`). At most ``_IDLE_WORKERS`` wait; the others end."""
        idle = self._idle_workers
        me = _Worker(trio.lowlevel.current_task())

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            idle.remove(me)  # the link is ending
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            await self._serve_request(handler, frame)
            if len(idle) >= _IDLE_WORKERS:
                return
            idle.append(me)
            await trio.lowlevel.wait_task_rescheduled(abort)
            assert me.job is not None
            (handler, frame), me.job = me.job, None

    async def _reply(self, frame: Frame) -> None:
        """Send an answer; only from a task of the link's nursery, outside any handler (see ``owned``)."""
        try:
            await self._send_frame(frame, owned=True)
        except ConnectionLost:
            pass
        except LocalProtocolError as exc:  # e.g. an answer larger than the peer's max_frame
            logger.warning("cannot answer %s: %s", self.peer_key[:16], exc)
            if isinstance(frame, Response):
                await self._reply(ErrorResponse(id=frame.id, code=exc.reason, message=_short(str(exc), 200)))

    async def _serve_request(self, handler: RequestHandler, frame: Request) -> None:
        reply: Response | ErrorResponse
        try:
            body = await handler(self, frame.body)
            if not isinstance(body, dict):
                raise TypeError(f"handler for {frame.method!r} returned {type(body).__name__}, not a dict")
            reply = Response(id=frame.id, body=body)
            outcome = "ok"
        except OverlayError as exc:
            reply = ErrorResponse(id=frame.id, code=exc.code, message=_short(str(exc), MAX_MESSAGE_LEN))
            outcome = exc.code
        except Exception:
            # one failing handler must not take the link (or the node) down; the traceback goes to the log
            logger.exception("handler for %s from %s failed", frame.method, self.peer_key[:16])
            reply = ErrorResponse(id=frame.id, code="internal", message=f"{frame.method} failed")
            outcome = "internal"
        finally:
            self._inflight -= 1
        self._metrics.peer_request(frame.method, outcome).inc()
        await self._reply(reply)

    async def _queue_notice(self, frame: Notice) -> None:
        notices = self._handlers.notices
        # a plain dict lookup first (the manager's registry overrides get() for methods not registered yet)
        handler = dict.get(notices, frame.method) or notices.get(frame.method)
        if handler is None:
            logger.debug("no handler for notice %s from %s", frame.method, self.peer_key[:16])
            return
        # waits when max_inflight notices are queued: the reader stops reading, TCP pushes back on the peer
        try:
            self._notice_tx.send_nowait((handler, frame))
        except trio.WouldBlock:
            await self._notice_tx.send((handler, frame))

    async def _serve_notices(self) -> None:
        """Run notice handlers one at a time, in arrival order (streams rely on the order). Notices already queued
        are taken without a turn of the event loop (the queue holds at most ``max_inflight``)."""
        receive = self._notice_rx
        while True:
            try:
                handler, frame = receive.receive_nowait()
            except trio.WouldBlock:
                try:
                    handler, frame = await receive.receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            try:
                await handler(self, frame.body)
            except OverlayError as exc:
                logger.info("notice %s from %s failed: %s", frame.method, self.peer_key[:16], exc)
            except Exception:
                # a failing handler must not take the link down; the traceback goes to the log
                logger.exception("notice handler for %s from %s failed", frame.method, self.peer_key[:16])

    async def _open_incoming(self, frame: TransferOpen) -> None:
        self._peer_transfer_ids.open(frame.id)
        assert self._nursery is not None
        handler = self._handlers.transfers.get(frame.method)
        if handler is None:
            refusal = TransferCancel(id=frame.id, code="unknown_method", message=f"no handler for {frame.method!r}")
            self._nursery.start_soon(self._reply, refusal)
            return
        if not self._admit():
            busy = f"more than {self._config.max_inflight} in flight"
            self._nursery.start_soon(self._reply, TransferCancel(id=frame.id, code="busy", message=busy))
            return
        state = IncomingTransfer(frame.id, self._config.transfer_window)
        receiver = TransferReceiver(self, state, frame.method, frame.header)
        self._in[frame.id] = receiver
        self._nursery.start_soon(self._serve_transfer, handler, receiver)
        await self._send_frame(TransferCredit(id=frame.id, credit=state.initial_credit()))

    async def _serve_transfer(self, handler: TransferHandler, receiver: TransferReceiver) -> None:
        state = receiver._state
        answer: Frame | None = None
        try:
            await handler(self, receiver.header, receiver)
            if receiver.complete:
                answer = TransferAck(id=receiver.id)
                outcome = "ok"
            else:
                answer = TransferCancel(id=receiver.id, code="cancelled", message="receiver stopped before the end")
                outcome = "cancelled"
        except OverlayError as exc:
            answer = TransferCancel(id=receiver.id, code=exc.code, message=_short(str(exc), MAX_MESSAGE_LEN))
            outcome = exc.code
        except Exception:
            logger.exception("transfer handler for %s from %s failed", receiver.method, self.peer_key[:16])
            answer = TransferCancel(id=receiver.id, code="internal", message=f"{receiver.method} failed")
            outcome = "internal"
        finally:
            self._inflight -= 1
            self._in.pop(receiver.id, None)
        self._metrics.peer_request(receiver.method, outcome).inc()
        if state.state is TransferState.ABORTED:
            return  # the sender gave up; nothing to answer
        state.finish(TransferState.DONE if isinstance(answer, TransferAck) else TransferState.CANCELLED)
        await self._reply(answer)

    async def _on_ws_closed(self, exc: ConnectionClosed) -> None:
        reason = exc.reason
        code = reason.code if reason is not None else None
        text = reason.reason if reason is not None else None
        if code == CLOSE_TOO_BIG and self._closing is False and self.close_reason is None:
            # trio-websocket refused a message beyond max_frame + slack and already sent 1009
            self._count_drop("frame_too_large", text or "message too big")
        if self.close_reason is None:
            self.close_reason = text or (f"closed ({code})" if code is not None else "closed")
        logger.info("link to %s closed: %s", self.peer_key[:16], self.close_reason)

    # -- sending ------------------------------------------------------------------------------------------------

    async def _flush(self) -> None:
        """Send what the session queued during the handshake (its messages and Hellos)."""
        self._sending = True
        try:
            for message in self._session.data_to_send():
                await self._ws_send(message)
        finally:
            self._release_sending()

    def _seal_and_queue(self, frame: Frame) -> int:
        """Seal ``frame`` and queue it for the writer; returns its number in the outbox (see :attr:`_written`).

        Raises ConnectionLost (closed link) or LocalProtocolError (a frame the peer would refuse); then nothing was
        sealed. Sealing and queueing happen without a turn of the event loop, so frames go out in sealing order.
        """
        session = self._session
        if self.closed or not session.is_open:
            raise ConnectionLost(f"link to {self.peer_key[:16]} is closed ({self.close_reason})")
        queued = session.data_to_send()  # anything the session queued (its Hello) goes first
        sealed = session.send(frame)
        outbox = self._outbox
        for message in queued:
            outbox.append(message)
            self._outbox_bytes += len(message)
        outbox.append(sealed)
        self._outbox_bytes += len(sealed)
        self._queued += len(queued) + 1
        if self._writer_parked and not self._sending:
            self._writer_parked = False
            self._writer_lot.unpark()
        return self._queued

    async def _until_written(self, number: int) -> None:
        """Wait until the writer wrote message ``number`` of the outbox. Raises ConnectionLost if it never will.

        A write of the writer's that takes ``request_timeout`` is a stall: the waiter closes the link
        (``send_stalled``), which ends the write (the keepalive task watches writes nobody waits for)."""
        if self._written >= number:
            return
        event = trio.Event()
        self._written_waiters.append((number, event))
        limit = self._config.request_timeout
        while not event.is_set():
            # the writer may not have begun yet (a direct sender is writing): look again after ``limit``
            with trio.move_on_at(min(self._write_began, trio.current_time()) + limit):
                await event.wait()
            if not event.is_set() and trio.current_time() >= self._write_began + limit:
                with trio.CancelScope(shield=True):
                    await self._close_ws(CLOSE_GOING_AWAY, "send_stalled")
                break
        if self._written < number:
            stalled = ": a send stalled" if self.close_reason == "send_stalled" else ""
            raise ConnectionLost(f"link to {self.peer_key[:16]} closed{stalled} ({self.close_reason})")

    def _wake_written_waiters(self) -> None:
        waiters = self._written_waiters
        while waiters:
            waiters.popleft()[1].set()

    def _release_sending(self) -> None:
        self._sending = False
        if self._outbox and self._writer_parked:
            self._writer_parked = False
            self._writer_lot.unpark()

    async def _send_frame(self, frame: Frame, *, owned: bool = False) -> None:
        """Send one frame and return once it is written.

        On a link nobody is writing to, the caller writes it itself (no turn of another task). Otherwise it is
        queued behind the frames already waiting and the caller waits until the writer task wrote it; cancelling
        that wait does not take the frame back (it is sealed: its sequence number is spent).

        ``owned``: the caller is a task of the link's own nursery outside any handler (an answer, a pong), which is
        cancelled only when the link ends; it writes without a shielded scope, and a write of its that takes
        ``request_timeout`` is a stall the keepalive task catches, as it does the writer task's.
        """
        if self._sending or self._outbox:
            await self._until_written(self._seal_and_queue(frame))
            return
        session = self._session
        if self.closed or not session.is_open:
            raise ConnectionLost(f"link to {self.peer_key[:16]} is closed ({self.close_reason})")
        queued = session.data_to_send()  # anything the session queued (its Hello) goes first
        sealed = session.send(frame)
        self._sending = True
        if owned:
            self._write_began = trio.current_time()
            try:
                for message in queued:
                    await self._ws_send(message)
                await self._ws_send(sealed)
            finally:
                self._write_began = math.inf
                self._release_sending()
            return
        try:
            # sealed messages are numbered: one lost between sealing and the socket would leave a gap that the peer
            # refuses by dropping the link. So the caller's cancellation (a timeout, an interrupted download) waits
            # until they are out, bounded by the request timeout (the shielded scope's own deadline still applies);
            # a link that cannot take them in that time is closed.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + self._config.request_timeout) as sending:
                for message in queued:
                    await self._ws_send(message)
                await self._ws_send(sealed)
            if sending.cancelled_caught:
                with trio.CancelScope(shield=True):
                    await self._close_ws(CLOSE_GOING_AWAY, "send_stalled")
                raise ConnectionLost(f"link to {self.peer_key[:16]} closed: a send stalled")
        finally:
            self._release_sending()

    async def _write(self) -> None:
        """The link's writer task: writes the outbox in order whenever no direct sender is writing.

        A message stays at the head of the outbox until it is written. A write that takes longer than
        ``request_timeout`` is a stall: a caller waiting for it (:meth:`_until_written`), else the keepalive task,
        closes the link (``send_stalled``), which ends the write. If the websocket fails, the link is closing:
        waiting callers get ConnectionLost."""
        outbox = self._outbox
        waiters = self._written_waiters
        current_time = trio.current_time
        try:
            while True:
                while not outbox or self._sending:
                    self._writer_parked = True
                    await self._writer_lot.park()
                self._sending = True
                try:
                    while outbox:
                        message = outbox[0]
                        self._write_began = current_time()
                        await self._ws_send(message)
                        outbox.popleft()
                        self._outbox_bytes -= len(message)
                        self._written += 1
                        while waiters and waiters[0][0] <= self._written:
                            waiters.popleft()[1].set()
                finally:
                    self._write_began = math.inf
                    self._sending = False
        except ConnectionLost:
            self._closing = True
            self._wake_written_waiters()

    async def _ws_send(self, message: str | bytes) -> None:
        try:
            await self._ws.send_message(message)
        except ConnectionClosed as exc:
            reason = (exc.reason.reason if exc.reason is not None else None) or "closed"
            if self.close_reason is None:
                self.close_reason = reason
            raise ConnectionLost(f"link to {self.peer_key[:16] or self.address} is closed: {reason}") from None
        self.frames_out += 1
        self.bytes_out += len(message)
        if self.frames_out - self._counted[2] >= _METRICS_BATCH:
            self._add_metrics()

    # -- closing ------------------------------------------------------------------------------------------------

    def _count_drop(self, reason: str, message: str) -> None:
        self._metrics.peer_drops.labels(reason).inc()
        if self._established:
            who = self.peer_key
        elif self._session.peer_key:
            who = f"{self._session.peer_key} (unproven)"
        else:
            who = "(unauthenticated)"
        logger.warning("dropping peer %s at %s (%s): %s", who, self.address, reason, message)

    async def _drop(self, reason: str, message: str) -> None:
        """The peer broke the protocol: count, log, close with 1008 and the reason."""
        if self.close_reason is None:
            self.close_reason = reason
        self._count_drop(reason, message)
        await self._close_ws(CLOSE_POLICY, reason)

    async def _close_ws(self, code: int, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self._closing = True
        grace = SHUTDOWN_GRACE if self._stopping else CLOSE_GRACE
        with trio.CancelScope(shield=True), trio.move_on_after(grace) as waited:
            await self._ws.aclose(code, _short(reason, 120))
        if waited.cancelled_caught:
            self.close_overran = True

    async def _finish(self) -> None:
        """Release everything: fail waiters and transfers, close the websocket, tell the manager."""
        if self._closed.is_set():
            return
        self._closing = True
        if self.close_reason is None:
            self.close_reason = "shutdown" if self._stopping else "closed"
        lost = ConnectionLost(f"link to {self.peer_key[:16] or self.address} closed ({self.close_reason})")
        for waiter in self._waiters.values():
            waiter.event.set()
        self._wake_written_waiters()
        for sender in self._out.values():
            sender._on_lost(lost)
        for receiver in self._in.values():
            receiver._on_lost()
        await self._close_ws(CLOSE_GOING_AWAY if self._stopping else CLOSE_NORMAL, self.close_reason)
        self._add_metrics()
        self._closed.set()
        if self._on_closed is not None and self._established:
            self._on_closed(self)

    # -- transfers (sender side) --------------------------------------------------------------------------------

    @asynccontextmanager
    async def _transfer(self, method: str, header: dict[str, Any]) -> AsyncIterator[TransferSender]:
        tid = self._transfer_ids.allocate()
        state = OutgoingTransfer(tid)
        peer_limit = self._session.peer_max_frame - _CHUNK_FRAME_OVERHEAD
        sender = TransferSender(self, state, max(1, min(self._config.chunk_size, peer_limit)))
        self._out[tid] = sender
        try:
            await self._send_frame(TransferOpen(id=tid, method=method, header=header))
            try:
                yield sender
            except BaseException:
                if state.state is TransferState.OPEN:
                    state.abort()
                    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                        try:
                            await self._send_frame(TransferAbort(id=tid, code="aborted", message="sender gave up"))
                        except ConnectionLost:
                            pass
                raise
            sender._raise_if_failed()
            state.end()
            await self._send_frame(TransferEnd(id=tid))
            with trio.move_on_after(self._config.request_timeout) as scope:
                await sender._finished.wait()
            if scope.cancelled_caught:
                raise PeerTimeout(f"transfer {method} to {self.peer_key[:16]}: no answer after its end")
            sender._raise_if_failed()
        finally:
            self._out.pop(tid, None)
