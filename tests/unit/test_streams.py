"""The paid-stream state machines (protocol/streams.py): credit, pauses, resumes, per-second pricing, and the
consumer's checks on batches, quotes and receipts."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest, InvalidPayment, PaymentError, RemoteProtocolError
from overlay_node.protocol.payments import Quote, Receipt
from overlay_node.protocol.streams import (
    MAX_AHEAD,
    Close,
    ConsumerCredit,
    PacketBatch,
    Pause,
    ProducerCredit,
    Release,
    SendPackets,
    StreamTerms,
    ahead_windows,
    stream_resource,
)

PRODUCER, CONSUMER, OTHER = Identity.generate(), Identity.generate(), Identity.generate()
NOW_MS = 1_700_000_000_000


def producer(
    window: int = 10, rate: int = 2, model: str = "per-packet", grace: float = 5.0, ahead: int = 2
) -> ProducerCredit:
    return ProducerCredit(
        pricing_model=model,  # type: ignore[arg-type]
        rate=rate,
        window=window,
        ahead=ahead,
        cursor=0,
        charged_through=0,
        grace=grace,
        now=0.0,
    )


def terms(rate: int = 2, model: str = "per-packet") -> StreamTerms:
    return StreamTerms(stream_id="s", producer=PRODUCER.public_key_hex, pricing_model=model, rate=rate)  # type: ignore[arg-type]


def quote(amount: int = 20, resource: str = "stream:s", signer: Identity = PRODUCER) -> Quote:
    return Quote.issue(
        signer, payer=CONSUMER.public_key_hex, resource=resource, amount=amount, now_ms=NOW_MS, ttl_ms=60_000
    )


def test_no_packet_leaves_without_credit_then_pause_then_close_after_grace() -> None:
    p = producer(grace=5.0)
    assert p.plan(head=100, oldest=0, closed=False, now=1.0, max_batch=50) == [
        Pause(reason="payment_required", credit=0, paid=0)
    ]
    assert p.plan(head=100, oldest=0, closed=False, now=3.0, max_batch=50) == []
    assert p.deadline() == 6.0
    assert p.plan(head=100, oldest=0, closed=False, now=6.0, max_batch=50) == [Close(reason="payment_timeout")]
    with pytest.raises(PaymentError, match="closed"):
        p.check_payment(20)


def test_a_window_buys_w_packets_and_credit_never_exceeds_two_windows() -> None:
    p = producer(window=10, rate=2)
    p.check_payment(20)
    p.on_paid(20, 0.0)
    p.check_payment(20)  # one window in credit: the next may be paid ahead
    p.on_paid(20, 0.0)
    with pytest.raises(PaymentError, match="pay when it is used"):
        p.check_payment(20)
    with pytest.raises(InvalidPayment, match="a window costs 20"):
        producer().check_payment(19)
    assert p.plan(head=100, oldest=0, closed=False, now=1.0, max_batch=15) == [SendPackets(first=0, count=15, free=0)]
    assert p.plan(head=100, oldest=0, closed=False, now=1.0, max_batch=15) == [SendPackets(first=15, count=5, free=0)]
    assert p.packets == 20
    assert p.credit == 0
    assert isinstance(p.plan(head=100, oldest=0, closed=False, now=1.0, max_batch=15)[0], Pause)
    p.on_paid(20, 2.0)
    assert p.plan(head=100, oldest=0, closed=False, now=2.0, max_batch=50) == [SendPackets(first=20, count=10, free=0)]


def test_a_payment_for_a_window_not_begun_is_held_and_taken_when_a_packet_needs_it() -> None:
    # invariant 8: the credit covers every packet pushed, so a payment asking to be held waits for its window
    p = producer(window=10, rate=2, ahead=3)
    p.on_paid(20, 0.0)
    assert p.plan(head=5, oldest=0, closed=False, now=0.0, max_batch=50) == [SendPackets(first=0, count=5, free=0)]
    assert p.holds(head=5)  # 5 packets of credit left, none pushed beyond them
    p.pending += 20
    p.held = 1
    assert p.plan(head=10, oldest=0, closed=False, now=0.0, max_batch=50) == [SendPackets(first=5, count=5, free=0)]
    # packet 10 is the next window's first: the held payment is taken instead of a pause
    assert p.plan(head=11, oldest=0, closed=False, now=0.0, max_batch=50) == [Release()]
    assert p.state == "active"
    p.held = 0  # taken: being checked and committed, no pause meanwhile
    assert p.plan(head=11, oldest=0, closed=False, now=0.0, max_batch=50) == []
    p.pending -= 20
    p.on_paid(20, 0.0)
    assert p.plan(head=11, oldest=0, closed=False, now=0.0, max_batch=50) == [SendPackets(first=10, count=1, free=0)]


def test_a_payment_a_pushed_packet_waits_for_is_never_held() -> None:
    p = producer(window=10, rate=2, ahead=3)
    assert not p.holds(head=1)  # packet 0 waits for it
    p.on_paid(20, 0.0)
    assert not p.holds(head=11)  # packet 10 does
    p.pending += 20
    assert p.holds(head=20)  # credit and the payment being checked cover all twenty
    assert not p.holds(head=21)
    # a refused payment (nothing held, nothing pending) leaves the pause to come
    q = producer(window=10, rate=2)
    assert q.plan(head=1, oldest=0, closed=False, now=0.0, max_batch=50)[0] == Pause(
        reason="payment_required", credit=0, paid=0
    )
    # per-second streams charge time as it passes: nothing is held
    assert not producer(model="per-second").holds(head=0)


def test_resume_resends_paid_packets_free_and_repairs_lost_counts() -> None:
    p = producer(window=10, rate=1)
    p.on_paid(10, 0.0)
    p.plan(head=10, oldest=0, closed=False, now=0.0, max_batch=100)
    p.detach(1.0)
    # the consumer got only 6 of the 10 before the link dropped: 6..9 are resent free
    assert p.resume_at(6, oldest=0, head=10) == 6
    assert p.plan(head=10, oldest=0, closed=False, now=1.0, max_batch=100) == [SendPackets(first=6, count=4, free=4)]
    assert p.packets == 10
    assert p.paid == 10
    # a crash lost our count, the consumer holds 0..14: they are charged once, here
    q = producer(window=10, rate=1)
    q.paid = 20
    q.resume_at(15, oldest=0, head=20)
    assert q.packets == 15
    assert q.credit == 5
    with pytest.raises(BadRequest, match="beyond the stream head"):
        q.resume_at(21, oldest=0, head=20)


def test_a_start_the_producer_chose_charges_nothing_it_did_not_send() -> None:
    # after a producer restart the stream's oldest packet is far past what this subscriber was charged for (the
    # restart reserves a gap of sequence numbers): a fresh subscribe that names no from_seq starts at the oldest
    # packet, and the gap, which it never received, is not charged
    p = producer(window=10, rate=1)
    p.paid = 20
    p.packets = 20
    p.charged_through = 20
    assert p.resume_at(10_040, oldest=10_040, head=10_040, held=False) == 10_040
    assert p.packets == 20
    assert p.credit == 0
    # the same start named by the consumer ("I hold everything below it") repairs a lost count: charged
    q = producer(window=10, rate=1)
    q.paid = 20
    q.packets = 20
    q.charged_through = 20
    q.resume_at(30, oldest=0, head=40)
    assert q.packets == 30


def test_lagging_subscriber_is_closed_and_a_closed_stream_ends() -> None:
    p = producer(rate=1)
    p.on_paid(10, 0.0)
    assert p.plan(head=20, oldest=5, closed=False, now=0.0, max_batch=10) == [Close(reason="lagging")]
    q = producer(rate=1)
    assert q.plan(head=0, oldest=0, closed=True, now=0.0, max_batch=10) == [Close(reason="end")]


def test_per_second_pricing_charges_active_time_through_the_same_credit() -> None:
    p = producer(window=10, rate=3, model="per-second")
    p.on_paid(30, 0.0)  # ten seconds
    assert p.plan(head=5, oldest=0, closed=False, now=0.0, max_batch=10) == [SendPackets(first=0, count=5, free=0)]
    assert p.deadline() == pytest.approx(10.0)
    p.plan(head=5, oldest=0, closed=False, now=4.0, max_batch=10)
    assert p.credit == 30 - 12
    assert p.plan(head=6, oldest=0, closed=False, now=10.0, max_batch=10) == [
        Pause(reason="payment_required", credit=0, paid=30)
    ]
    p.plan(head=6, oldest=0, closed=False, now=12.0, max_batch=10)
    assert p.credit == 0  # no charge while paused


def test_consumer_pays_only_for_packets_that_exist_and_checks_sequence() -> None:
    c = ConsumerCredit(terms=terms(rate=2), me=CONSUMER.public_key_hex, window=10, next_seq=0, max_price=None)
    assert not c.wants_payment()  # nothing published yet
    c.on_pause(head=30, paid=0)
    assert c.wants_payment()
    c.begin_payment()
    assert not c.wants_payment()  # one payment at a time
    q = quote()
    receipt = Receipt.issue(PRODUCER, q, txid="ab" * 32, amount=20, paid_ms=NOW_MS)
    c.on_receipt(receipt, q, "ab" * 32)
    assert c.paid == 20
    assert c.wants_payment()  # 10 paid, 30 exist: the next window may go ahead
    c.on_pause(head=30, paid=0)  # a pause from before our payment: stale
    assert not c.paused
    c.on_packets(PacketBatch(stream_id="s", first=0, payloads=("a",) * 10, head=30))
    with pytest.raises(RemoteProtocolError, match="expected"):
        c.on_packets(PacketBatch(stream_id="s", first=11, payloads=("b",), head=30))
    with pytest.raises(RemoteProtocolError, match="expected"):
        c.on_packets(PacketBatch(stream_id="s", first=5, payloads=("b",), head=30))
    with pytest.raises(RemoteProtocolError, match="another stream"):
        c.on_packets(PacketBatch(stream_id="t", first=10, payloads=("b",), head=30))
    assert c.next_seq == 10
    assert c.packets == 10


def test_forged_or_mismatched_receipts_and_quotes_grant_nothing() -> None:
    c = ConsumerCredit(terms=terms(), me=CONSUMER.public_key_hex, window=10, next_seq=0, max_price=3)
    q = quote()
    forged = Receipt.issue(OTHER, q, txid="ab" * 32, amount=20, paid_ms=NOW_MS)
    with pytest.raises(RemoteProtocolError, match="receipt is invalid"):
        c.on_receipt(forged, q, "ab" * 32)
    other_tx = Receipt.issue(PRODUCER, q, txid="cd" * 32, amount=20, paid_ms=NOW_MS)
    with pytest.raises(RemoteProtocolError, match="receipt is invalid"):
        c.on_receipt(other_tx, q, "ab" * 32)
    assert c.paid == 0
    assert c.payments == 0
    assert c.check_quote(q, NOW_MS) == q
    with pytest.raises(RemoteProtocolError, match="another payee"):
        c.check_quote(quote(signer=OTHER), NOW_MS)
    with pytest.raises(RemoteProtocolError, match="another stream"):
        c.check_quote(quote(resource=stream_resource("t")), NOW_MS)
    with pytest.raises(PaymentError, match="max-price"):
        c.check_quote(quote(amount=40), NOW_MS)
    with pytest.raises(RemoteProtocolError, match="expired"):
        c.check_quote(q, NOW_MS + 61_000)
    # the next window's quote comes unsigned, signed by the receipt it came with
    following = Quote.issue(
        PRODUCER,
        payer=CONSUMER.public_key_hex,
        resource="stream:s",
        amount=20,
        now_ms=NOW_MS,
        ttl_ms=60_000,
        signed=False,
    )
    with pytest.raises(RemoteProtocolError, match="not signed"):
        c.check_quote(following, NOW_MS)
    signing = Receipt.issue(PRODUCER, q, txid="ab" * 32, amount=20, paid_ms=NOW_MS, next_quote=following)
    assert c.check_quote(following, NOW_MS, receipt=signing) == following
    with pytest.raises(RemoteProtocolError, match="not the quote the receipt signs"):
        c.check_quote(dataclasses.replace(following, prefix="AAAAAAAA"), NOW_MS, receipt=signing)
    # a receipt that names no next quote: the quote must carry its own signature
    plain = Receipt.issue(PRODUCER, q, txid="ab" * 32, amount=20, paid_ms=NOW_MS)
    assert c.check_quote(q, NOW_MS, receipt=plain) == q
    with pytest.raises(RemoteProtocolError, match="not signed"):
        c.check_quote(following, NOW_MS, receipt=plain)
    dear = ConsumerCredit(terms=terms(rate=5), me=CONSUMER.public_key_hex, window=1, next_seq=0, max_price=4)
    with pytest.raises(PaymentError, match="above --max-price"):
        dear.check_price()
    # a quote a receipt signs is still checked for its stream and its expiry
    for change, problem in (
        ({"resource": stream_resource("t")}, "another stream"),
        ({"expires_ms": NOW_MS}, "expired"),
    ):
        odd = dataclasses.replace(following, **change)
        naming = Receipt.issue(PRODUCER, q, txid="ab" * 32, amount=20, paid_ms=NOW_MS, next_quote=odd)
        with pytest.raises(RemoteProtocolError, match=problem):
            c.check_quote(odd, NOW_MS, receipt=naming)


def _batched(qs: list[Quote], txids: list[str], signer: Identity = PRODUCER) -> list[Receipt]:
    """Receipts for ``qs`` paid by ``txids``, signed by ``signer`` with one batch signature (a stream.pay answer)."""
    receipts = [
        Receipt.issue(
            signer,
            q,
            txid=txid,
            amount=q.amount,
            paid_ms=NOW_MS,
            next_quote=quote(),
            key_id="stream:s",
            signed=False,
        )
        for q, txid in zip(qs, txids, strict=True)
    ]
    Receipt.sign_batch(signer, receipts)
    return receipts


def test_a_batch_of_receipts_grants_each_payment_and_a_forged_or_mismatched_one_nothing() -> None:
    c = ConsumerCredit(terms=terms(), me=CONSUMER.public_key_hex, window=10, next_seq=0, max_price=3, ahead=4)
    qs, txids = [quote(), quote(), quote()], ["aa" * 32, "bb" * 32, "cc" * 32]
    genuine = _batched(qs, txids)
    # a receipt of the batch shown for another payment of it, or with its body changed
    with pytest.raises(RemoteProtocolError, match="receipt is invalid"):
        c.on_receipt(genuine[0], qs[1], txids[1])
    with pytest.raises(RemoteProtocolError, match="receipt is invalid"):
        c.on_receipt(dataclasses.replace(genuine[1], txid=txids[0]), qs[1], txids[0])
    # the same list signed by another key, and another batch's genuine list and signature
    (forged,) = _batched(qs[:1], txids[:1], signer=OTHER)
    with pytest.raises(RemoteProtocolError, match="receipt is invalid"):
        c.on_receipt(dataclasses.replace(forged, payee=PRODUCER.public_key_hex), qs[0], txids[0])
    other = _batched([quote()], ["dd" * 32])[0]
    with pytest.raises(RemoteProtocolError, match="receipt is invalid"):
        c.on_receipt(dataclasses.replace(genuine[0], batch=other.batch, sig=other.sig), qs[0], txids[0])
    assert (c.paid, c.payments) == (0, 0)
    for q, txid, receipt in zip(qs, txids, genuine, strict=True):
        c.on_receipt(receipt, q, txid)
    assert (c.paid, c.payments) == (60, 3)


def test_batches_from_the_wire_are_bounded() -> None:
    good: dict[str, object] = {"stream_id": "s", "first": 0, "payloads": ["a", "b"], "head": 2}
    assert PacketBatch.from_wire(good, max_packet=10, max_batch=5).packets()[1].seq == 1
    bad: object
    for bad in (
        {**good, "payloads": ["x" * 11]},
        {**good, "payloads": ["a"] * 6},
        {**good, "head": 1},
        {**good, "first": -1},
        {**good, "payloads": [b"bytes"]},
        {**good, "stream_id": ""},
        {**good, "stream_id": "s\n"},
        [],
    ):
        with pytest.raises(RemoteProtocolError):
            PacketBatch.from_wire(bad, max_packet=10, max_batch=5)


@given(
    st.dictionaries(
        st.sampled_from(["stream_id", "first", "payloads", "head", "x"]),
        st.recursive(
            st.none() | st.integers() | st.text(max_size=5) | st.binary(max_size=5), lambda c: st.lists(c, max_size=3)
        ),
    )
)
def test_garbage_batches_raise_our_error(body: dict[str, object]) -> None:
    try:
        PacketBatch.from_wire(body, max_packet=10, max_batch=5)
    except RemoteProtocolError:
        pass


@given(
    st.lists(st.integers(min_value=1, max_value=40), max_size=30),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=2, max_value=6),
)
def test_every_packet_sent_is_paid_and_credit_stays_within_ahead_windows(
    pushes: list[int], window: int, ahead: int
) -> None:
    p = producer(window=window, rate=3, ahead=ahead)
    c = ConsumerCredit(
        terms=terms(rate=3), me=CONSUMER.public_key_hex, window=window, next_seq=0, max_price=None, ahead=ahead
    )
    head = 0
    for n in pushes:
        head += n
        for _ in range(4 * n + 4):
            actions = p.plan(head=head, oldest=0, closed=False, now=0.0, max_batch=7)
            for a in actions:
                if isinstance(a, SendPackets):
                    c.on_packets(PacketBatch(stream_id="s", first=a.first, payloads=("x",) * a.count, head=head))
                elif isinstance(a, Pause):
                    c.on_pause(head, a.paid)
            if c.wants_payment():
                p.check_payment(c.window_price)
                p.on_paid(c.window_price, 0.0)
                c.paid += c.window_price
                c.paused = False
            assert p.credit <= ahead * window * 3
            assert p.packets * 3 <= p.paid
    # paid exactly for what exists, rounded up to a window
    assert c.paid == -(-head // window) * window * 3 or c.packets < head


def test_ahead_windows_covers_the_prepay_with_at_least_two_windows() -> None:
    assert ahead_windows(1, 16) == 16
    assert ahead_windows(10, 16) == 2
    assert ahead_windows(100, 16) == 2
    assert ahead_windows(3, 16) == 6
    assert ahead_windows(1, 10_000) == MAX_AHEAD


def test_a_deeper_pipeline_keeps_ahead_minus_one_payments_in_flight_and_no_more() -> None:
    c = ConsumerCredit(terms=terms(rate=2), me=CONSUMER.public_key_hex, window=1, next_seq=0, max_price=None, ahead=4)
    p = producer(window=1, rate=2, ahead=4)
    c.on_pause(head=100, paid=0)
    sent = 0
    while c.wants_payment():
        p.check_payment(c.window_price)  # the producer takes each while the others are being checked
        p.pending += c.window_price
        c.begin_payment()
        sent += 1
    assert sent == 3  # A - 1 in flight; one window is consumed meanwhile
    p.check_payment(2)  # the producer's own bound is credit <= A windows: a fourth would pass,
    p.pending += 2
    with pytest.raises(PaymentError, match="pay when it is used"):
        p.check_payment(2)  # a fifth, from a consumer that ignores the rule, not
    p.pending -= 2
    # all three accepted (the receipts' bookkeeping): credit 3 windows, one more may go, then A windows are
    # paid ahead and nothing more goes until a packet is consumed
    p.pending = 0
    for _ in range(3):
        p.on_paid(2, 0.0)
        c.paid += 2
        c.payment_failed()
    c.paused = False
    assert c.wants_payment()
    p.check_payment(2)
    p.on_paid(2, 0.0)
    c.paid += 2
    assert p.credit == c.credit == 4 * 2
    assert not c.wants_payment()
    (send,) = p.plan(head=100, oldest=0, closed=False, now=0.0, max_batch=1)
    assert send == SendPackets(first=0, count=1, free=0)
    c.on_packets(PacketBatch(stream_id="s", first=0, payloads=("x",), head=100))
    assert c.wants_payment()
    p.check_payment(2)


def test_a_live_stream_pays_the_next_window_before_its_first_packet_a_burst_exactly() -> None:
    def credit(live_ahead: bool = True) -> ConsumerCredit:
        me = CONSUMER.public_key_hex
        return ConsumerCredit(terms=terms(rate=1), me=me, window=10, next_seq=0, max_price=None, live_ahead=live_ahead)

    def paid(c: ConsumerCredit, amount: int = 10) -> None:
        q = quote(amount=amount)
        c.begin_payment()
        c.on_receipt(Receipt.issue(PRODUCER, q, txid="ab" * 32, amount=amount, paid_ms=NOW_MS), q, "ab" * 32)

    # live: packets pushed one at a time as the consumer reads them (each batch moves the head to its end)
    live = credit()
    live.on_pause(head=1, paid=0)
    paid(live)
    for seq in range(4):
        live.on_packets(PacketBatch(stream_id="s", first=seq, payloads=("x",), head=seq + 1))
        assert not live.wants_payment()  # more than half a window of what it paid is left
    live.on_packets(PacketBatch(stream_id="s", first=4, payloads=("x",), head=5))
    assert live.wants_payment()  # half a window left: the next one goes before packet 10 exists
    paid(live)
    assert not live.wants_payment()

    # without live_ahead (the default) the same live stream is paid exactly: the window waits until it exists
    exact = credit(live_ahead=False)
    exact.on_pause(head=1, paid=0)
    paid(exact)
    for seq in range(10):
        exact.on_packets(PacketBatch(stream_id="s", first=seq, payloads=("x",), head=seq + 1))
        assert not exact.wants_payment()

    # a burst pushed before it was read: nothing beyond the head is paid, even once the consumer caught up
    burst = credit()
    burst.on_pause(head=10, paid=0)
    paid(burst)
    burst.on_packets(PacketBatch(stream_id="s", first=0, payloads=("x",) * 5, head=10))
    burst.on_packets(PacketBatch(stream_id="s", first=5, payloads=("x",) * 5, head=10))
    assert not burst.wants_payment()
    assert burst.paid == 10


def test_only_packets_that_exist_are_paid_ahead() -> None:
    c = ConsumerCredit(terms=terms(rate=1), me=CONSUMER.public_key_hex, window=1, next_seq=0, max_price=None, ahead=16)
    c.on_pause(head=3, paid=0)
    sent = 0
    while c.wants_payment():
        c.begin_payment()
        sent += 1
    assert sent == 3  # three packets exist: three windows, not fifteen
