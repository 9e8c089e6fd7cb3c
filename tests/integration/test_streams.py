"""Paid live streams between whole nodes in one process: real websockets, real SQLite, one real devnet ledger
(embedded in a "bank" node that is also the DHT bootstrap), real BRC-29 payments for every window.

Every test has a trio-clock limit and waits on events (packets arriving, settlement jobs changing state);
nothing sleeps and polls.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from overlay_node.crypto.brc42 import verify_for_anyone
from overlay_node.errors import BadRequest, InvalidPayment, NotFound, OverlayError, PaymentReplayed
from overlay_node.net.peers import PeerLink
from overlay_node.node import Node
from overlay_node.protocol.payments import RECEIPT_PROTOCOL, PaymentMessage, Quote, Receipt, batch_signing_bytes
from overlay_node.protocol.streams import HOLD_SECONDS, Packet, stream_resource
from overlay_node.services.streams_consumer import StreamConsumer, Subscription
from tests.conftest import MovableClock, NodeFactory

RATE = 2


async def network(start_node: NodeFactory, consumers: int, **overrides: Any) -> tuple[Node, Node, list[Node]]:
    """A bank (ledger + DHT bootstrap), a producer and funded consumers sharing the bank's ledger (and, with a
    ``wall_clock=`` override, a wall clock the test moves)."""
    clock = {"wall_clock": overrides.pop("wall_clock")} if "wall_clock" in overrides else {}
    bank = await start_node("bank", **{"wallet.devnet_block_interval": 0}, **clock)
    shared = {
        "wallet.arc_url": bank.status()["ledger"],
        "dht.bootstrap": [bank.info.dht],
        "wallet.settle_retry_min": 0.05,
        **overrides,
    }
    producer = await start_node("producer", **shared, **clock)
    nodes: list[Node] = []
    for i in range(consumers):
        node = await start_node(f"consumer{i}", **shared, **clock)
        await node.wallet.faucet(200_000)
        nodes.append(node)
    return bank, producer, nodes


async def collect(sub: Subscription, count: int, into: list[Packet]) -> None:
    """Read packets until ``count`` arrived (then stop) or the subscription ends."""
    async for packet in sub.packets():
        into.append(packet)
        if len(into) >= count:
            sub.stop("enough")
    await sub.wait_finished()


def lines(n: int, start: int = 0) -> list[str]:
    return [f'{{"i": {i}, "data": "{"x" * 40}"}}' for i in range(start, start + n)]


async def test_three_subscribers_w1_w10_w100_every_packet_paid_and_settled(start_node: NodeFactory) -> None:
    with trio.fail_after(45):
        bank, producer, consumers = await network(start_node, 3)
        await producer.streams.producer.create("ticks", pricing_model="per-packet", rate=RATE)
        before = [c.wallet.balance().satoshis for c in consumers]
        windows = (1, 10, 100)
        subs = [
            await c.streams.consumer.subscribe("ticks", window=w, max_price=RATE)
            for c, w in zip(consumers, windows, strict=True)
        ]
        total = 300
        received: list[list[Packet]] = [[], [], []]
        async with trio.open_nursery() as nursery:
            for sub, got in zip(subs, received, strict=True):
                nursery.start_soon(collect, sub, total, got)
            await trio.testing.wait_all_tasks_blocked()
            producer.streams.producer.push("ticks", lines(200))
            producer.streams.producer.push("ticks", lines(100, 200))

        expected = lines(total)
        for got in received:
            assert [p.seq for p in got] == list(range(total))  # in order, no gaps, no duplicates
            assert [p.payload for p in got] == expected
        status = await producer.streams.producer.status("ticks")
        by_key = {s["identity_key"]: s for s in status["subscribers"]}
        for consumer, sub, w, start in zip(consumers, subs, windows, before, strict=True):
            summary = sub.summary()
            assert summary["packets"] == total
            assert summary["paid_satoshis"] == total * RATE
            assert summary["payments"] == total // w
            row = by_key[consumer.info.identity_key]
            assert row["packets"] == total
            assert row["paid_satoshis"] == total * RATE
            assert row["payments"] == total // w
            await consumer.wallet.flush()
            assert consumer.wallet.balance().satoshis == start - total * RATE - summary["fees"]
            # the subscription's change went to one key of its own (spent again and again by its payments)
            change_keys = {c.key_id for c in consumer.wallet.coins() if c.origin == "change"}
            assert len(change_keys) == 1
            assert next(iter(change_keys)).startswith("change stream ")
        assert status["revenue_satoshis"] == 3 * total * RATE

        # every payment reaches the ledger and is accepted there
        assert producer._store is not None
        payments = [
            p.txid for p in await producer._store.payments.recent(limit=10_000, resource=stream_resource("ticks"))
        ]
        assert len(payments) == sum(total // w for w in windows)
        async with httpx.AsyncClient(base_url=bank.status()["ledger"]) as ledger:
            for txid in payments:
                await producer.settlement.wait_for(txid, "seen", "mined")
                answer = await ledger.get(f"/v1/tx/{txid}")
                assert answer.status_code == 200, answer.text

        # the receipts of a stream.pay message share one signature, and each stored receipt is a proof on its own
        # (checked here as a third party would, from its bytes alone): the producer's copy and the payer's agree
        stored = await producer._store.payments.recent(limit=10_000, resource=stream_resource("ticks"))
        payer_receipts: dict[str, bytes | None] = {}
        for consumer in consumers:
            assert consumer._store is not None
            for entry in await consumer._store.wallet.history(limit=10_000):
                if entry.direction == "out" and entry.kind == "payment":
                    payer_receipts[entry.txid] = entry.receipt
        sizes = []
        for payment in stored:
            receipt = Receipt.from_bytes(payment.receipt)
            assert (receipt.txid, receipt.quote_id, receipt.amount) == (payment.txid, payment.quote_id, payment.amount)
            assert (receipt.payee, receipt.payer) == (producer.info.identity_key, payment.payer)
            assert hashlib.sha256(receipt.body_bytes()).digest() in receipt.batch
            signed = batch_signing_bytes(receipt.batch)
            assert verify_for_anyone(receipt.payee, RECEIPT_PROTOCOL, stream_resource("ticks"), signed, receipt.sig)
            assert payer_receipts[payment.txid] == payment.receipt
            sizes.append(len(receipt.batch))
        assert max(sizes) > 1  # the W = 1 subscriber's payments travel several per message


def stop_paying_after(monkeypatch: pytest.MonkeyPatch, consumer: StreamConsumer, payments: int) -> None:
    """Make ``consumer``'s subscriptions pay no more once ``payments`` payments were made or are in flight (they go
    on taking packets): a consumer that stops paying. Other consumers in the process pay as usual."""
    prepare = Subscription._prepare_payment

    async def stingy(self: Subscription, link: PeerLink) -> Any:
        credit = self.credit
        if self._consumer is consumer and credit is not None and credit.payments + credit.in_flight >= payments:
            return None  # "nothing to pay with right now": the payer waits for news
        return await prepare(self, link)

    monkeypatch.setattr(Subscription, "_prepare_payment", stingy)


class Reader:
    """Reads a subscription's packets in the background; ``await reader.reached(n)`` waits for n packets."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.packets: list[Packet] = []
        self._waiters: dict[int, trio.Event] = {}

    async def run(self) -> None:
        async for packet in self.sub.packets():
            self.packets.append(packet)
            for n, event in list(self._waiters.items()):
                if len(self.packets) >= n:
                    event.set()
        for event in self._waiters.values():
            event.set()

    async def reached(self, n: int) -> None:
        if len(self.packets) < n:
            await self._waiters.setdefault(n, trio.Event()).wait()
        assert len(self.packets) >= n, str(self.sub.summary())


