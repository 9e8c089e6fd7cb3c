"""Paid live streams as a sans-IO state machine: the credit both sides keep for one subscription, the packet
batches on the wire, and the checks on quotes and receipts (docs/design.md, Paid streams). Pure: no I/O, no clocks
(callers pass trio time as ``now``).

Exchange (over one authenticated peer link; the consumer's identity is the link's key)::

    consumer                                   producer
    stream.subscribe {stream_id, window W, ahead A, from_seq?}  ->
                                           <-  {terms, quotes (A open, W units each), ahead (granted),
                                                start_seq, head, paid, packets, holds}
    stream.pay {stream_id, payments: [...],    ->    (BRC-29 payments of open quotes, W units each; a payment
                hold?}                                names its quote by quote_id; "payment": one, the same;
                                                      hold: seconds it may wait for its window, invariant 8)
                                           <-  {results: [{receipt, quote} | {error}], credit}
                                                (receipt signed with the key id stream:<id>; the next window's
                                                quote unsigned, signed by the receipt through its digest)
                                           <-  notice stream.packets {stream_id, first, payloads, head}
                                           <-  notice stream.paused {stream_id, reason, head, credit}
                                           <-  notice stream.closed {stream_id, reason}
    notice stream.unsubscribe {stream_id}      ->

Invariants:

1. Credit is counted in satoshis on both sides: ``credit = paid - charged``. A per-packet stream charges
   ``rate`` for each packet sequence number delivered for the first time; a per-second stream charges
   ``rate`` per second elapsed while the subscription is active (not paused). A packet is sent only while
   ``credit > 0`` (per-packet: ``credit >= rate``), so every packet delivered is paid for before it leaves.
2. A payment covers one window of ``W`` units (``W * rate`` satoshis). A subscription may be paid ``A``
   windows ahead (``ahead``, at least 2; agreed at subscribe, :func:`ahead_windows`): a payment is accepted
   only while the credit plus the payments still being checked is at most ``A - 1`` windows
   (:meth:`ProducerCredit.check_payment`), so credit never exceeds ``A * W``. With ``A = 2`` (every window
   of ``W >= pay_ahead`` packets) one window is paid ahead and one payment is in flight while a window is
   consumed; a small window (``W = 1``) gets a deeper pipeline, up to ``A - 1`` payments in flight at once,
   so that the stream runs at ``A - 1`` windows per payment round trip instead of one.
3. The consumer pays when its credit plus its payments in flight is at most ``A - 1`` windows **and** the
   producer has more packets than that covers (``head`` is announced with every batch and pause). A stream
   whose length is a multiple of ``W`` is therefore paid exactly: ``paid == packets * rate``. Unless the
   consumer pays live streams ahead (``live_ahead``): on a live stream (the last batch moved the head and
   brought us up to it: the producer pushes as we read; or the subscription started at the head) it then pays
   the next window once less than half a window of what it paid is left, before any packet of it exists, so
   that the window's first packet does not wait for a payment round trip (a pause, then the payment). A
   producer that holds payments (invariant 8; it says ``holds`` at subscribe) is always paid so: the stream
   stays paid exactly. With another, when a live stream stops, such a consumer has paid for at most one window
   it did not get.
4. Sequence numbers are contiguous per stream, from 0. The producer sends a subscriber the packets from its
   cursor on, in order; the consumer accepts a batch only if it starts exactly at the next sequence number it
   expects (a gap, a repeat or a reorder is a protocol error and grants nothing).
5. A packet below the subscriber's ``charged_through`` was paid already: after a reconnect it is sent again
   for free (a consumer never pays twice for a sequence number). On resume the producer moves
   ``charged_through`` up to the consumer's ``from_seq`` (the consumer holds everything below it).
6. With no credit the producer sends ``stream.paused`` (reason ``payment_required``) once and stops; a payment
   resumes it; after ``grace`` seconds without one it closes the subscription (``payment_timeout``).
7. A receipt counts only if it carries the producer's signature and acknowledges the quote that was paid
   with the transaction that was sent; anything else is a protocol error and adds no credit. The quote that
   comes with it counts only if the receipt names its digest (``next_quote``): one signature per window.
8. A payment sent with ``hold`` that comes when the credit and the payments being checked already cover every
   packet pushed (per-packet: it pays for a window none of whose packets exists yet) is checked and held,
   unrecorded, for at most ``min(hold, HOLD_SECONDS)`` seconds: when a packet is pushed that the credit does not
   cover, the producer takes it (commit, receipt, then the packet: :class:`Release` instead of a pause); when
   the hold runs out, the subscription detaches or the stream ends, it is refused as paid too early and nothing
   was taken (the consumer gets its coins back). So a consumer pays the next window of a live stream before it
   exists, its first packet waits for a commit instead of a payment round trip, and the consumer never pays for
   a window that is not begun. While payments are being checked (held or not) a per-packet producer waits for
   them instead of pausing.

Theory of operation: the service keeps one :class:`ProducerCredit` per (stream, subscriber) and calls
:meth:`ProducerCredit.plan` whenever a packet was pushed, a payment was accepted, or the deadline it reported
passed; it carries out the returned :data:`ProducerAction` values. The consumer keeps a :class:`ConsumerCredit`
and feeds it batches (:meth:`ConsumerCredit.on_packets`), receipts and pauses; :meth:`ConsumerCredit.wants_payment`
says when to pay the next window.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from overlay_node.errors import BadRequest, InvalidPayment, PaidTooEarly, PaymentError, RemoteProtocolError
from overlay_node.protocol.payments import MAX_SATOSHIS, Quote, Receipt

__all__ = [
    "HOLD_SECONDS",
    "MAX_AHEAD",
    "PAID_TOO_EARLY",
    "PRICING_MODELS",
    "Close",
    "ConsumerCredit",
    "Packet",
    "PacketBatch",
    "Pause",
    "PricingModel",
    "ProducerAction",
    "ProducerCredit",
    "Release",
    "SendPackets",
    "StreamTerms",
    "ahead_windows",
    "check_payload",
    "check_stream_id",
    "check_window",
    "stream_resource",
]

PricingModel = Literal["per-packet", "per-second"]
PRICING_MODELS: Final[tuple[str, ...]] = ("per-packet", "per-second")
#: the largest window a subscriber may ask for
MAX_WINDOW: Final = 1_000_000
_STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MAX_TITLE: Final = 200
_MAX_TAGS: Final = 16
#: the most windows a subscription may be paid ahead
MAX_AHEAD: Final = 256
#: the words of the refusal of a payment that came before the credit was used (the consumer waits, then pays)
PAID_TOO_EARLY: Final = "pay when it is used"
#: the longest a producer holds a payment for a window that has not begun (invariant 8)
HOLD_SECONDS: Final = 5.0


def ahead_windows(window: int, packets: int) -> int:
    """How many windows of ``window`` units to pay ahead so that at least ``packets`` units are covered:
    at least 2 (one consumed while the next is paid), at most :data:`MAX_AHEAD`."""
    return max(2, min(MAX_AHEAD, -(-packets // window)))


def check_stream_id(value: object) -> str:
    """A stream id: 1-128 characters of ``[A-Za-z0-9._:-]``, starting with a letter or digit.

    Raises:
        BadRequest: otherwise.
    """
    if not isinstance(value, str) or not _STREAM_ID.fullmatch(value):
        raise BadRequest("stream id must be 1-128 characters of A-Z a-z 0-9 . _ : - (starting with a letter or digit)")
    return value


def check_window(value: object) -> int:
    """An auto-pay interval W (units per payment), 1..MAX_WINDOW.

    Raises:
        BadRequest: otherwise.
    """
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_WINDOW:
        raise BadRequest(f"window (auto-pay interval) must be an integer in [1, {MAX_WINDOW}]")
    return value


def check_payload(value: object, max_bytes: int) -> str:
    """A packet payload: text of at most ``max_bytes`` UTF-8 bytes.

    Raises:
        BadRequest: not text, or too large.
    """
    if not isinstance(value, str):
        raise BadRequest("a packet payload must be text")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise BadRequest(f"packet of {size} bytes is over the limit of {max_bytes} bytes")
    return value


def stream_resource(stream_id: str) -> str:
    """The payment resource of a stream's windows (what its quotes and receipts name)."""
    return f"stream:{stream_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamTerms:
    """What a producer sells: stream id, producer key, pricing model and rate (satoshis per unit)."""

    stream_id: str
    producer: str
    pricing_model: PricingModel
    rate: int
    title: str = ""
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_stream_id(self.stream_id)
        if self.pricing_model not in PRICING_MODELS:
            raise BadRequest(f"pricing model must be one of {', '.join(PRICING_MODELS)}")
        if not isinstance(self.rate, int) or isinstance(self.rate, bool) or not 1 <= self.rate <= MAX_SATOSHIS:
            raise BadRequest("rate must be a positive integer number of satoshis")
        if len(self.title) > _MAX_TITLE:
            raise BadRequest(f"title is longer than {_MAX_TITLE} characters")
        if len(self.tags) > _MAX_TAGS or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in self.tags):
            raise BadRequest(f"at most {_MAX_TAGS} tags of 1-64 characters")

    def window_price(self, window: int) -> int:
        """The price of one window of ``window`` units."""
        return window * self.rate

    def to_wire(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "producer": self.producer,
            "pricing_model": self.pricing_model,
            "rate": self.rate,
            "title": self.title,
            "tags": list(self.tags),
        }

    @classmethod
    def from_wire(cls, body: object) -> StreamTerms:
        """Parse terms.

        Raises:
            BadRequest: a missing or malformed field.
        """
        if not isinstance(body, dict):
            raise BadRequest("stream terms must be a map")
        title, tags, producer = body.get("title", ""), body.get("tags", []), body.get("producer")
        if not isinstance(title, str) or not isinstance(tags, list) or not isinstance(producer, str):
            raise BadRequest("stream terms: bad title, tags or producer")
        model = body.get("pricing_model")
        if model not in PRICING_MODELS:
            raise BadRequest(f"pricing model must be one of {', '.join(PRICING_MODELS)}")
        return cls(
            stream_id=check_stream_id(body.get("stream_id")),
            producer=producer,
            pricing_model=model,
            rate=body.get("rate"),  # type: ignore[arg-type]  # checked in __post_init__
            title=title,
            tags=tuple(tags),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Packet:
    """One packet of a stream: its sequence number and payload."""

    seq: int
    payload: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PacketBatch:
    """Consecutive packets ``first .. first+len(payloads)-1`` and the stream head (next seq to be pushed)."""

    stream_id: str
    first: int
    payloads: tuple[str, ...]
    head: int

    def to_wire(self) -> dict[str, Any]:
        return {"stream_id": self.stream_id, "first": self.first, "payloads": list(self.payloads), "head": self.head}

    @classmethod
    def from_wire(cls, body: object, *, max_packet: int, max_batch: int) -> PacketBatch:
        """Parse a ``stream.packets`` notice.

        Raises:
            RemoteProtocolError: malformed, oversized packet, too many packets, or a head before the batch end.
        """
        try:
            if not isinstance(body, dict):
                raise BadRequest("packet batch must be a map")
            stream_id = check_stream_id(body.get("stream_id"))
            first, head, payloads = body.get("first"), body.get("head"), body.get("payloads")
            if not isinstance(first, int) or isinstance(first, bool) or first < 0:
                raise BadRequest("'first' must be a sequence number")
            if not isinstance(head, int) or isinstance(head, bool) or head < 0:
                raise BadRequest("'head' must be a sequence number")
            if not isinstance(payloads, list) or not 1 <= len(payloads) <= max_batch:
                raise BadRequest(f"'payloads' must be a list of 1-{max_batch} packets")
            checked = tuple(check_payload(p, max_packet) for p in payloads)
            if head < first + len(checked):
                raise BadRequest("'head' is before the end of the batch")
        except BadRequest as exc:
            raise RemoteProtocolError(f"bad packet batch: {exc}", reason="bad_packet") from None
        return cls(stream_id=stream_id, first=first, payloads=checked, head=head)

    def packets(self) -> list[Packet]:
        return [Packet(seq=self.first + i, payload=p) for i, p in enumerate(self.payloads)]


# -- producer ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SendPackets:
    """Send the packets ``first .. first+count-1`` (already charged; ``free`` of them were paid before)."""

    first: int
    count: int
    free: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause:
    """Tell the subscriber the stream is paused until it pays (``reason``: ``payment_required``)."""

    reason: str
    credit: int
    paid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    """End the subscription with ``reason`` (``payment_timeout``, ``lagging``, ``end``)."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """Take the held payments now (invariant 8): a packet waits that the credit does not cover."""


ProducerAction = SendPackets | Pause | Close | Release


class ProducerCredit:
    """The producer's view of one subscription (see the module invariants).

    Args:
        pricing_model, rate: the stream's terms.
        window: the subscriber's W.
        ahead: how many windows may be paid ahead (invariant 2).
        cursor: the next sequence number to send.
        charged_through: packets below it were charged already (resent for free).
        paid: satoshis accepted so far for this subscriber (from the durable payments).
        packets: packets charged so far.
        grace: seconds a paused subscription may wait for a payment before it is closed.
        now: trio time.
    """

    def __init__(
        self,
        *,
        pricing_model: PricingModel,
        rate: int,
        window: int,
        ahead: int = 2,
        cursor: int,
        charged_through: int,
        paid: int = 0,
        packets: int = 0,
        grace: float,
        now: float,
    ) -> None:
        self.pricing_model: PricingModel = pricing_model
        self.rate = rate
        self.window = check_window(window)
        self.ahead = ahead
        self.pending = 0  # satoshis of payments being checked (the held ones included)
        self.held = 0  # payments held until their window begins (invariant 8)
        self.cursor = cursor
        self.charged_through = max(charged_through, 0)
        self.paid = paid
        self.packets = packets
        self.seconds = 0.0  # active seconds charged (per-second)
        self.grace = grace
        self.state: Literal["active", "paused", "closed"] = "active"
        self.paused_at = 0.0
        self._last = now

    # -- reading -----------------------------------------------------------------------------------------------

    @property
    def charged(self) -> int:
        if self.pricing_model == "per-second":
            return math.ceil(self.seconds * self.rate - 1e-9)
        return self.packets * self.rate

    @property
    def credit(self) -> int:
        return self.paid - self.charged

    @property
    def window_price(self) -> int:
        return self.window * self.rate

    def deadline(self) -> float:
        """The trio time by which :meth:`plan` must run again even if nothing happens (inf: no need)."""
        if self.state == "paused":
            return self.paused_at + self.grace
        if self.state == "active" and self.pricing_model == "per-second" and self.credit > 0:
            return self._last + self.credit / self.rate
        return math.inf

    # -- events ------------------------------------------------------------------------------------------------

    def resume_at(self, from_seq: int, *, oldest: int, head: int, held: bool = True) -> int:
        """A (re)subscription asks to start at ``from_seq``: the consumer holds everything below it, so nothing
        below it is charged again, and a crash that lost our count is repaired from it (only when ``held``: the
        consumer named ``from_seq`` itself; a start we chose, such as the oldest packet kept, says nothing of what
        it received, and packets it never got are never charged). Returns the sequence number sending starts at
        (``oldest`` if older packets are gone).

        Raises:
            BadRequest: ``from_seq`` is beyond the stream head.
        """
        if not isinstance(from_seq, int) or isinstance(from_seq, bool) or from_seq < 0:
            raise BadRequest("'from_seq' must be a sequence number")
        if from_seq > head:
            raise BadRequest(f"from_seq {from_seq} is beyond the stream head {head}")
        if held and from_seq > self.charged_through and self.pricing_model == "per-packet":
            self.packets += from_seq - self.charged_through
        start = max(from_seq, oldest)
        self.charged_through = max(self.charged_through, start)
        self.cursor = start
        if self.state == "closed":
            self.state = "active"
        return start

    def holds(self, head: int) -> bool:
        """Whether a payment that comes now, asking to be held, is held (invariant 8): a per-packet stream whose
        credit and payments being checked cover every packet pushed (``head``: the next sequence number)."""
        if self.pricing_model != "per-packet" or self.state == "closed":
            return False
        unsent = head - max(self.cursor, self.charged_through)
        return unsent * self.rate <= self.credit + self.pending

    def check_payment(self, amount: int) -> None:
        """Whether a payment of ``amount`` may be checked now; the caller adds it to :attr:`pending` while it
        checks it, and takes it off after.

        Raises:
            PaymentError: the subscription is closed, or the credit and the payments being checked are more
                than ``ahead - 1`` windows (paid too early).
        """
        if self.state == "closed":
            raise PaymentError("the subscription is closed: subscribe again")
        limit = (self.ahead - 1) * self.window_price
        if self.credit + self.pending > limit:
            raise PaidTooEarly(
                f"credit {self.credit} and {self.pending} being paid are more than {self.ahead - 1} window(s) "
                f"({limit} satoshis): {PAID_TOO_EARLY}"
            )
        if amount != self.window_price:
            raise InvalidPayment(f"a window costs {self.window_price} satoshis, not {amount}")

    def on_paid(self, amount: int, now: float) -> None:
        """A payment of ``amount`` satoshis was accepted (durably): add credit, leave a pause."""
        self._charge_time(now)
        self.paid += amount
        if self.state == "paused":
            self.state = "active"
            self._last = now

    def detach(self, now: float) -> None:
        """The subscriber's link is gone: stop charging time until it resumes."""
        self._charge_time(now)
        self.state = "closed"

    def plan(self, *, head: int, oldest: int, closed: bool, now: float, max_batch: int) -> list[ProducerAction]:
        """What to do now, given the stream head (next seq to push), the oldest buffered seq, whether the
        producer closed the stream, and at most ``max_batch`` packets per batch."""
        if self.state == "closed":
            return []
        self._charge_time(now)
        if self.cursor < oldest:
            self.state = "closed"
            return [Close(reason="lagging")]
        available = head - self.cursor
        if available <= 0:
            if closed:
                self.state = "closed"
                return [Close(reason="end")]
            return self._maybe_close_paused(now)
        count = min(available, max_batch)
        free = max(0, min(self.charged_through - self.cursor, count))
        paid_count = count - free
        if paid_count:
            if self.pricing_model == "per-packet":
                paid_count = min(paid_count, max(self.credit, 0) // self.rate)
            elif self.credit <= 0:
                paid_count = 0
        total = free + paid_count
        if total == 0:
            if self.held:
                return [Release()]  # the next window is paid already, held until now (invariant 8)
            if self.pending and self.pricing_model == "per-packet":
                return []  # a payment is being checked: its outcome comes before any pause (time is not sold meanwhile)
            if self.state == "active":
                self.state = "paused"
                self.paused_at = now
                return [Pause(reason="payment_required", credit=self.credit, paid=self.paid)]
            return self._maybe_close_paused(now)
        first = self.cursor
        self.cursor += total
        if paid_count and self.pricing_model == "per-packet":
            self.packets += paid_count
        elif paid_count:
            self.packets += paid_count  # counted, charged by time
        self.charged_through = max(self.charged_through, self.cursor)
        if self.state == "paused":
            self.state = "active"
        return [SendPackets(first=first, count=total, free=free)]

    def _maybe_close_paused(self, now: float) -> list[ProducerAction]:
        if self.state == "paused" and now >= self.paused_at + self.grace:
            self.state = "closed"
            return [Close(reason="payment_timeout")]
        return []

    def _charge_time(self, now: float) -> None:
        if self.pricing_model == "per-second" and self.state == "active":
            self.seconds += max(0.0, now - self._last)
        self._last = now


# -- consumer ------------------------------------------------------------------------------------------------


class ConsumerCredit:
    """The consumer's view of one subscription (see the module invariants).

    Args:
        terms: the producer's terms (from the subscribe answer).
        me: this node's identity key (the payer of every quote).
        window: W.
        next_seq: the next sequence number expected.
        max_price: the highest rate (satoshis per unit) this consumer pays, or None.
        ahead: how many windows may be paid ahead (the producer's answer; invariant 2).
        live_ahead: pay a live stream's next window before it exists (invariant 3).
    """

    def __init__(
        self,
        *,
        terms: StreamTerms,
        me: str,
        window: int,
        next_seq: int,
        max_price: int | None,
        ahead: int = 2,
        live_ahead: bool = False,
    ) -> None:
        self.terms = terms
        self.me = me
        self.window = check_window(window)
        self.ahead = ahead
        self.next_seq = next_seq
        self.max_price = max_price
        self.paid = 0
        self.payments = 0
        self.packets = 0
        self.seconds = 0.0
        self.head = next_seq
        self.in_flight = 0  # payments sent, not yet answered
        self.paused = False
        self.live_ahead = live_ahead
        # the last batch moved the head and brought us up to it, or the subscription started at the head (invariant 3)
        self.live = False

    @property
    def charged(self) -> int:
        if self.terms.pricing_model == "per-second":
            return math.ceil(self.seconds * self.terms.rate - 1e-9)
        return self.packets * self.terms.rate

    @property
    def credit(self) -> int:
        return self.paid - self.charged

    @property
    def window_price(self) -> int:
        return self.terms.window_price(self.window)

    def check_price(self) -> None:
        """Raises PaymentError when the rate is above ``max_price``."""
        if self.max_price is not None and self.terms.rate > self.max_price:
            raise PaymentError(
                f"the stream costs {self.terms.rate} satoshis per unit, above --max-price {self.max_price}"
            )

    def check_quote(self, quote: Quote, now_ms: int, *, receipt: Receipt | None = None) -> Quote:
        """Check a window quote from the producer. ``receipt``: the checked receipt the quote came with, which
        signs it by its digest (the quote then has no signature of its own: a window costs the producer one
        signature and the consumer one check); a receipt that names no next quote leaves the quote to carry its
        own signature.

        Raises:
            RemoteProtocolError: not signed by the producer, not for us, this stream or one window.
            PaymentError: the quoted price per unit is above ``max_price``.
        """
        problem = None
        if receipt is not None and receipt.next_quote:
            if not receipt.signs_quote(quote):
                problem = "it is not the quote the receipt signs"
        elif not quote.verify():
            problem = "it is not signed by the producer"
        # however it is signed, it must be the producer's quote, to us, for this stream, and current
        problem = problem or self._quote_problem(quote, now_ms)
        if problem is not None:
            raise RemoteProtocolError(f"the producer's window quote is invalid: {problem}", reason="bad_quote")
        if self.max_price is not None and quote.amount > self.max_price * self.window:
            raise PaymentError(
                f"the window price {quote.amount} is above --max-price x W = {self.max_price * self.window}"
            )
        if quote.amount != self.window_price:
            raise RemoteProtocolError(
                f"the window quote asks {quote.amount} satoshis, W x rate is {self.window_price}", reason="bad_quote"
            )
        return quote

    def _quote_problem(self, quote: Quote, now_ms: int) -> str | None:
        if quote.payee != self.terms.producer or quote.payer != self.me:
            return "it names another payee or payer"
        if quote.resource != stream_resource(self.terms.stream_id):
            return "it is for another stream"
        if quote.expired(now_ms):
            return "it has expired"
        return None

    def wants_payment(self) -> bool:
        """Whether to pay the next window now (invariant 3)."""
        if self.in_flight >= self.ahead - 1:
            return False
        if self.paused and not self.in_flight:
            return True
        prepaid = self.credit + self.in_flight * self.window_price
        if prepaid > (self.ahead - 1) * self.window_price:
            return False
        if self.terms.pricing_model == "per-second":
            return True
        if self.head * self.terms.rate > (self.next_seq * self.terms.rate + prepaid):
            return True
        # a live stream: the next window before its first packet exists, once less than half of one is left
        return self.live_ahead and self.live and 2 * prepaid <= self.window_price

    def on_packets(self, batch: PacketBatch) -> list[Packet]:
        """Accept a batch; returns its packets.

        Raises:
            RemoteProtocolError: the batch is for another stream or does not start at the next sequence number.
        """
        if batch.stream_id != self.terms.stream_id:
            raise RemoteProtocolError("packets of another stream", reason="bad_packet")
        if batch.first != self.next_seq:
            raise RemoteProtocolError(
                f"packet sequence {batch.first} where {self.next_seq} was expected", reason="bad_sequence"
            )
        n = len(batch.payloads)
        self.next_seq += n
        self.packets += n
        self.live = batch.head > self.head and self.next_seq >= batch.head
        self.head = max(self.head, batch.head)
        self.paused = False
        return batch.packets()

    def on_time(self, seconds: float) -> None:
        """Per-second streams: ``seconds`` of streaming elapsed (an estimate of the producer's charge)."""
        if self.terms.pricing_model == "per-second" and not self.paused:
            self.seconds += max(0.0, seconds)

    def on_pause(self, head: int, paid: int) -> None:
        """The producer paused for want of credit when it had ``paid`` satoshis from us; a pause sent before
        it saw our latest payment is stale and ignored."""
        self.head = max(self.head, head)
        if paid >= self.paid:
            self.paused = True

    def begin_payment(self) -> None:
        self.in_flight += 1

    def payment_failed(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def on_receipt(self, receipt: Receipt, quote: Quote, txid: str, *, in_flight: bool = True) -> None:
        """A receipt for the window paid with ``quote`` by ``txid``; ``in_flight=False`` for a payment no longer
        counted in flight (sent before a link dropped, its receipt collected after the resume).

        Raises:
            RemoteProtocolError: the receipt is not the producer's, or does not acknowledge this payment
                (no credit is added).
        """
        if in_flight:
            self.in_flight = max(0, self.in_flight - 1)
        if not (receipt.verify() and receipt.matches(quote, txid) and receipt.payee == self.terms.producer):
            raise RemoteProtocolError(
                "the producer's receipt is invalid (forged or for another payment)", reason="bad_receipt"
            )
        self.paid += receipt.amount
        self.payments += 1
        self.paused = False
