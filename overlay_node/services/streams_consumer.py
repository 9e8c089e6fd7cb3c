"""Paid live streams, consumer side: find a stream's producer through the DHT, subscribe over a peer link,
pay each window ahead (BRC-29 through the wallet), hand packets to a reader in order, and resume after a
dropped link (docs/design.md, Paid streams; the protocol is in ``protocol/streams.py``).

Theory of operation:

1. :meth:`StreamConsumer.subscribe` looks the stream up (``dht_key("stream", id)``), links to the producer
   and sends ``stream.subscribe``; errors so far (unknown stream, unreachable producer, price above
   ``max_price``) are raised to the caller. Then a task in the service's nursery runs the subscription and
   the caller reads packets from :meth:`Subscription.packets` (a bounded channel: a slow reader pushes back on
   the link, and so on the producer's sender for this subscriber only).
2. Packets arrive as ``stream.packets`` notices (handled in order per link) and go through the
   :class:`~overlay_node.protocol.streams.ConsumerCredit`; a payer task pays a window whenever the credit says
   so, with one of the open quotes the subscribe answer and the receipts brought (no extra round trip). Up to
   ``ahead`` payments may be in flight at once (``streams.pay_ahead`` packets, at least two windows); each
   spends its own coin: the first payment splits its change into that many coins. Payments ready together go
   ``_MAX_BATCH`` to a ``stream.pay``, each batch written ahead and sent while the next one is prepared.
3. A payment is built and written ahead in the wallet (``Wallet.begin``) by the payer task, in order, and
   sent with ``stream.pay`` by a task of its own; the receipt makes it ``sent``; a refusal undoes it; no answer
   leaves it to the settlement watch and, after a reconnect, the consumer asks ``pay.receipt`` for it, so an
   accepted payment is counted once and a lost one never. A producer that says ``holds`` at subscribe gets every
   message with ``hold``: a live stream's next window, paid before its first packet exists, waits there until the
   packet comes (``protocol/streams.py``, invariants 3 and 8), and a stopping subscription with payments on their
   way unsubscribes once they have left, so that one held is refused at once (nothing taken, its coins back).
4. If the link drops, the subscription redials (DHT lookup again: a restarted producer may listen elsewhere)
   with backoff for up to ``resume_timeout`` and subscribes again from its next sequence number, which the
   producer never charges again.
5. The subscription ends at its duration, when the reader stops, when the producer closes it (end of the
   stream, ``payment_timeout``, ``lagging``), when a price exceeds ``max_price``, or on a protocol error;
   its accounting is written to ``stream_subs`` (role ``consumer``). A ``payment_timeout`` that comes while a
   payment of ours is on its way (held up by a partition, then delivered late) is not an end: the subscription
   resumes as in 4.
6. That row is kept durable while the subscription runs, so a crash of the consumer loses from its report no packet
   it paid for beyond its pay-ahead: each batch of payments takes it along into its write-ahead, one transaction for
   both (``Wallet.begin_many``'s ``before``: one commit, where a row written first was a second writer round trip
   on the payment's way), and a task of its own writes it alone (``NORMAL``, urgent, like the write-ahead) when it
   changed and no write-ahead took it along for ``_ROW_LINGER`` with no payment on its way (packets that no payment
   follows). A row written
   alone and a write-ahead that carries it are never on their way at once, so the rows commit in the order they
   were taken. Whatever a crash took back, the payments' history entries (written ahead) cover at most ``ahead``
   windows beyond the packets the row counts.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import trio

from overlay_node.clock import wall_time
from overlay_node.config import StreamsSection
from overlay_node.crypto.keys import Identity
from overlay_node.errors import (
    BadRequest,
    Conflict,
    ConnectionLost,
    DialError,
    InsufficientFunds,
    NotFound,
    OverlayError,
    PaidTooEarly,
    PaymentError,
    PeerTimeout,
    ProtocolError,
    QuoteExpired,
    RemoteProtocolError,
)
from overlay_node.lru import LruMap
from overlay_node.metrics import Metrics
from overlay_node.net.link import rebuild_error
from overlay_node.net.peers import PeerLink, PeerManager
from overlay_node.protocol.payments import PaymentMessage, Quote, Receipt
from overlay_node.protocol.streams import (
    HOLD_SECONDS,
    MAX_AHEAD,
    ConsumerCredit,
    Packet,
    PacketBatch,
    StreamTerms,
    ahead_windows,
    check_stream_id,
    check_window,
)
from overlay_node.services.dht import DhtService, dht_key
from overlay_node.services.payments import Payments
from overlay_node.services.streams import payload_bytes, stream_metrics
from overlay_node.services.wallet import PreparedTx, Wallet
from overlay_node.store.db import Store
from overlay_node.store.streams import SubRow, subs_txn
from overlay_node.store.wallet import HistoryRecord

__all__ = ["StreamConsumer", "Subscription"]

logger = logging.getLogger(__name__)

_MAX_ADDRESSES = 8
#: the most window payments sent in one stream.pay message
_MAX_BATCH = 16
#: seconds a stopping subscription waits for the answers to its payments in flight
_DRAIN_TIMEOUT = 5.0
#: final summaries of ended subscriptions kept for `stop` and the status listing
_RECENT = 100
#: seconds a subscription's row waits, after it changed, for a payment's write-ahead to take it along (theory, 6)
_ROW_LINGER = 0.05


@dataclass(frozen=True, slots=True)
class _Payment:
    """A window payment built and reserved, on its way to the producer."""

    quote: Quote
    message: PaymentMessage
    prepared: PreparedTx
    history: HistoryRecord


class _Finished(Exception):
    """Internal: the subscription ends with ``reason``."""

    def __init__(self, reason: str, error: OverlayError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class Subscription:
    """One running subscription. Read packets with ``async for packet in sub.packets()``; :meth:`summary`
    reports the accounting; :meth:`stop` ends it."""

    def __init__(
        self,
        consumer: StreamConsumer,
        stream_id: str,
        producer: str,
        addresses: list[str],
        *,
        window: int,
        ahead: int,
        max_price: int | None,
        duration: float | None,
        live_ahead: bool = False,
    ) -> None:
        self._consumer = consumer
        self.live_ahead = live_ahead
        self.holds = False  # the producer holds a payment until its window begins (protocol/streams.py, inv. 8)
        self.stream_id = stream_id
        self.producer = producer
        self.addresses = addresses
        self.window = window
        self.ahead = ahead
        self.max_price = max_price
        self.duration = duration
        self.credit: ConsumerCredit | None = None
        self.quotes: deque[Quote] = deque()  # open window quotes, oldest first
        self._change_key = f"stream {secrets.token_hex(12)}"  # one change key for the subscription's payments
        self.link: PeerLink | None = None
        self.fees = 0
        self.bytes = 0  # payload bytes received (written with the row at the end)
        #: what earlier subscriptions to this stream from this producer recorded: the row keeps the totals of them
        #: all (the summary is this subscription's alone)
        self.before: SubRow | None = None
        self.skipped = 0
        self.reconnects = 0
        self.reason = ""
        self.error: OverlayError | None = None
        self.started_at = consumer.wall()
        self._send, self._recv = trio.open_memory_channel[Packet](consumer.config.consumer_queue)
        self._changed = trio.Event()
        self._done = trio.Event()
        self._finished = trio.Event()
        self._unanswered: list[tuple[Quote, PreparedTx]] = []
        self._late_close_at = -1  # packets received when a payment_timeout last came with a payment on its way
        self._failure: OverlayError | _Finished | None = None
        self._hold = False  # a payment came too early: wait for news before the next
        self._leaving = 0  # payments of batches handed to _send_payments and not yet sent
        self._unsubscribed = False  # stopping: unsubscribed while payments were on their way
        self._deliveries: set[trio.CancelScope] = set()  # batches being handed to the reader
        #: payments prepared and not yet answered (txid): the coins their change will add to the wallet, less the one
        #: each spends
        self._change_coming: dict[str, int] = {}
        self._last_tick = trio.current_time()
        # the durable row (theory of operation, 6): changed (wakes _keep_row); changes made, and those the last row
        # on its way to the store holds; write-aheads on their way with it, and whether it is being written alone
        self._row_dirty = trio.Event()
        self._row_changes = 0
        self._row_taken = 0
        self._row_aheads = 0
        self._row_alone = False
        self._row_written = trio.Event()  # set (and replaced) when a write of the row ends
        self._row_submits = 0  # write-aheads that took the row along

    # -- reader API ----------------------------------------------------------------------------------------------

    async def packets(self) -> AsyncIterator[Packet]:
        """The packets in order, until the subscription ends."""
        recv = self._recv
        async with recv:
            while True:
                try:
                    packet = recv.receive_nowait()  # a batch's packets without a turn of the event loop each
                except trio.WouldBlock:
                    try:
                        packet = await recv.receive()
                    except trio.EndOfChannel:
                        return
                except trio.EndOfChannel:
                    return
                yield packet

    def queued(self) -> int:
        """Packets waiting for the reader."""
        return self._recv.statistics().current_buffer_used

    def stop(self, reason: str = "stopped") -> None:
        """End the subscription (returns at once; :meth:`wait_finished` waits for the end)."""
        if not self._done.is_set():
            self.reason = self.reason or reason
            self._done.set()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    def summary(self) -> dict[str, Any]:
        c = self.credit
        return {
            "stream_id": self.stream_id,
            "producer": self.producer,
            "window": self.window,
            "ahead": c.ahead if c else self.ahead,
            "packets": c.packets if c else 0,
            "bytes": self.bytes,
            "paid_satoshis": c.paid if c else 0,
            "payments": c.payments if c else 0,
            "fees": self.fees,
            "credit_satoshis": c.credit if c else 0,
            "next_seq": c.next_seq if c else 0,
            "skipped": self.skipped,
            "reconnects": self.reconnects,
            "reason": self.reason or ("running" if not self._finished.is_set() else "stopped"),
            "error": None if self.error is None else {"code": self.error.code, "message": str(self.error)},
        }

    # -- running -------------------------------------------------------------------------------------------------

    async def _subscribe(self, link: PeerLink) -> None:
        """Send ``stream.subscribe`` (from our next sequence number when resuming) and take the answer."""
        body: dict[str, Any] = {"stream_id": self.stream_id, "window": self.window, "ahead": self.ahead}
        if self.credit is not None:
            body["from_seq"] = self.credit.next_seq
        answer = await link.request("stream.subscribe", body)
        try:
            terms = StreamTerms.from_wire(answer.get("terms"))
            wire_quotes = answer.get("quotes")
            if not isinstance(wire_quotes, list) or not 1 <= len(wire_quotes) <= MAX_AHEAD:
                raise BadRequest(f"'quotes' must be a list of 1-{MAX_AHEAD} quotes")
            quotes = [Quote.from_wire(q) for q in wire_quotes]
            start, head, ahead = answer.get("start_seq"), answer.get("head"), answer.get("ahead")
            if not isinstance(start, int) or not isinstance(head, int) or not 0 <= start <= head:
                raise BadRequest("bad start_seq or head")
            if not isinstance(ahead, int) or not 2 <= ahead <= max(2, self.ahead):
                raise BadRequest(f"'ahead' must be an integer in [2, {max(2, self.ahead)}]")
        except BadRequest as exc:
            raise RemoteProtocolError(
                f"the producer's subscribe answer is malformed: {exc}", reason="bad_answer"
            ) from None
        if terms.producer != link.peer_key or terms.stream_id != self.stream_id:
            raise RemoteProtocolError("the producer answered for another stream or key", reason="bad_answer")
        # a producer that holds payments takes a live stream's next window paid ahead only once it begins: paying
        # it early then costs nothing and spares its first packet a payment round trip (invariant 3)
        self.holds = answer.get("holds") is True
        live_ahead = self.live_ahead or self.holds
        if self.credit is None:
            self.credit = ConsumerCredit(
                terms=terms,
                me=self._consumer.me,
                window=self.window,
                next_seq=start,
                max_price=self.max_price,
                ahead=ahead,
                live_ahead=live_ahead,
            )
            self.credit.check_price()
        else:
            if terms.rate != self.credit.terms.rate or terms.pricing_model != self.credit.terms.pricing_model:
                self.credit.terms = terms
                self.credit.check_price()
            if start > self.credit.next_seq:
                self.skipped += start - self.credit.next_seq
                self.credit.next_seq = start
            self.credit.in_flight = 0
            self.credit.ahead = ahead
            self.credit.live_ahead = live_ahead
        self.credit.head = max(self.credit.head, head)
        # a subscription that starts at the head is caught up with a live stream: its next window is paid ahead as
        # after a live batch (invariant 3), so that the first packet pushed waits for a commit, not a pause and a
        # payment round trip
        self.credit.live = self.credit.next_seq >= self.credit.head
        now_ms = int(self._consumer.wall() * 1000)
        sent = {q.quote_id for q, _ in self._unanswered}  # paid, answer unknown: not to be paid again
        self.quotes = deque(self.credit.check_quote(q, now_ms) for q in quotes if q.quote_id not in sent)
        self.link = link

    @property
    def consumer_cfg(self) -> StreamsSection:
        return self._consumer.config

    async def run(self) -> None:
        """Run until the subscription ends (never raises: the outcome is in :meth:`summary`)."""
        try:
            ended: _Finished | OverlayError | None = None
            async with trio.open_nursery() as nursery:
                if self.duration is not None:
                    nursery.start_soon(self._stop_after, self.duration)
                nursery.start_soon(self._keep_row)
                try:
                    await self._run()
                except (_Finished, OverlayError) as exc:  # raised bare below, not in the nursery's group
                    ended = exc
                nursery.cancel_scope.cancel()
            if ended is not None:
                raise ended
        except _Finished as fin:
            self.reason = self.reason or fin.reason
            self.error = fin.error
        except OverlayError as exc:
            self.reason = self.reason or "error"
            self.error = exc
        finally:
            for delivery in self._deliveries:
                delivery.cancel()
            self._send.close()
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self._consumer._finish(self)
            self._finished.set()

    async def _stop_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.stop("duration")  # a stop, not a cancellation: the payments in flight get their answers

    def _row_changed(self) -> None:
        self._row_changes += 1
        self._row_dirty.set()

    def _take_row(self) -> SubRow:
        """The row as it is now, on its way to the store (the changes so far are covered)."""
        self._row_taken = self._row_changes
        return self.row()

    def _row_ended(self) -> None:
        ended, self._row_written = self._row_written, trio.Event()
        ended.set()

    async def _keep_row(self) -> None:
        """Keep the subscription's row durable when no payment takes it along (theory of operation, 6): once it
        changed, wait ``_ROW_LINGER`` (again, while write-aheads keep taking it or payments are on their way: a row
        written alone then would hold up the next write-ahead, which takes it anyway), then write what they did not
        cover, alone, after the write-aheads on their way. A failed write ends this task (the write-aheads go on
        taking the row along); the row is written once more when the subscription ends."""
        streams = self._consumer.store.streams
        while True:
            await self._row_dirty.wait()
            self._row_dirty = trio.Event()
            while True:
                submits = self._row_submits
                await trio.sleep(_ROW_LINGER)
                if self._row_taken == self._row_changes:
                    break  # covered
                if self._row_submits == submits and not (self.credit is not None and self.credit.in_flight):
                    break  # no payment follows (none came, none is on its way whose answer may bring the next)
            while self._row_aheads:
                await self._row_written.wait()
            if self._row_taken == self._row_changes:
                continue
            self._row_alone = True
            try:
                await streams.save([], [self._take_row()], durable=False, urgent=True)
            except OverlayError as exc:
                logger.warning("stream %s: could not write the subscription's row: %s", self.stream_id, exc)
                return
            finally:
                self._row_alone = False
                self._row_ended()

    async def _run(self) -> None:
        while True:
            link = self.link
            assert link is not None
            try:
                await self._session(link)
            except (ConnectionLost, PeerTimeout) as exc:
                logger.info("stream %s: link to the producer lost (%s); resuming", self.stream_id, exc)
            if self._done.is_set():
                return
            await self._reconnect()

    async def _reconnect(self) -> None:
        cfg = self.consumer_cfg
        delay = cfg.reconnect_min
        with trio.move_on_after(cfg.resume_timeout) as scope:
            while True:
                try:
                    if self._done.is_set():
                        raise _Finished(self.reason or "stopped")
                    link = await self._consumer._link_to(self.stream_id, self.producer, self.addresses)
                    await self._subscribe(link)
                    await self._collect_unanswered(link)
                    self.reconnects += 1
                    return
                except (DialError, ConnectionLost, PeerTimeout, NotFound) as exc:
                    logger.debug("stream %s: reconnect failed: %s", self.stream_id, exc)
                except OverlayError as exc:
                    # a producer that has just restarted links before its streams service has taken its methods
                    if exc.code != "unknown_method":
                        raise
                    logger.debug("stream %s: the producer is starting: %s", self.stream_id, exc)
                with trio.move_on_after(delay):
                    await self._done.wait()
                delay = min(delay * 2, cfg.reconnect_max)
        if scope.cancelled_caught:
            raise _Finished(
                "producer_unreachable", ConnectionLost(f"no link to the producer for {cfg.resume_timeout:g}s")
            )

    async def _collect_unanswered(self, link: PeerLink) -> None:
        """Payments sent before the link dropped: count each the producer has (its receipt), the others not."""
        unanswered, self._unanswered = self._unanswered, []
        if self.credit is None:
            return
        for quote, prepared in unanswered:
            try:
                answer = await link.request("pay.receipt", {"quote_id": quote.quote_id})
                receipt = Receipt.from_wire(answer.get("receipt"))
                self.credit.on_receipt(receipt, quote, prepared.txid, in_flight=False)
                self._consumer.wallet.sent(prepared, receipt.to_bytes())  # its change is ours again
                self.fees += prepared.fee
                logger.info("stream %s: a payment sent before the link dropped was accepted", self.stream_id)
            except NotFound:
                # the producer never took it, and will not now (the quote is void): the coins are ours again
                await self._consumer.wallet.abort(prepared)
            except (BadRequest, RemoteProtocolError) as exc:
                logger.warning("stream %s: bad receipt for an unanswered payment: %s", self.stream_id, exc)

    async def _session(self, link: PeerLink) -> None:
        failure: OverlayError | _Finished | None = None
        async with trio.open_nursery() as nursery:

            async def watch_link() -> None:
                await link.wait_closed()
                nursery.cancel_scope.cancel()

            async def watch_done() -> None:
                await self._done.wait()
                self._changed.set()  # the payer stops paying, waits for the answers in flight, and returns

            nursery.start_soon(watch_link)
            nursery.start_soon(watch_done)
            try:
                await self._payer(link)
            except (OverlayError, _Finished) as exc:  # raised bare, not inside the nursery's exception group
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if not self._done.is_set():
            raise ConnectionLost("link to the producer closed")

    async def _payer(self, link: PeerLink) -> None:
        """Pay windows as the credit asks, up to ``ahead`` at once; returns (raises) the first failure. The
        payments ready at one moment (up to ``_MAX_BATCH``) travel together in one ``stream.pay``."""
        self._reset_payer()
        credit = self.credit
        assert credit is not None
        async with trio.open_nursery() as nursery:
            while self._failure is None and not self._done.is_set():
                self._changed = trio.Event()
                self._tick()
                batch: list[_Payment] = []
                try:
                    if not self.quotes and not credit.in_flight and not self._hold and credit.wants_payment():
                        await self._subscribe(link)  # out of open quotes (expired, refused): fresh ones
                    while len(batch) < _MAX_BATCH and self.quotes and not self._hold and credit.wants_payment():
                        payment = await self._prepare_payment(link)
                        if payment is None:
                            break
                        batch.append(payment)
                except (OverlayError, _Finished) as exc:
                    self._fail(exc)
                if batch:
                    self._leaving += len(batch)
                    nursery.start_soon(self._send_payments, link, batch)
                    # a turn of the loop before the next batch: this one is written ahead and sent while that one is
                    # prepared (a burst of packets wants ~16 batches; prepared all at once, the first left only after
                    # the last, the producer idle meanwhile)
                    await trio.lowlevel.checkpoint()
                elif self._failure is None and not self._done.is_set():
                    with trio.move_on_after(self._tick_interval()):
                        await self._changed.wait()
            # stopping: the payments in flight get their answers first (their coins come back with them)
            with trio.move_on_after(_DRAIN_TIMEOUT):
                if credit.in_flight and self.holds:
                    await self._unsubscribe_after_sent(link)
                while credit.in_flight and self._failure is None:
                    self._changed = trio.Event()
                    await self._changed.wait()
            nursery.cancel_scope.cancel()  # payments still in flight are left unanswered (collected on resume)
        if self._failure is not None:
            raise self._failure

    async def _unsubscribe_after_sent(self, link: PeerLink) -> None:
        """Stopping with payments on their way: once every one has left, unsubscribe, so that a producer holding one
        for a window that has not begun refuses it at once (nothing taken) rather than after ``HOLD_SECONDS``; the
        others are answered as usual, or refused if the producer saw the unsubscribe first (nothing taken)."""
        while self._leaving and self._failure is None:
            self._changed = trio.Event()
            await self._changed.wait()
        self._unsubscribed = True
        try:
            await link.notify("stream.unsubscribe", {"stream_id": self.stream_id})
        except ConnectionLost:
            pass

    def _reset_payer(self) -> None:
        self._failure = None
        self._hold = False
        self._leaving = 0
        self._unsubscribed = False

    def _fail(self, failure: OverlayError | _Finished) -> None:
        if self._failure is None:
            self._failure = failure
        self._changed.set()

    def _change_parts(self) -> int:
        """How many coins the change of the next payment becomes: enough for ``ahead`` payments in flight, each
        spending its own coin (a payment in flight holds its coin reserved until its change comes back), counting
        the coins the change of the payments on their way will add (a first batch of payments made from a few coins,
        or one behind the window paid ahead at subscribe, would otherwise split each as if it were the only one)."""
        credit = self.credit
        assert credit is not None
        coming = sum(self._change_coming.values())
        return max(1, credit.ahead - self._consumer.wallet.coin_count() - coming)

    def _landed(self, prepared: PreparedTx) -> None:
        """A payment's outcome is known to the wallet (its change added, or never coming)."""
        self._change_coming.pop(prepared.txid, None)

    def _tick(self) -> None:
        now = trio.current_time()
        if self.credit is not None:
            self.credit.on_time(now - self._last_tick)
        self._last_tick = now

    def _tick_interval(self) -> float:
        c = self.credit
        if c is None or c.terms.pricing_model != "per-second":
            return math.inf
        return max(0.01, (c.credit - c.window_price) / c.terms.rate) if c.credit > c.window_price else 0.05

    async def _prepare_payment(self, link: PeerLink) -> _Payment | None:
        """Build the next payment (in order: coins are picked one payment at a time); None when there is nothing
        to pay with right now."""
        credit = self.credit
        assert credit is not None
        consumer = self._consumer
        quote = self.quotes.popleft()
        credit.begin_payment()
        try:
            message, prepared = await consumer.payments.prepare_payment(
                quote, change_parts=self._change_parts(), change_key=self._change_key
            )
        except QuoteExpired:
            credit.payment_failed()
            if not self.quotes and not credit.in_flight:
                await self._subscribe(link)  # fresh quotes
            self._changed.set()  # try again with the next quote (or the fresh ones)
            return None
        except InsufficientFunds:
            credit.payment_failed()
            self.quotes.appendleft(quote)
            if not credit.in_flight:
                raise
            self._hold = True  # coins come back with the answers to the payments in flight
            return None
        except BaseException:
            credit.payment_failed()
            self.quotes.appendleft(quote)
            raise
        history = HistoryRecord(
            txid=prepared.txid,
            direction="out",
            kind="payment",
            amount=prepared.amount,
            fee=prepared.fee,
            counterparty=quote.payee,
            quote_id=quote.quote_id,
            resource=quote.resource,
            status="sending",  # what the write-ahead writes it as
        )
        self._change_coming[prepared.txid] = len(prepared.change) - 1
        return _Payment(quote, message, prepared, history)

    async def _write_ahead(self, batch: list[_Payment]) -> list[_Payment]:
        """Write the payments ahead with the subscription's row, in one transaction; returns the payments written
        (the others are undone, and the first error ends the session)."""
        credit = self.credit
        assert credit is not None
        wallet = self._consumer.wallet
        try:
            while self._row_alone:  # a row written alone is on its way: ours must not commit before it
                await self._row_written.wait()
        except BaseException:
            for payment in reversed(batch):  # the quotes go back in their order
                wallet.release(payment.prepared)
                self._landed(payment.prepared)
                credit.payment_failed()
                self.quotes.appendleft(payment.quote)
            raise
        # the packets this batch pays beyond are counted durably no later than the batch is (theory of operation, 6)
        row = subs_txn([self._take_row()])
        self._row_aheads += 1
        self._row_submits += 1
        try:
            errors = await wallet.begin_many([(p.prepared, p.history) for p in batch], before=row)
        except BaseException:
            for payment in batch:  # released by the wallet
                self._landed(payment.prepared)
            raise
        finally:
            self._row_aheads -= 1
            self._row_ended()
        written = []
        for payment, error in zip(batch, errors, strict=True):
            if error is None:
                written.append(payment)
                continue
            self._landed(payment.prepared)
            credit.payment_failed()
            self.quotes.appendleft(payment.quote)
            self._fail(error)
        return written

    async def _send_payments(self, link: PeerLink, batch: list[_Payment]) -> None:
        """Write the payments ahead (:meth:`_write_ahead`), send them in one message and take each answer: a receipt
        adds credit, a refusal undoes that payment, no answer leaves them all to be collected on resume."""
        credit = self.credit
        assert credit is not None
        consumer = self._consumer
        try:
            written = await self._write_ahead(batch)
        finally:
            self._leaving -= len(batch)  # they leave now (their frame goes before any later notice) or never
            if self._done.is_set():
                self._changed.set()  # a stopping payer waits for them to leave before it unsubscribes
        if not written:
            return
        # the producer keeps its open quotes: each payment names its quote by id
        body: dict[str, Any] = {
            "stream_id": self.stream_id,
            "payments": [p.message.to_wire(quote_by_id=True) for p in written],
        }
        if self.holds:
            body["hold"] = HOLD_SECONDS  # a payment for a window that has not begun waits for it (invariant 8)
        try:
            answer = await link.request("stream.pay", body)
            results = answer.get("results")
            if not isinstance(results, list) or len(results) != len(written):
                raise RemoteProtocolError(
                    "the producer's answer does not hold one result per payment", reason="bad_answer"
                )
        except (ConnectionLost, PeerTimeout, RemoteProtocolError) as exc:
            for payment in written:
                consumer.wallet.unanswered(payment.prepared, str(exc))
                self._landed(payment.prepared)
                credit.payment_failed()
                self._unanswered.append((payment.quote, payment.prepared))
            consumer.m_payments.labels("consumer", "unanswered").inc(len(written))
            self._fail(exc)
            return
        except trio.Cancelled:
            for payment in written:
                consumer.wallet.unanswered(payment.prepared, "cancelled while waiting for the producer")
                self._landed(payment.prepared)
                credit.payment_failed()
                self._unanswered.append((payment.quote, payment.prepared))
            raise
        except OverlayError as exc:  # the whole message was refused
            for payment in written:
                await self._refused(payment, exc)
            return
        for payment, result in zip(written, results, strict=True):
            error = result.get("error") if isinstance(result, dict) else None
            if isinstance(error, dict):
                await self._refused(payment, rebuild_error(str(error.get("code")), str(error.get("message"))))
                continue
            self._hold = False
            try:
                self._receipt(payment.prepared, payment.quote, {**result, "credit": answer.get("credit")})
            except _Finished as fin:
                self._fail(fin)
        self._changed.set()

    async def _refused(self, payment: _Payment, exc: OverlayError) -> None:
        """The producer refused ``payment``: undo it; paid too early -> pay it again after news, else the end."""
        credit = self.credit
        assert credit is not None
        self._landed(payment.prepared)
        await self._consumer.wallet.abort(payment.prepared)
        credit.payment_failed()
        self._consumer.m_payments.labels("consumer", "refused").inc()
        if isinstance(exc, PaidTooEarly):
            # our estimate ran ahead of the producer's: the quote is still open; pay it after news
            self.quotes.appendleft(payment.quote)
            self._hold = True
            self._changed.set()
            return
        if isinstance(exc, QuoteExpired):  # it expired on the way: pay again with another quote
            self._changed.set()
            return
        if self._unsubscribed:  # stopping: the producer saw our unsubscribe first, and took nothing
            self._changed.set()
            return
        self._fail(_Finished("payment_refused", exc))

    def _receipt(self, prepared: PreparedTx, quote: Quote, answer: dict[str, Any]) -> None:
        credit = self.credit
        assert credit is not None
        wallet = self._consumer.wallet
        self._landed(prepared)
        raw = answer.get("receipt")  # its canonical CBOR bytes (a map from a producer that sends one)
        try:
            receipt = Receipt.from_bytes(raw) if isinstance(raw, bytes) else Receipt.from_wire(raw)
            credit.on_receipt(receipt, quote, prepared.txid)
        except (BadRequest, RemoteProtocolError) as exc:
            wallet.sent(prepared, None, detail="the producer's receipt is invalid")
            error = exc if isinstance(exc, RemoteProtocolError) else RemoteProtocolError(str(exc), reason="bad_receipt")
            raise _Finished("bad_receipt", error) from None
        wallet.sent(prepared, raw if isinstance(raw, bytes) else receipt.to_bytes())  # stored as it came
        self.fees += prepared.fee
        self._row_changed()
        self._consumer.m_paid.inc()
        try:
            fresh = Quote.from_wire(answer.get("quote"), signed=False)  # the receipt signs it
            self.quotes.append(credit.check_quote(fresh, int(self._consumer.wall() * 1000), receipt=receipt))
        except PaymentError as exc:
            raise _Finished("price_exceeded", exc) from None
        except BadRequest as exc:
            raise _Finished("bad_quote", RemoteProtocolError(str(exc), reason="bad_quote")) from None
        producer_credit = answer.get("credit")
        if credit.terms.pricing_model == "per-second" and isinstance(producer_credit, int) and not credit.in_flight:
            credit.seconds = max(0.0, (credit.paid - producer_credit) / credit.terms.rate)

    # -- notices (called by the consumer service) --------------------------------------------------------------

    async def on_packets(self, batch: PacketBatch) -> None:
        credit = self.credit
        if credit is None or self._done.is_set():
            return
        try:
            packets = credit.on_packets(batch)
        except ProtocolError as exc:
            self.error = exc
            self.stop("protocol_error")
            return
        self.bytes += payload_bytes(batch.payloads)
        self._hold = False
        self._changed.set()
        self._row_changed()
        self._consumer.m_received.inc(len(packets))
        # the credit counted the whole batch: hand all of it over even if the link closes meanwhile (a slow reader
        # still pushes back: the shielded send waits for room; the subscription's end cancels it)
        with trio.CancelScope(shield=True) as delivery:
            self._deliveries.add(delivery)
            send = self._send
            try:
                for packet in packets:
                    try:
                        send.send_nowait(packet)  # no turn of the event loop per packet while the queue has room
                    except trio.WouldBlock:
                        await send.send(packet)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.stop("reader_gone")
            finally:
                self._deliveries.discard(delivery)

    def on_paused(self, head: object, paid: object) -> None:
        if self.credit is not None and isinstance(head, int) and isinstance(paid, int):
            self.credit.on_pause(head, paid)
            self._hold = False
            self._changed.set()

    def on_closed(self, reason: str) -> None:
        credit = self.credit
        late = reason == "payment_timeout" and credit is not None and bool(credit.in_flight or self._unanswered)
        if late and credit is not None and credit.packets > self._late_close_at:
            # the producer stopped waiting while a payment of ours was on its way (a network partition, a stalled
            # link): subscribe again from our next sequence number, the payment collected or undone on the way; once
            # per packet received (a producer that never takes our payments ends the subscription the second time)
            self._late_close_at = credit.packets
            logger.info("stream %s: closed by the producer while a payment was on its way; resuming", self.stream_id)
            self._fail(ConnectionLost("the producer closed the subscription while a payment was on its way"))
            return
        self.reason = self.reason or {"end": "closed"}.get(reason, reason)
        self._done.set()

    def row(self) -> SubRow:
        c = self.credit
        b = self.before
        return SubRow(
            stream_id=self.stream_id,
            peer=self.producer,
            role="consumer",
            window=self.window,
            start_seq=0,
            charged_through=c.next_seq if c else 0,
            packets=(c.packets if c else 0) + (b.packets if b else 0),
            paid=(c.paid if c else 0) + (b.paid if b else 0),
            payments=(c.payments if c else 0) + (b.payments if b else 0),
            state="closed" if self._done.is_set() else "active",
            reason=self.reason,
            updated_at=self._consumer.wall(),
            bytes=self.bytes + (b.bytes if b else 0),
        )