async def push_live(producer: Node, stream_id: str, reader: Reader, seqs: range) -> None:
    """Push ``seqs`` one packet at a time, each read before the next is pushed: a live stream."""
    for seq in seqs:
        producer.streams.producer.push(stream_id, lines(1, seq))
        await reader.reached(seq + 1)


async def next_window_held(sub: Subscription) -> None:
    """Wait until the consumer has paid the next window and the producer holds that payment."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    assert sub.credit is not None
    assert sub.credit.in_flight == 1


async def test_non_payer_is_paused_and_closed_others_unaffected(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        _, producer, (payer, cheat) = await network(start_node, 2, **{"streams.grace_period": 0.3})
        await producer.streams.producer.create("news", rate=RATE)
        stop_paying_after(monkeypatch, cheat.streams.consumer, 2)
        good = await payer.streams.consumer.subscribe("news", window=10)
        bad = await cheat.streams.consumer.subscribe("news", window=10)
        readers = [Reader(good), Reader(bad)]
        async with trio.open_nursery() as nursery:
            for r in readers:
                nursery.start_soon(r.run)
            producer.streams.producer.push("news", lines(100))
            await readers[0].reached(100)
            await bad.wait_finished()
            good.stop()
        summary = bad.summary()
        assert summary["reason"] == "payment_timeout"
        assert summary["payments"] == 2
        assert summary["paid_satoshis"] == 20 * RATE
        # every packet it got was paid for: at most the two windows it paid, nothing unpaid
        assert [p.seq for p in readers[1].packets] == list(range(20))
        assert [p.seq for p in readers[0].packets] == list(range(100))
        status = await producer.streams.producer.status("news")
        rows = {s["identity_key"]: s for s in status["subscribers"]}
        assert rows[cheat.info.identity_key]["packets"] == 20
        assert rows[cheat.info.identity_key]["reason"] == "payment_timeout"
        assert rows[payer.info.identity_key]["paid_satoshis"] == 100 * RATE


@pytest.mark.parametrize("window", [10, 1])
async def test_dropped_link_resumes_from_last_seq_without_paying_twice(start_node: NodeFactory, window: int) -> None:
    # W = 1 drops the link with several payments in flight (pay-ahead pipeline): each is counted once, by its
    # receipt or by the consumer's pay.receipt question after the resume
    with trio.fail_after(30):
        _, producer, (consumer,) = await network(start_node, 1)
        await producer.streams.producer.create("feed", rate=RATE)
        sub = await consumer.streams.consumer.subscribe("feed", window=window)
        reader = Reader(sub)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            producer.streams.producer.push("feed", lines(50))
            await reader.reached(50 if window > 1 else 20)
            link = consumer.peers.link(producer.info.identity_key)
            assert link is not None
            await link.aclose("test: drop the link")
            producer.streams.producer.push("feed", lines(50, 50))
            await reader.reached(100)
            sub.stop()
        assert [p.seq for p in reader.packets] == list(range(100))
        summary = sub.summary()
        assert summary["reconnects"] >= 1
        assert summary["paid_satoshis"] == 100 * RATE
        assert summary["payments"] == 100 // window
        status = await producer.streams.producer.status("feed")
        (row,) = status["subscribers"]
        assert row["packets"] == 100
        assert row["paid_satoshis"] == 100 * RATE


@pytest.mark.parametrize("ending", ["stop", "close"])
@pytest.mark.parametrize("live_ahead", [False, True])
async def test_a_live_stream_pays_each_window_before_it_begins_and_exactly(
    start_node: NodeFactory, live_ahead: bool, ending: str
) -> None:
    # packets pushed one at a time, each once the last was read: the producer pushes as the consumer reads. The
    # consumer pays the next window once half of the last is left, before any packet of it exists; the producer
    # holds that payment until the window's first packet comes (protocol/streams.py, invariant 8), so the packet
    # waits for no payment round trip, and however the stream ends (the consumer stops, the producer closes it) the
    # payment for the window never begun is refused and its coins come back: paid exactly, with or without
    # streams.pay_live_ahead
    with trio.fail_after(30):
        _, producer, (consumer,) = await network(start_node, 1)
        await producer.streams.producer.create("live", rate=RATE)
        before = consumer.wallet.balance().satoshis
        sub = await consumer.streams.consumer.subscribe("live", window=10, pay_live_ahead=live_ahead)
        reader = Reader(sub)
        pushed: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            for seq in range(30):
                if seq % 10 == 0:
                    # a live stream's packets come at their own pace: here the next one waits until the consumer
                    # has done what it does about the last (no task ready to run for 10 ms)
                    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
                pushed.append(time.time())
                producer.streams.producer.push("live", lines(1, seq))
                await reader.reached(seq + 1)
            stopping = trio.current_time()
            if ending == "close":
                await producer.streams.producer.close("live")
            else:
                sub.stop()
            await sub.wait_finished()
            # the payment held for the fourth window is refused at once, not when its hold runs out
            assert trio.current_time() - stopping < HOLD_SECONDS / 2
        assert [p.payload for p in reader.packets] == lines(30)
        summary = sub.summary()
        assert summary["packets"] == 30
        assert summary["paid_satoshis"] == 30 * RATE
        assert summary["payments"] == 3
        # the second and third windows were paid (written ahead) before their first packets were pushed
        paid_at = sorted(h.created_at for h in await consumer.wallet.history() if h.direction == "out")
        assert len(paid_at) == 3
        assert paid_at[1] < pushed[10]
        assert paid_at[2] < pushed[20]
        assert consumer.wallet.balance().satoshis == before - 30 * RATE - summary["fees"]
        status = await producer.streams.producer.status("live")
        (row,) = status["subscribers"]
        assert row["packets"] == 30
        assert row["paid_satoshis"] == 30 * RATE
        if ending == "close":  # a closed stream is said to have ended, not to be unknown
            with pytest.raises(NotFound, match="'live' has ended: its producer"):
                await consumer.streams.consumer.subscribe("live", window=10)
            from typer.testing import CliRunner

            from overlay_cli.main import app

            args = ["--data-dir", str(consumer.data_dir.path), "ctl", "subscribe", "live"]
            out = await trio.to_thread.run_sync(lambda: CliRunner().invoke(app, args))
            assert out.exit_code == 9, out.output  # not found
            assert "'live' has ended: its producer" in out.stderr


async def test_a_subscription_at_the_head_pays_its_first_window_before_it_begins(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a subscription that starts at the stream's head is caught up with a live stream: it pays its first window
    # before any packet of it exists, the producer holds that payment (protocol/streams.py, invariants 3 and 8), and
    # the first packet pushed waits for its commit, not for a pause and a payment round trip; the stream that is new
    # has its first sequence numbers reserved already (no durable write before its first packet either)
    pauses: list[object] = []
    on_paused = Subscription.on_paused

    def counting(self: Subscription, head: object, paid: object) -> None:
        pauses.append(head)
        on_paused(self, head, paid)

    monkeypatch.setattr(Subscription, "on_paused", counting)
    with trio.fail_after(30):
        _, producer, (consumer,) = await network(start_node, 1)
        await producer.streams.producer.create("fresh", rate=RATE)
        (row,) = [r for r in await producer.store.streams.streams() if r.stream_id == "fresh"]
        assert row.next_seq >= 10  # reserved durably when created: the first pushes go out at once
        before = consumer.wallet.balance().satoshis
        sub = await consumer.streams.consumer.subscribe("fresh", window=10)
        reader = Reader(sub)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            await next_window_held(sub)
            pushed = time.time()
            producer.streams.producer.push("fresh", lines(10))
            await reader.reached(10)
            sub.stop()
            await sub.wait_finished()
        assert [p.payload for p in reader.packets] == lines(10)
        assert pauses == []
        paid_at = [h.created_at for h in await consumer.wallet.history() if h.direction == "out"]
        assert len(paid_at) == 1
        assert paid_at[0] < pushed
        summary = sub.summary()
        assert summary["payments"] == 1
        assert summary["paid_satoshis"] == 10 * RATE
        assert consumer.wallet.balance().satoshis == before - 10 * RATE - summary["fees"]


async def test_a_held_payment_whose_window_does_not_come_is_refused_and_its_coins_come_back(
    start_node: NodeFactory, virtual_clock: trio.testing.MockClock
) -> None:
    # the next window's payment waits at the producer for at most HOLD_SECONDS (protocol/streams.py, invariant 8);
    # when the stream is quiet longer, it is refused with nothing taken, and the window is paid again once it begins
    with trio.fail_after(30):
        _, producer, (consumer,) = await network(start_node, 1)
        await producer.streams.producer.create("quiet", rate=RATE)
        before = consumer.wallet.balance().satoshis
        sub = await consumer.streams.consumer.subscribe("quiet", window=10)
        reader = Reader(sub)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            await push_live(producer, "quiet", reader, range(10))
            await next_window_held(sub)
            virtual_clock.jump(HOLD_SECONDS)
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            assert sub.credit is not None
            assert sub.credit.in_flight == 0
            assert consumer.wallet.balance().satoshis == before - 10 * RATE - sub.summary()["fees"]
            await push_live(producer, "quiet", reader, range(10, 20))
            sub.stop()
            await sub.wait_finished()
        summary = sub.summary()
        assert summary["packets"] == 20
        assert summary["paid_satoshis"] == 20 * RATE
        assert summary["payments"] == 2
        assert consumer.wallet.balance().satoshis == before - 20 * RATE - summary["fees"]


async def test_a_link_dropped_while_a_payment_is_held_takes_nothing_and_the_stream_goes_on(
    start_node: NodeFactory,
) -> None:
    # the next window's payment waits at the producer when the link drops: the producer refuses it (nothing taken),
    # the consumer resumes, learns with pay.receipt that it was never taken, gets its coins back, and pays the window
    # again once it begins: paid exactly
    with trio.fail_after(30):
        _, producer, (consumer,) = await network(start_node, 1)
        await producer.streams.producer.create("cut", rate=RATE)
        before = consumer.wallet.balance().satoshis
        sub = await consumer.streams.consumer.subscribe("cut", window=10)
        reader = Reader(sub)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            await push_live(producer, "cut", reader, range(10))
            await next_window_held(sub)
            link = consumer.peers.link(producer.info.identity_key)
            assert link is not None
            await link.aclose("test: drop the link")
            await push_live(producer, "cut", reader, range(10, 20))
            sub.stop()
            await sub.wait_finished()
        assert [p.payload for p in reader.packets] == lines(20)
        summary = sub.summary()
        assert summary["reconnects"] >= 1
        assert summary["paid_satoshis"] == 20 * RATE
        assert summary["payments"] == 2
        assert consumer.wallet.balance().satoshis == before - 20 * RATE - summary["fees"]
        status = await producer.streams.producer.status("cut")
        (row,) = status["subscribers"]
        assert row["paid_satoshis"] == 20 * RATE


async def test_producer_restart_consumers_reconnect_nothing_double_counted(start_node: NodeFactory) -> None:
    with trio.fail_after(40):
        bank, producer, consumers = await network(start_node, 2)
        shared = {"wallet.arc_url": bank.status()["ledger"], "dht.bootstrap": [bank.info.dht]}
        await producer.streams.producer.create("live", rate=RATE)
        subs = [await c.streams.consumer.subscribe("live", window=10) for c in consumers]
        readers = [Reader(s) for s in subs]
        async with trio.open_nursery() as nursery:
            for r in readers:
                nursery.start_soon(r.run)
            producer.streams.producer.push("live", lines(50))
            for r in readers:
                await r.reached(50)
            producer.request_shutdown()
            await producer.wait_stopped()
            producer = await start_node("producer", **shared)
            producer.streams.producer.push("live", lines(50, 50))
            for r in readers:
                await r.reached(100)
            for s in subs:
                s.stop()
        status = await producer.streams.producer.status("live")
        rows = {s["identity_key"]: s for s in status["subscribers"]}
        for consumer, sub, reader in zip(consumers, subs, readers, strict=True):
            assert [p.seq for p in reader.packets] == list(range(100))
            assert sub.summary()["paid_satoshis"] == 100 * RATE
            row = rows[consumer.info.identity_key]
            assert row["packets"] == 100
            assert row["paid_satoshis"] == 100 * RATE
            assert row["payments"] == 10


async def test_bad_input_gets_clear_errors_and_no_credit(start_node: NodeFactory) -> None:
    with trio.fail_after(30):
        _, producer, (consumer,) = await network(start_node, 1, **{"streams.max_packet": 1000})
        streams = producer.streams.producer
        await streams.create("s1", rate=RATE)
        await streams.create("s2", rate=RATE)
        # oversized packets: the whole push is refused, nothing appended
        with pytest.raises(BadRequest, match="over the limit"):
            streams.push("s1", ["ok", "x" * 1001])
        assert streams.list()[0]["head"] == 0
        streams.push("s1", lines(5))

        link = await consumer.peers.connect(producer.info.swarm[0], expect_key=producer.info.identity_key)
        with pytest.raises(BadRequest, match="up to the head 5"):
            await link.request("stream.subscribe", {"stream_id": "s1", "window": 1, "from_seq": 99})
        q1 = Quote.from_wire((await link.request("stream.subscribe", {"stream_id": "s1", "window": 1}))["quotes"][0])
        q2 = Quote.from_wire((await link.request("stream.subscribe", {"stream_id": "s2", "window": 1}))["quotes"][0])
        assert q2.resource == stream_resource("s2")
        message, prepared = await consumer.payments.prepare_payment(q1)
        # a payment for another stream
        with pytest.raises(InvalidPayment, match="not stream 's2'"):
            await link.request("stream.pay", {"stream_id": "s2", "payment": message.to_wire()})
        # the right one, then the same payment replayed
        answer = await link.request("stream.pay", {"stream_id": "s1", "payment": message.to_wire()})
        receipt = Receipt.from_bytes(answer["receipt"])  # as the producer stored it
        # the next window's quote comes without a signature of its own: the receipt signs it
        assert receipt.verify()
        assert "sig" not in answer["quote"]
        assert receipt.key_id == stream_resource("s1")  # one signing key for the stream's receipts
        assert receipt.signs_quote(Quote.from_wire(answer["quote"], signed=False))
        with pytest.raises(PaymentReplayed):
            await link.request("stream.pay", {"stream_id": "s1", "payment": message.to_wire()})
        # the same replayed naming its quote by id; and an id that names no quote of the producer
        with pytest.raises(PaymentReplayed):
            await link.request("stream.pay", {"stream_id": "s1", "payment": message.to_wire(quote_by_id=True)})
        unknown = {**message.to_wire(quote_by_id=True), "quote_id": "00" * 16}
        with pytest.raises(InvalidPayment, match="not a quote of this node"):
            await link.request("stream.pay", {"stream_id": "s1", "payment": unknown})
        # a direct quote for a stream resource is refused (windows go through stream.pay)
        with pytest.raises(OverlayError, match=r"stream\.pay"):
            await consumer.payments.request_quote(producer.info.identity_key, stream_resource("s1"), 2)
        consumer.wallet.release(prepared)
        status1, status2 = await streams.status("s1"), await streams.status("s2")
        assert [s["paid_satoshis"] for s in status1["subscribers"]] == [RATE]
        assert [s["paid_satoshis"] for s in status2["subscribers"]] == [0]
        assert isinstance(message, PaymentMessage)


async def test_per_second_stream_charges_elapsed_time_through_the_same_credit(
    start_node: NodeFactory, virtual_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        _, producer, (consumer,) = await network(start_node, 1)
        await producer.streams.producer.create("clock", pricing_model="per-second", rate=RATE)
        sub = await consumer.streams.consumer.subscribe("clock", window=1)  # one second per payment
        reader = Reader(sub)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            started = trio.current_time()
            for i in range(6):  # a packet every 0.5 s for 3 s: the time, not the packets, is what is sold
                producer.streams.producer.push("clock", lines(1, i))
                await reader.reached(i + 1)
                virtual_clock.jump(max(0.0, started + 0.5 * (i + 1) - trio.current_time()))
            sub.stop()
            await sub.wait_finished()
        elapsed = trio.current_time() - started
        assert [p.seq for p in reader.packets] == list(range(6))
        summary = sub.summary()
        # paid one second ahead (two windows at most), never paused for want of credit
        assert math.floor(elapsed) <= summary["payments"] <= math.ceil(elapsed) + 2
        assert summary["paid_satoshis"] == summary["payments"] * RATE
        status = await producer.streams.producer.status("clock")
        (row,) = status["subscribers"]
        assert row["paid_satoshis"] == summary["paid_satoshis"]
        assert row["payments"] == summary["payments"]
        assert row["reason"] != "payment_timeout"


async def test_a_producer_gone_for_good_ends_the_subscription_with_its_reason(start_node: NodeFactory) -> None:
    with trio.fail_after(30):
        _, producer, (consumer,) = await network(start_node, 1, **{"streams.resume_timeout": 0.5})
        await producer.streams.producer.create("gone", rate=RATE)
        sub = await consumer.streams.consumer.subscribe("gone", window=1, duration=60)
        reader = Reader(sub)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            producer.streams.producer.push("gone", lines(10))
            await reader.reached(10)
            producer.request_shutdown()
            await producer.wait_stopped()
            await sub.wait_finished()
        summary = sub.summary()
        assert summary["reason"] == "producer_unreachable"
        assert summary["packets"] == 10
        assert summary["paid_satoshis"] == 10 * RATE
        assert summary["error"] is not None
        assert summary["error"]["code"] == "connection_lost"


async def test_expired_window_quotes_are_replaced_and_the_stream_goes_on(start_node: NodeFactory) -> None:
    clock = MovableClock()
    with trio.fail_after(30):
        _, producer, (consumer,) = await network(start_node, 1, wall_clock=clock, **{"wallet.quote_ttl": 1.0})
        await producer.streams.producer.create("slow", rate=RATE)
        sub = await consumer.streams.consumer.subscribe("slow", window=10)
        reader = Reader(sub)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            producer.streams.producer.push("slow", lines(10))
            await reader.reached(10)
            clock.offset += 1.2  # the time under test: every open window quote expires, on every node
            producer.streams.producer.push("slow", lines(20, 10))
            await reader.reached(30)
            sub.stop()
        assert [p.seq for p in reader.packets] == list(range(30))
        summary = sub.summary()
        assert summary["paid_satoshis"] == 30 * RATE
        assert summary["payments"] == 3
        # the consumer asked for fresh quotes (a second stream.subscribe) once the first ones had expired
        served = producer.metrics.registry.get_sample_value
        assert served("overlay_peer_requests_total", {"method": "stream.subscribe", "outcome": "ok"}) == 2


async def test_a_first_batch_from_few_coins_splits_the_change_once(start_node: NodeFactory) -> None:
    """A W = 1 subscription wants ``ahead`` coins (one per payment in flight). Its first payments, prepared
    together from the few coins the wallet has, split their change into as many coins as are missing in
    total, not each as many."""
    with trio.fail_after(30):
        _bank, producer, (consumer,) = await network(start_node, 1)
        for _ in range(2):
            await consumer.wallet.faucet(100_000)
        assert consumer.wallet.coin_count() == 3
        await producer.streams.producer.create("few", pricing_model="per-packet", rate=RATE)
        sub = await consumer.streams.consumer.subscribe("few", window=1, max_price=RATE, prepay=16)
        got: list[Packet] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, sub, 40, got)
            await trio.testing.wait_all_tasks_blocked()
            producer.streams.producer.push("few", lines(40))
        assert [p.seq for p in got] == list(range(40))
        assert sub.summary()["payments"] == 40
        # 3 coins, 16 wanted: the first payment splits into 13, the two beside it keep one change coin each (each
        # splitting into 13 would leave about 40)
        assert consumer.wallet.coin_count() <= 17


async def test_a_burst_of_packets_sends_its_first_payments_while_the_rest_are_prepared(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A W = 1 subscriber that sees many packets at once pays them in batches of 16; the first batch is written
    ahead and sent while the next ones are prepared (prepared all before the first left, the producer waited idle
    for the consumer's whole burst of signing)."""
    with trio.fail_after(30):
        _bank, producer, (consumer,) = await network(start_node, 1)
        await producer.streams.producer.create("burst", pricing_model="per-packet", rate=RATE)
        prepared = 0
        at_send: list[tuple[int, int]] = []  # (payments in the batch, payments prepared so far) at each send
        prepare = consumer.payments.prepare_payment

        async def counting_prepare(*args: Any, **kwargs: Any) -> Any:
            nonlocal prepared
            prepared += 1
            return await prepare(*args, **kwargs)

        send = Subscription._send_payments

        async def noting_send(self: Subscription, link: PeerLink, batch: list[Any]) -> None:
            at_send.append((len(batch), prepared))
            await send(self, link, batch)

        monkeypatch.setattr(consumer.payments, "prepare_payment", counting_prepare)
        monkeypatch.setattr(Subscription, "_send_payments", noting_send)
        sub = await consumer.streams.consumer.subscribe("burst", window=1, max_price=RATE, prepay=64)
        got: list[Packet] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, sub, 64, got)
            await trio.testing.wait_all_tasks_blocked()
            producer.streams.producer.push("burst", lines(64))
        assert [p.seq for p in got] == list(range(64))
        # the first payment goes alone (one coin: its change makes the others); then 63 at once, in batches of 16
        first = next(i for i, (n, _) in enumerate(at_send) if n == 16)
        assert first > 0, at_send
        # prepared since the lone payment was sent: this batch and at most the next (63 when all went first)
        assert at_send[first][1] - at_send[first - 1][1] < 3 * 16, at_send


