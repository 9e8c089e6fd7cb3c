"""Paid live streams: the service (producer and consumer side, docs/design.md, Paid streams) over peer links.

Producer (this module): ``create`` a stream (stored, advertised as a DHT record under
``dht_key("stream", id)`` holding the producer's swarm endpoints and terms, and as an ``ls_stream`` advert of that
stream -- service type ``streaming``, its tags as capabilities, its price -- that discovery finds by service type
or tag), ``push`` packets into its buffer, ``close`` it (both revoked).
Peer methods ``stream.subscribe`` and ``stream.pay`` (requests), notice ``stream.unsubscribe``.
Consumer: :class:`~overlay_node.services.streams_consumer.StreamConsumer` (``subscribe``).

Theory of operation (producer):

1. Each stream keeps its last ``streams.buffer_packets`` packets in a ring buffer. Each subscriber has one
   sender task and a cursor into that buffer; a push only appends and wakes the senders, so pushing never
   waits for a subscriber and one slow subscriber never holds back the others.
2. **Drop/disconnect policy**: the per-subscriber queue is the part of the buffer between its cursor and the
   head, bounded by ``buffer_packets``. A subscriber whose cursor falls out of the buffer is closed with
   reason ``lagging`` (it may subscribe again; the answer says where it restarts). Packets are never
   skipped silently inside a subscription.
3. The sender runs the subscription's :class:`~overlay_node.protocol.streams.ProducerCredit`: it sends
   batches of up to ``batch_packets`` / ``batch_bytes`` per notice (one peer frame), pauses with
   ``stream.paused`` when the credit is gone and closes after ``grace_period``.
4. ``stream.pay`` (one payment, or several at once) checks each is for this stream and answers one of the
   subscription's open window quotes (``ahead`` of them, granted at subscribe from the consumer's ask and
   ``max_pay_ahead``), and that the credit plus the payments being checked stays within ``ahead - 1``
   windows; then :meth:`Payments.accept_payments` checks and commits it durably (settlement queued; payments
   checked together share one group commit and one receipt signature, ``protocol/payments.py`` invariant 6)
   before its receipt goes back with a fresh window quote. A message that asks to be held and pays for a window
   none of whose packets exists yet waits first (``protocol/streams.py``, invariant 8): the sender takes it when
   a packet needs it (instead of pausing), and it is refused as paid too early when the hold runs out, the
   subscriber detaches or the stream ends.
5. Accounting: revenue per subscriber is read from the durable ``payments`` table; packet counts and
   positions are flushed every ``flush_interval`` and at shutdown. A resumed subscriber's ``from_seq`` is
   never charged again (and repairs counts a crash lost).
6. Sequence numbers are never used twice, even across a crash: a packet goes out only below the stream's
   durable reservation (``reserved``), which a background write moves ``_SEQ_BLOCK`` ahead of the head as
   pushes approach it. After a crash the stream goes on at the reservation (the numbers in between were never
   sent; consumers count them as skipped); a clean shutdown writes the exact head. A new stream reserves its first
   block when it is created, so its first packet does not wait for that write.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from overlay_node.clock import wall_time
from overlay_node.config import StreamsSection, WalletSection
from overlay_node.crypto.keys import Identity
from overlay_node.errors import (
    BadRequest,
    Conflict,
    ConnectionLost,
    InvalidPayment,
    NotFound,
    OverlayError,
    PaidTooEarly,
    PaymentReplayed,
)
from overlay_node.metrics import Metrics, instrument
from overlay_node.net.peers import PeerLink, PeerManager
from overlay_node.protocol.adverts import MAX_CAPABILITIES, MAX_TEXT
from overlay_node.protocol.payments import PaymentMessage, Quote
from overlay_node.protocol.streams import (
    HOLD_SECONDS,
    MAX_AHEAD,
    PAID_TOO_EARLY,
    Close,
    PacketBatch,
    Pause,
    ProducerCredit,
    Release,
    SendPackets,
    StreamTerms,
    ahead_windows,
    check_payload,
    check_stream_id,
    check_window,
    stream_resource,
)
from overlay_node.services.adverts import AdvertService
from overlay_node.services.dht import DhtService, dht_key
from overlay_node.services.payments import Payments
from overlay_node.store.db import Store
from overlay_node.store.streams import StreamRow, SubRow

__all__ = ["StreamProducer", "payload_bytes", "stream_metrics"]

logger = logging.getLogger(__name__)

#: what became of one window payment: its receipt (stored bytes) and the next quote (a wire map), or the error that
#: refused it
_Outcome = dict[str, Any] | OverlayError
#: the outcomes of a message's payments, in order (a module-level name: ``list`` is a method of the producer)
_Outcomes = list[_Outcome]

#: sequence numbers reserved durably ahead of a stream's head (invariant 6)
_SEQ_BLOCK = 10_000
#: the advert every open stream is published as: ``ls_stream`` of that stream, service type ``streaming``
STREAM_SERVICE = "ls_stream"
STREAM_SERVICE_TYPE = "streaming"


def payload_bytes(payloads: Iterable[str]) -> int:
    """The UTF-8 bytes of packet payloads (what ``check_payload`` limits); ASCII text is counted without encoding."""
    return sum(len(p) if p.isascii() else len(p.encode("utf-8", "surrogatepass")) for p in payloads)


def stream_metrics(metrics: Metrics) -> tuple[Any, Any, Any]:
    """The streams instruments: packets (by direction), payments (by side and outcome), subscribers gauge."""
    from prometheus_client import Counter, Gauge

    packets = instrument(metrics, Counter, "overlay_stream_packets", "Stream packets", ["direction"])
    payments = instrument(metrics, Counter, "overlay_stream_payments", "Stream window payments", ["side", "outcome"])
    subs = instrument(metrics, Gauge, "overlay_stream_subscribers", "Subscribers attached now", ["stream"])
    return packets, payments, subs


@dataclass(eq=False)
class _Hold:
    """A ``stream.pay`` message held until its window begins (``protocol/streams.py``, invariant 8): ``taken`` when
    the sender wants it, refused when its event fires without."""

    link: PeerLink
    event: trio.Event = field(default_factory=trio.Event)
    taken: bool = False


#: the payments of a message that passed the subscription's checks: (position, payment, the quote that follows it)
_Taken = list[tuple[int, PaymentMessage, Quote]]


@dataclass(eq=False)
class _Sub:
    stream: _Stream
    key: str
    window: int
    start_seq: int
    credit: ProducerCredit
    quotes: dict[str, Quote] = field(default_factory=dict)  # open window quotes, by id (at most `ahead`)
    link: PeerLink | None = None
    scope: trio.CancelScope | None = None
    wake: trio.Event = field(default_factory=trio.Event)
    reason: str = ""
    dirty: bool = True
    bytes: int = 0  # payload bytes sent, each packet once (written with the row)
    holds: list[_Hold] = field(default_factory=list)  # messages held until their window begins

    def row(self, now: float) -> SubRow:
        c = self.credit
        return SubRow(
            stream_id=self.stream.terms.stream_id,
            peer=self.key,
            role="producer",
            window=self.window,
            start_seq=self.start_seq,
            charged_through=c.charged_through,
            packets=c.packets,
            paid=c.paid,
            payments=0,
            state=c.state,
            reason=self.reason,
            updated_at=now,
            bytes=self.bytes,
        )


@dataclass(eq=False)
class _Stream:
    terms: StreamTerms
    max_consumers: int
    created_at: float
    next_seq: int
    buffer: deque[str]
    reserved: int = 0  # durable: no packet at or above it was sent (invariant 6)
    reserving: trio.Lock = field(default_factory=trio.Lock)
    closed_at: float | None = None
    subs: dict[str, _Sub] = field(default_factory=dict)
    dirty: bool = False

    @property
    def oldest(self) -> int:
        return self.next_seq - len(self.buffer)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.terms.to_wire(),
            "tags": list(self.terms.tags),
            "max_consumers": self.max_consumers,
            "created_at": self.created_at,
            "closed": self.closed_at is not None,
            "head": self.next_seq,
            "buffered": len(self.buffer),
            "subscribers": sum(1 for s in self.subs.values() if s.link is not None),
        }


class StreamProducer:
    """The producer side. Start it with ``await nursery.start(producer.run)``.

    Args:
        identity: the node's key (producer of its streams).
        config: the ``[streams]`` section.
        wallet_config: the ``[wallet]`` section (payment size limit).
        store, metrics, peers, dht, payments: the node's services.
        endpoints: returns this node's dialable swarm addresses (for the DHT record).
    """

    def __init__(
        self,
        identity: Identity,
        config: StreamsSection,
        wallet_config: WalletSection,
        store: Store,
        metrics: Metrics,
        peers: PeerManager,
        dht: DhtService,
        payments: Payments,
        endpoints: Any,
        *,
        wall_clock: Callable[[], float] = wall_time,
    ) -> None:
        self._identity = identity
        self._wall = wall_clock
        self._me = identity.public_key_hex
        self._config = config
        self._max_payment = wallet_config.max_payment_bytes
        self._store = store
        self._peers = peers
        self._dht = dht
        self._payments = payments
        self._endpoints = endpoints
        self._streams: dict[str, _Stream] = {}
        self._nursery: trio.Nursery | None = None
        #: publishes each open stream as an advert (set by the node before ``run``)
        self.adverts: AdvertService | None = None
        self._m_packets, self._m_payments, self._m_subs = stream_metrics(metrics)
        # the children counted per payment or batch, looked up once
        self._m_sent = self._m_packets.labels("sent")
        self._m_accepted = self._m_payments.labels("producer", "accepted")
        self._m_refused = self._m_payments.labels("producer", "refused")
        peers.on_request("stream.subscribe", self._serve_subscribe)
        peers.on_request("stream.pay", self._serve_pay)
        peers.on_notice("stream.unsubscribe", self._on_unsubscribe)
        payments.register_pricer("stream:", self._refuse_direct)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the streams, advertise the open ones, and flush accounting until cancelled (then once more)."""
        for row in await self._store.streams.streams():
            terms = StreamTerms(
                stream_id=row.stream_id,
                producer=self._me,
                pricing_model=row.pricing_model,  # type: ignore[arg-type]
                rate=row.rate,
                title=row.title,
                tags=row.tags,
            )
            stream = _Stream(
                terms=terms,
                max_consumers=row.max_consumers,
                created_at=row.created_at,
                next_seq=row.next_seq,
                buffer=deque(maxlen=self._config.buffer_packets),
                closed_at=row.closed_at,
                reserved=row.next_seq,
            )
            self._streams[row.stream_id] = stream
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                nursery.start_soon(self._keep_advertised)
                while True:
                    await trio.sleep(self._config.flush_interval)
                    await self.flush()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                for stream in self._streams.values():
                    for sub in stream.subs.values():
                        self._drop_holds(sub)
                        sub.credit.detach(trio.current_time())
                        sub.dirty = True
                    stream.dirty = True
                await self.flush(exact=True)

    async def flush(self, *, exact: bool = False) -> None:
        """Write changed positions and counts (one durable transaction). A stream's restart position is its
        reservation, or with ``exact`` (the clean shutdown: nothing is sent any more) its head."""
        streams, subs = [], []
        for stream in self._streams.values():
            if stream.dirty:
                stream.dirty = False
                position = stream.next_seq if exact else stream.reserved
                streams.append((stream.terms.stream_id, position, stream.closed_at))
            for sub in stream.subs.values():
                if sub.dirty:
                    sub.dirty = False
                    subs.append(sub.row(self._wall()))
        if streams or subs:
            await self._store.streams.save(streams, subs, exact=exact)

    async def _reserve(self, stream: _Stream, *, ahead: int = 0) -> None:
        """Move the stream's durable reservation to ``ahead`` past its head (invariant 6), then wake its senders."""
        async with stream.reserving:
            try:
                while stream.reserved < stream.next_seq + ahead // 2:
                    target = stream.next_seq + ahead
                    await self._store.streams.reserve(stream.terms.stream_id, target)
                    stream.reserved = max(stream.reserved, target)
                    for sub in stream.subs.values():
                        sub.wake.set()
            except OverlayError as exc:
                logger.warning("stream %s: could not reserve sequence numbers: %s", stream.terms.stream_id, exc)

    # -- producer API --------------------------------------------------------------------------------------------

    async def create(
        self,
        stream_id: str,
        *,
        pricing_model: str = "per-packet",
        rate: int = 1,
        title: str = "",
        tags: tuple[str, ...] = (),
        max_consumers: int | None = None,
    ) -> dict[str, Any]:
        """Create and advertise a stream.

        Raises:
            BadRequest: bad id, pricing model, rate, title or tags.
            Conflict: the id exists (open or closed).
        """
        terms = StreamTerms(
            stream_id=check_stream_id(stream_id),
            producer=self._me,
            pricing_model=pricing_model,  # type: ignore[arg-type]  # checked in __post_init__
            rate=rate,
            title=title,
            tags=tags,
        )
        limit = self._config.max_consumers if max_consumers is None else max_consumers
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise BadRequest("max consumers must be a positive integer")
        now = self._wall()
        row = StreamRow(
            stream_id=stream_id,
            title=title,
            tags=tags,
            pricing_model=pricing_model,
            rate=rate,
            max_consumers=limit,
            created_at=now,
            closed_at=None,
            next_seq=0,
        )
        if stream_id in self._streams or not await self._store.streams.create(row):
            raise Conflict(f"stream {stream_id!r} exists already: pick another id")
        stream = _Stream(
            terms=terms,
            max_consumers=limit,
            created_at=now,
            next_seq=0,
            buffer=deque(maxlen=self._config.buffer_packets),
        )
        self._streams[stream_id] = stream
        await self._reserve(stream, ahead=_SEQ_BLOCK)  # the first push need not wait for a durable write
        await self._advertise(stream)
        logger.info("stream %s created (%s, %d satoshis)", stream_id, pricing_model, rate)
        return stream.as_dict()

    @property
    def max_packet(self) -> int:
        return self._config.max_packet

    def _stream(self, stream_id: str) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise NotFound(f"no stream {stream_id!r} on this node: create it first")
        return stream

    def push(self, stream_id: str, payloads: list[str]) -> dict[str, int]:
        """Append packets (all or none) and wake the subscribers; returns the sequence range.

        Raises:
            NotFound: no such stream. Conflict: it is closed. BadRequest: a payload over ``max_packet``.
        """
        stream = self._stream(stream_id)
        if stream.closed_at is not None:
            raise Conflict(f"stream {stream_id!r} is closed")
        for i, payload in enumerate(payloads):
            try:
                check_payload(payload, self._config.max_packet)
            except BadRequest as exc:
                raise BadRequest(f"packet {i} of the push: {exc}") from None
        first = stream.next_seq
        stream.buffer.extend(payloads)
        stream.next_seq += len(payloads)
        stream.dirty = True
        self._m_packets.labels("pushed").inc(len(payloads))
        if stream.reserved < stream.next_seq + _SEQ_BLOCK // 2 and not stream.reserving.locked() and self._nursery:
            self._nursery.start_soon(partial(self._reserve, stream, ahead=_SEQ_BLOCK))
        for sub in stream.subs.values():
            sub.wake.set()
        return {"first": first, "count": len(payloads), "head": stream.next_seq}

    async def close(self, stream_id: str) -> dict[str, Any]:
        """Close a stream: subscribers get what is buffered, then ``stream.closed``; the DHT record is revoked."""
        stream = self._stream(stream_id)
        if stream.closed_at is None:
            stream.closed_at = self._wall()
            stream.dirty = True
            await self._reserve(stream)  # the last packets go out once they are reserved
            for sub in stream.subs.values():
                sub.wake.set()
            await self.flush()
            try:
                await self._dht.remove(dht_key("stream", stream_id))
            except OverlayError as exc:
                logger.warning("could not revoke the DHT record of stream %s: %s", stream_id, exc)
            await self._withdraw(stream_id)
        return stream.as_dict()

    def list(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self._streams.values()]

    async def status(self, stream_id: str) -> dict[str, Any]:
        """The stream with its subscribers: packets, paid satoshis, payments, unsettled amount, state."""
        stream = self._stream(stream_id)
        paid = await self._store.streams.paid_by_payer(stream_resource(stream_id))
        rows = {r.peer: r for r in await self._store.streams.subs(stream_id, role="producer")}
        keys = sorted(set(paid) | set(rows) | set(stream.subs))
        subscribers = []
        for key in keys:
            sub, row, totals = stream.subs.get(key), rows.get(key), paid.get(key)
            packets = sub.credit.packets if sub is not None else (row.packets if row is not None else 0)
            subscribers.append(
                {
                    "identity_key": key,
                    "packets": packets,
                    "paid_satoshis": totals.amount if totals else 0,
                    "payments": totals.payments if totals else 0,
                    "unsettled_satoshis": totals.unsettled if totals else 0,
                    "credit_satoshis": sub.credit.credit if sub is not None else 0,
                    "window": sub.window if sub is not None else (row.window if row is not None else 0),
                    "next_seq": sub.credit.cursor if sub is not None else None,
                    "state": ("attached" if sub.link is not None else sub.credit.state) if sub else "detached",
                    "reason": sub.reason if sub is not None else (row.reason if row is not None else ""),
                }
            )
        revenue = sum(t.amount for t in paid.values())
        return {
            **stream.as_dict(),
            "subscribers": subscribers,
            "revenue_satoshis": revenue,
            "unsettled_satoshis": sum(t.unsettled for t in paid.values()),
            "packets": sum(s["packets"] for s in subscribers),
        }

    async def _advertise(self, stream: _Stream) -> None:
        value = json.dumps(
            {
                "v": 1,
                "swarm": list(self._endpoints())[:4],
                "model": stream.terms.pricing_model,
                "rate": stream.terms.rate,
                "title": stream.terms.title[:100],
            },
            separators=(",", ":"),
        ).encode()
        try:
            await self._dht.put(dht_key("stream", stream.terms.stream_id), value, ttl=self._config.advert_ttl)
        except OverlayError as exc:
            logger.warning("could not advertise stream %s: %s", stream.terms.stream_id, exc)
        if self.adverts is None:
            return
        terms = stream.terms
        try:
            await self.adverts.wait_ready()
            await self.adverts.publish(
                STREAM_SERVICE,
                resource=terms.stream_id,
                service_type=STREAM_SERVICE_TYPE,
                pricing_model=terms.pricing_model,
                price=terms.rate,
                capabilities=tuple(t for t in terms.tags if len(t) <= MAX_TEXT)[:MAX_CAPABILITIES],
                ttl=self._config.advert_ttl,
            )
        except OverlayError as exc:
            logger.warning("could not publish the advert of stream %s: %s", terms.stream_id, exc)

    async def _keep_advertised(self) -> None:
        """Advertise the open streams once at start (this run's endpoints); from then on the DHT renews the stream
        records and the adverts service its adverts (with a fresh expiry inside) until :meth:`close` revokes both."""
        for stream in list(self._streams.values()):
            if stream.closed_at is None:
                await self._advertise(stream)

    async def _withdraw(self, stream_id: str) -> None:
        if self.adverts is None:
            return
        try:
            await self.adverts.revoke(STREAM_SERVICE, resource=stream_id)
        except OverlayError as exc:
            logger.warning("could not revoke the advert of stream %s: %s", stream_id, exc)

    # -- peer handlers -------------------------------------------------------------------------------------------

    async def _refuse_direct(self, _resource: str, _payer: str, _amount: int | None) -> int:
        raise BadRequest("stream windows are paid through stream.subscribe / stream.pay, not pay.quote")

    async def _serve_subscribe(self, link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        stream = self._stream(check_stream_id(body.get("stream_id")))
        if stream.closed_at is not None and body.get("from_seq") is None:
            raise Conflict(f"stream {stream.terms.stream_id!r} is closed")
        window = check_window(body.get("window"))
        asked = body.get("ahead", 2)
        if not isinstance(asked, int) or isinstance(asked, bool) or not 1 <= asked <= MAX_AHEAD:
            raise BadRequest(f"'ahead' must be an integer in [1, {MAX_AHEAD}]")
        ahead = min(max(asked, 2), ahead_windows(window, self._config.max_pay_ahead))
        if stream.terms.pricing_model == "per-second":
            ahead = 2  # time is sold a window at a time; a pipeline of payments buys nothing
        from_seq = body.get("from_seq")
        key = link.peer_key
        now = trio.current_time()
        sub = stream.subs.get(key)
        if sub is None:
            attached = sum(1 for s in stream.subs.values() if s.link is not None)
            if attached >= stream.max_consumers:
                raise Conflict(
                    f"stream {stream.terms.stream_id!r} has its maximum of {stream.max_consumers} subscribers"
                )
            paid = (await self._store.streams.paid_by_payer(stream_resource(stream.terms.stream_id))).get(key)
            rows = await self._store.streams.subs(stream.terms.stream_id, role="producer")
            row = next((r for r in rows if r.peer == key), None)
            start = stream.oldest if from_seq is None else from_seq
            if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= stream.next_seq:
                raise BadRequest(f"'from_seq' must be a sequence number up to the head {stream.next_seq}")
            credit = ProducerCredit(
                pricing_model=stream.terms.pricing_model,
                rate=stream.terms.rate,
                window=window,
                ahead=ahead,
                cursor=start,
                charged_through=row.charged_through if row is not None else start,
                paid=paid.amount if paid is not None else 0,
                packets=row.packets if row is not None else 0,
                grace=self._config.grace_period,
                now=now,
            )
            sub = _Sub(stream=stream, key=key, window=window, start_seq=row.start_seq if row else start, credit=credit)
            sub.bytes = row.bytes if row is not None else 0
            stream.subs[key] = sub
        else:
            start = sub.credit.cursor if from_seq is None else from_seq
            sub.window = sub.credit.window = window
            sub.credit.ahead = ahead
        held = from_seq is not None  # the consumer says what it holds; otherwise we chose where to start
        if from_seq is None:
            from_seq = max(min(start, stream.next_seq), stream.oldest)
        begin = sub.credit.resume_at(from_seq, oldest=stream.oldest, head=stream.next_seq, held=held)
        sub.credit.on_paid(0, now)
        sub.reason = ""
        sub.dirty = True
        now_ms = int(self._wall() * 1000)
        # the answer's quotes are signed each: the unsigned ones that receipts signed are dropped (a consumer
        # resuming takes the quotes of this answer)
        price = sub.credit.window_price
        sub.quotes = {
            q.quote_id: q for q in sub.quotes.values() if q.sig and not q.expired(now_ms) and q.amount == price
        }
        while len(sub.quotes) < ahead:
            quote = self._new_quote(sub)
            sub.quotes[quote.quote_id] = quote
        self._attach(sub, link)
        return {
            "terms": stream.terms.to_wire(),
            "quotes": [q.to_wire() for q in sub.quotes.values()],
            "ahead": ahead,
            "start_seq": begin,
            "head": stream.next_seq,
            "paid": sub.credit.paid,
            "packets": sub.credit.packets,
            "credit": sub.credit.credit,
            "holds": True,  # a payment sent with "hold" waits for its window (protocol/streams.py, invariant 8)
        }

    def _attach(self, sub: _Sub, link: PeerLink) -> None:
        self._drop_holds(sub, keep=link)
        if sub.scope is not None:
            sub.scope.cancel()
        if sub.link is None:
            self._m_subs.labels(sub.stream.terms.stream_id).inc()
        sub.link = link
        if self._nursery is None:
            raise ConnectionLost("the streams service is not running")
        scope = trio.CancelScope()
        sub.scope = scope
        self._nursery.start_soon(self._send_loop, sub, link, scope)

    async def _serve_pay(self, link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        """``stream.pay``: one payment (``payment``: refused with an error) or several at once (``payments``:
        checked together, one outcome each, so a consumer with several payments ready sends one message); ``hold``:
        seconds the message may wait for its window (``protocol/streams.py``, invariant 8)."""
        stream = self._stream(check_stream_id(body.get("stream_id")))
        sub = stream.subs.get(link.peer_key)
        if sub is None or sub.link is not link:
            raise NotFound(f"no subscription to {stream.terms.stream_id!r} on this link: subscribe first")
        batch = body.get("payments")
        if batch is not None and (not isinstance(batch, list) or not 1 <= len(batch) <= sub.credit.ahead):
            raise BadRequest(f"'payments' must be a list of 1-{sub.credit.ahead} payments")
        hold = body.get("hold", 0)
        if not isinstance(hold, int | float) or isinstance(hold, bool) or not 0 <= hold <= 3600:
            raise BadRequest("'hold' must be a number of seconds")
        # decided before this message's payments count as being checked
        held = hold > 0 and sub.credit.holds(min(stream.next_seq, stream.reserved))
        results, taken = self._take_windows(stream, sub, [body.get("payment")] if batch is None else batch)

        async def window_begun() -> OverlayError | None:
            # checked and signed, held until the window begins (or refused): only its commit is left then
            if await self._wait_for_window(sub, link, min(float(hold), HOLD_SECONDS)):
                return None
            return PaidTooEarly(f"the window has not begun: nothing was taken; {PAID_TOO_EARLY}")

        # shielded: a payment that gets recorded must also be credited, even if the link drops meanwhile (the
        # consumer then collects its receipt with pay.receipt after resuming); a hold ends when the subscriber
        # detaches
        with trio.CancelScope(shield=True):
            await self._accept_windows(link, stream, sub, results, taken, window_begun if held else None)
        if batch is None:
            (result,) = results
            if isinstance(result, OverlayError):
                raise result
            return {**result, "credit": sub.credit.credit}
        answers = [
            {"error": {"code": r.code, "message": str(r)}} if isinstance(r, OverlayError) else r for r in results
        ]
        return {"results": answers, "credit": sub.credit.credit}

    def _take_windows(self, stream: _Stream, sub: _Sub, wires: Sequence[object]) -> tuple[_Outcomes, _Taken]:
        """Parse window payments of ``sub`` and check each against the subscription, in order (the credit bound
        counts them in order): the refused ones get their error in the results, the others (with the next window's
        quote, unsigned: the receipt signs it by its digest) count as being checked from now on."""
        results: _Outcomes = []
        taken: _Taken = []
        for wire in wires:
            try:
                message = self._window_payment(stream, sub, wire)
            except OverlayError as exc:
                self._m_refused.inc()
                results.append(exc)
                continue
            sub.credit.pending += message.quote.amount
            taken.append((len(results), message, self._new_quote(sub, signed=False)))
            results.append({})
        return results, taken

    @staticmethod
    async def _wait_for_window(sub: _Sub, link: PeerLink, seconds: float) -> bool:
        """Hold a message until the sender takes it (True), or until the hold runs out, the subscriber detaches or
        the stream ends (False)."""
        if sub.link is not link:
            return False
        hold = _Hold(link)
        sub.holds.append(hold)
        sub.credit.held = len(sub.holds)
        sub.wake.set()  # a packet pushed while it was being checked may want it already
        try:
            with trio.move_on_after(seconds):
                await hold.event.wait()
        finally:
            if hold in sub.holds:
                sub.holds.remove(hold)
                sub.credit.held = len(sub.holds)
        return hold.taken

    @staticmethod
    def _release(sub: _Sub) -> None:
        """The sender wants the held messages (:class:`Release`): they go on to be checked."""
        for hold in sub.holds:
            hold.taken = True
            hold.event.set()
        sub.holds.clear()
        sub.credit.held = 0

    @staticmethod
    def _drop_holds(sub: _Sub, *, keep: PeerLink | None = None) -> None:
        """Refuse the held messages (but those that came over ``keep``): the subscriber left or the stream ended."""
        for hold in [h for h in sub.holds if h.link is not keep]:
            sub.holds.remove(hold)
            hold.event.set()
        sub.credit.held = len(sub.holds)

    async def _accept_windows(
        self,
        link: PeerLink,
        stream: _Stream,
        sub: _Sub,
        results: _Outcomes,
        taken: _Taken,
        window_begun: Callable[[], Awaitable[OverlayError | None]] | None,
    ) -> None:
        """Accept the window payments of ``sub`` that :meth:`_take_windows` took (its ``results`` get their outcomes):
        each its receipt and the next window's quote, or the error that refused it (``window_begun``: what the
        checked payments wait for before their commit). A payment may name its quote by id (``quote_id``) or bring
        it back."""
        credit = sub.credit
        if not taken:
            return
        try:
            # one signing key for the stream's receipts (a subscriber derives it once), one signature for the
            # receipts of the message (a subscriber checks it once; protocol/payments.py, invariant 6)
            outcomes = await self._payments.accept_payments(
                link.peer_key,
                [(m, fresh) for _, m, fresh in taken],
                key_id=stream_resource(stream.terms.stream_id),
                batched=True,
                before_commit=window_begun,
            )
        finally:
            credit.pending -= sum(m.quote.amount for _, m, _ in taken)
            sub.wake.set()  # credit, or a refusal the sender may pause for
        now = trio.current_time()
        for (i, message, fresh), outcome in zip(taken, outcomes, strict=True):
            if isinstance(outcome, OverlayError):
                self._m_refused.inc()
                results[i] = outcome
                continue
            sub.quotes.pop(message.quote.quote_id, None)
            sub.quotes[fresh.quote_id] = fresh
            credit.on_paid(outcome.amount, now)
            sub.dirty = True
            self._m_accepted.inc()
            # the receipt as the bytes it was stored as: the consumer stores them as they come
            results[i] = {"receipt": outcome.to_bytes(), "quote": fresh.to_wire()}

    def _window_payment(self, stream: _Stream, sub: _Sub, wire: object) -> PaymentMessage:
        """Parse a window payment and check it answers an open quote of ``sub`` within the credit bound."""
        message = PaymentMessage.from_wire(
            wire, max_bytes=self._max_payment, quotes=lambda qid: sub.quotes.get(qid) or self._payments.issued(qid)
        )
        quote = message.quote
        if quote.resource != stream_resource(stream.terms.stream_id):
            raise InvalidPayment(f"the payment is for {quote.resource!r}, not stream {stream.terms.stream_id!r}")
        if quote.quote_id not in sub.quotes:
            if quote.payee == self._me:
                raise PaymentReplayed(f"quote {quote.quote_id} is not an open window quote of this subscription")
            raise InvalidPayment("the payment does not answer this subscription's window quotes")
        sub.credit.check_payment(quote.amount)
        return message

    def _new_quote(self, sub: _Sub, *, signed: bool = True) -> Quote:
        """A new window quote for ``sub`` (the caller keeps it among the open quotes when it is offered)."""
        terms = sub.stream.terms
        return self._payments.issue_quote(
            sub.key, stream_resource(terms.stream_id), terms.window_price(sub.window), signed=signed
        )

    async def _on_unsubscribe(self, link: PeerLink, body: dict[str, Any]) -> None:
        stream = self._streams.get(str(body.get("stream_id")))
        sub = stream.subs.get(link.peer_key) if stream is not None else None
        if sub is not None and sub.link is link:
            sub.reason = "unsubscribed"
            self._detach(sub)

    def _detach(self, sub: _Sub) -> None:
        self._drop_holds(sub)
        if sub.scope is not None:
            sub.scope.cancel()
        if sub.link is not None:
            self._m_subs.labels(sub.stream.terms.stream_id).dec()
        sub.link = None
        sub.scope = None
        sub.credit.detach(trio.current_time())
        sub.dirty = True

    # -- sending -------------------------------------------------------------------------------------------------

    async def _send_loop(self, sub: _Sub, link: PeerLink, scope: trio.CancelScope) -> None:
        stream = sub.stream
        sid = stream.terms.stream_id
        cfg = self._config
        with scope:
            try:
                while not link.closed:
                    sub.wake = trio.Event()
                    now = trio.current_time()
                    # the batch may hold at most batch_bytes of payload
                    limit, size = 0, 0
                    base = sub.credit.cursor - stream.oldest
                    while limit < cfg.batch_packets and 0 <= base + limit < len(stream.buffer):
                        size += len(stream.buffer[base + limit]) + 8
                        if limit and size > cfg.batch_bytes:
                            break
                        limit += 1
                    head = min(stream.next_seq, stream.reserved)  # only reserved numbers go out (invariant 6)
                    actions = sub.credit.plan(
                        head=head,
                        oldest=stream.oldest,
                        closed=stream.closed_at is not None and head == stream.next_seq,
                        now=now,
                        max_batch=max(limit, 1),
                    )
                    idle = not actions
                    for action in actions:
                        match action:
                            case SendPackets(first=first, count=count, free=free):
                                offset = first - stream.oldest
                                payloads = tuple(stream.buffer[offset + i] for i in range(count))
                                batch = PacketBatch(stream_id=sid, first=first, payloads=payloads, head=head)
                                sub.bytes += payload_bytes(payloads[free:])  # resent ones were counted before
                                sub.dirty = True
                                await link.notify("stream.packets", batch.to_wire())
                                self._m_sent.inc(count)
                            case Pause(reason=reason, credit=credit, paid=paid):
                                body = {
                                    "stream_id": sid,
                                    "reason": reason,
                                    "head": head,
                                    "credit": credit,
                                    "paid": paid,
                                }
                                await link.notify("stream.paused", body)
                            case Release():
                                self._release(sub)
                                idle = True  # their outcome wakes us
                            case Close(reason=reason):
                                sub.reason = reason
                                logger.info("stream %s: subscription of %s closed (%s)", sid, sub.key[:16], reason)
                                with trio.move_on_after(1):
                                    await link.notify("stream.closed", {"stream_id": sid, "reason": reason})
                                return
                    if idle:
                        deadline = sub.credit.deadline()
                        with trio.move_on_at(deadline if math.isfinite(deadline) else math.inf):
                            await sub.wake.wait()
                    # else: the notice's socket send was a turn of the event loop, in which other subscribers'
                    # senders ran
            except OverlayError as exc:  # this subscriber's link failed; the others go on
                logger.info("stream %s: sending to %s stopped: %s", sid, sub.key[:16], exc)
            finally:
                if sub.scope is scope:
                    self._detach(sub)