class StreamConsumer:
    """The consumer side of paid streams. Start it with ``await nursery.start(consumer.run)``."""

    def __init__(
        self,
        identity: Identity,
        config: StreamsSection,
        store: Store,
        metrics: Metrics,
        peers: PeerManager,
        dht: DhtService,
        payments: Payments,
        wallet: Wallet,
        *,
        wall_clock: Callable[[], float] = wall_time,
    ) -> None:
        self.me = identity.public_key_hex
        self.wall = wall_clock
        self.config = config
        self.store = store
        self.peers = peers
        self.dht = dht
        self.payments = payments
        self.wallet = wallet
        self.m_packets, self.m_payments, _ = stream_metrics(metrics)
        # the children counted per payment or batch, looked up once
        self.m_paid, self.m_received = self.m_payments.labels("consumer", "paid"), self.m_packets.labels("received")
        self._subs: dict[tuple[str, str], Subscription] = {}
        self._recent: LruMap[str, dict[str, Any]] = LruMap(_RECENT)  # stream id -> final summary
        self._nursery: trio.Nursery | None = None
        peers.on_notice("stream.packets", self._on_packets)
        peers.on_notice("stream.paused", self._on_paused)
        peers.on_notice("stream.closed", self._on_closed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def subscriptions(self) -> list[dict[str, Any]]:
        """The running subscriptions, then the recently ended ones (their final summaries)."""
        return [s.summary() for s in self._subs.values()] + list(self._recent.values())

    async def stop(self, stream_id: str) -> dict[str, Any]:
        """Stop the subscription to ``stream_id`` and return its final summary (or the summary of the one that
        ended last).

        Raises:
            NotFound: no subscription to that stream here.
        """
        for (_, sid), sub in list(self._subs.items()):
            if sid == stream_id:
                sub.stop("stopped")
                with trio.move_on_after(5):
                    await sub.wait_finished()
                return sub.summary()
        if stream_id in self._recent:
            return dict(self._recent[stream_id])
        raise NotFound(f"no subscription to {stream_id!r} here")

    async def subscribe(
        self,
        stream_id: str,
        *,
        window: int = 10,
        max_price: int | None = None,
        duration: float | None = None,
        producer: str | None = None,
        prepay: int | None = None,
        pay_live_ahead: bool | None = None,
    ) -> Subscription:
        """Find the stream, subscribe, and start paying and receiving (see the module doc). ``prepay``: how
        many packets may be paid ahead (default ``streams.pay_ahead``; at least two windows). ``pay_live_ahead``:
        pay a live stream's next window before it exists (default ``streams.pay_live_ahead``; see
        ``protocol/streams.py``, invariant 3).

        Raises:
            BadRequest: bad arguments. NotFound: no producer advertises the stream, or its producer closed it.
                Conflict: already subscribed. DialError, PeerTimeout: the producer cannot be reached. PaymentError:
                the price is above ``max_price``. OverlayError: the producer refused (its error).
        """
        stream_id = check_stream_id(stream_id)
        window = check_window(window)
        if max_price is not None and (not isinstance(max_price, int) or max_price < 0):
            raise BadRequest("max price must be a non-negative number of satoshis")
        if duration is not None and not 0 < duration <= 86_400 * 365:
            raise BadRequest("duration must be a positive number of seconds")
        if prepay is not None and (not isinstance(prepay, int) or isinstance(prepay, bool) or prepay < 1):
            raise BadRequest("prepay must be a positive number of packets")
        if self._nursery is None:
            raise ConnectionLost("the streams service is not running")
        key, addresses = await self._find(stream_id, producer)
        if (key, stream_id) in self._subs:
            raise Conflict(f"already subscribed to {stream_id!r}: stop that subscription first")
        sub = Subscription(
            self,
            stream_id,
            key,
            addresses,
            window=window,
            ahead=ahead_windows(window, self.config.pay_ahead if prepay is None else prepay),
            max_price=max_price,
            duration=duration,
            live_ahead=self.config.pay_live_ahead if pay_live_ahead is None else pay_live_ahead,
        )
        rows = await self.store.streams.subs(stream_id, role="consumer")
        sub.before = next((r for r in rows if r.peer == key), None)
        link = await self._link_to(stream_id, key, addresses)
        await sub._subscribe(link)
        self._subs[(key, stream_id)] = sub
        self._nursery.start_soon(sub.run)
        return sub

    async def _find(self, stream_id: str, producer: str | None) -> tuple[str, list[str]]:
        records = await self.dht.get(dht_key("stream", stream_id), tombstones=True)
        best: tuple[int, str, list[str]] | None = None
        ended: str | None = None  # a producer that revoked its record: the stream was closed
        for record in records:
            key = record.publisher.hex()
            if producer is not None and key != producer.lower():
                continue
            if record.is_tombstone:
                ended = key
                continue
            try:
                value = json.loads(record.value)
                swarm = value["swarm"]
                if not isinstance(swarm, list) or not all(isinstance(a, str) and len(a) < 300 for a in swarm):
                    continue
            except (ValueError, KeyError, TypeError):
                continue
            if best is None or record.seq > best[0]:
                best = (record.seq, key, swarm[:_MAX_ADDRESSES])
        if best is None:
            if ended is not None:
                raise NotFound(f"stream {stream_id!r} has ended: its producer {ended[:16]}... closed it")
            if producer is not None:
                return producer.lower(), []  # a named producer is reached by its key alone (PeerManager.reach)
            raise NotFound(f"no producer advertises stream {stream_id!r} in the DHT")
        return best[1], best[2]

    async def _link_to(self, stream_id: str, key: str, addresses: list[str]) -> PeerLink:
        """The link to the producer: the live one, else dialled by its key (the stream record's addresses first,
        read again since they may have changed)."""
        if self.peers.link(key) is None:
            try:
                _, addresses = await self._find(stream_id, key)
            except NotFound:
                pass
        return await self.peers.reach(key, hints=addresses)

    async def _finish(self, sub: Subscription) -> None:
        self._subs.pop((sub.producer, sub.stream_id), None)
        self._recent.put(sub.stream_id, sub.summary())
        link = sub.link
        if link is not None and not link.closed and sub.reason not in ("closed", "payment_timeout", "lagging"):
            try:
                await link.notify("stream.unsubscribe", {"stream_id": sub.stream_id})
            except ConnectionLost:
                pass
        await self.store.streams.save([], [sub.row()])
        logger.info("stream %s: subscription ended (%s): %s", sub.stream_id, sub.reason, sub.summary())

    def _sub(self, link: PeerLink, body: dict[str, Any]) -> Subscription | None:
        stream_id = body.get("stream_id")
        return self._subs.get((link.peer_key, stream_id)) if isinstance(stream_id, str) else None

    async def _on_packets(self, link: PeerLink, body: dict[str, Any]) -> None:
        sub = self._sub(link, body)
        if sub is None:
            return
        try:
            batch = PacketBatch.from_wire(
                body, max_packet=self.config.max_packet, max_batch=max(self.config.batch_packets, 100_000)
            )
        except RemoteProtocolError as exc:
            sub.error = exc
            sub.stop("protocol_error")
            return
        await sub.on_packets(batch)

    async def _on_paused(self, link: PeerLink, body: dict[str, Any]) -> None:
        sub = self._sub(link, body)
        if sub is not None:
            sub.on_paused(body.get("head"), body.get("paid"))

    async def _on_closed(self, link: PeerLink, body: dict[str, Any]) -> None:
        sub = self._sub(link, body)
        reason = body.get("reason")
        if sub is not None:
            sub.on_closed(reason if isinstance(reason, str) and len(reason) < 64 else "closed")