async def test_a_w1_subscription_writes_its_row_in_its_payments_write_ahead(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer's subscription row goes in the transaction of each batch of its payments' write-ahead (one
    commit, no separate write of the row before it): written alone only when no payment follows packets."""
    with trio.fail_after(30):
        _bank, producer, (consumer,) = await network(start_node, 1)
        await producer.streams.producer.create("rows", pricing_model="per-packet", rate=RATE)
        alone: list[int] = []  # packets the row counted, each time it was written on its own
        aheads = 0
        save = consumer.store.streams.save
        begin_many = consumer.wallet.begin_many

        async def noting_save(streams: Any, subs: Any, **kwargs: Any) -> None:
            alone.extend(s.packets for s in subs)
            await save(streams, subs, **kwargs)

        async def noting_begin_many(payments: Any, **kwargs: Any) -> Any:
            nonlocal aheads
            aheads += 1
            assert kwargs.get("before") is not None  # the row rides along
            return await begin_many(payments, **kwargs)

        monkeypatch.setattr(consumer.store.streams, "save", noting_save)
        monkeypatch.setattr(consumer.wallet, "begin_many", noting_begin_many)
        sub = await consumer.streams.consumer.subscribe("rows", window=1, max_price=RATE, prepay=32)
        got: list[Packet] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, sub, 160, got)
            await trio.testing.wait_all_tasks_blocked()
            producer.streams.producer.push("rows", lines(160))
        assert [p.seq for p in got] == list(range(160))
        (row,) = await consumer.store.streams.subs("rows", role="consumer")
    assert row.packets == 160
    assert row.payments == sub.summary()["payments"] >= 160
    # every batch of payments took the row along; the row was written alone only when no payment came or was on its
    # way for a while (after the last packets) and at the end: not before every batch
    assert aheads >= 160 // 16
    assert len(alone) < aheads / 2, (alone, aheads)
    assert alone[-1] == 160


async def test_the_wallet_gauge_reads_the_coins_when_scraped(start_node: NodeFactory) -> None:
    with trio.fail_after(30):
        node = await start_node("gauge")
        await node.wallet.faucet(7_000)
        balance = node.wallet.balance()
        async with httpx.AsyncClient(base_url=node.info.http, timeout=10) as h:
            metrics = (await h.get("/metrics")).text
    values = {
        state: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        for state in ("confirmed", "unconfirmed", "reserved")
        if line.startswith(f'overlay_wallet_satoshis{{state="{state}"}}')
    }
    assert values == {"confirmed": balance.confirmed, "unconfirmed": 7_000, "reserved": balance.reserved}
