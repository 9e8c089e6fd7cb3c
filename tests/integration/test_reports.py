"""The consumer's report and the producer's analytics on whole nodes in one process, paid through the real devnet
ledger: one producer, two consumers, a paid stream and a priced content sale. The producer's revenue, the sum of the
consumers' reports for that producer and what the producer's wallet received are the same number."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from typer.testing import CliRunner

from overlay_cli.main import app
from overlay_node.errors import BadRequest
from overlay_node.node import Node
from overlay_node.protocol.streams import Packet, stream_resource
from overlay_node.services.content_common import ContentMeta
from overlay_node.services.reports import parse_time_range
from tests.conftest import NodeFactory
from tests.integration.test_content import write_random
from tests.integration.test_streams import collect, lines

RATE = 2
PRICE = 50
SIZE = 200_000
FAST = {"content.repair_interval": 0, "dht.request_timeout": 0.3}


async def cli(*args: str) -> Any:
    runner = CliRunner()
    return await trio.to_thread.run_sync(lambda: runner.invoke(app, list(args)))


async def network(start_node: NodeFactory) -> tuple[Node, Node, list[Node]]:
    """A bank (ledger + DHT bootstrap), an unfunded producer and two funded consumers."""
    bank = await start_node("bank", **{"wallet.devnet_block_interval": 0}, **FAST)
    shared = {
        "wallet.arc_url": bank.status()["ledger"],
        "dht.bootstrap": [bank.info.dht],
        "wallet.settle_retry_min": 0.05,
        **FAST,
    }
    producer = await start_node("producer", **shared)
    consumers = [await start_node(f"consumer{i}", **shared) for i in range(2)]
    for node in consumers:
        await node.wallet.faucet(100_000)
    for node in (bank, producer, *consumers):
        await node.content._announce()
    return bank, producer, consumers


async def test_producer_revenue_equals_consumer_reports_equals_wallet_received(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        _bank, producer, (viewer, buyer) = await network(start_node)
        me = producer.info.identity_key

        # a paid stream for the viewer
        await producer.streams.producer.create("ticks", pricing_model="per-packet", rate=RATE)
        sub = await viewer.streams.consumer.subscribe("ticks", window=10, max_price=RATE)
        got: list[Packet] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, sub, 60, got)
            await trio.testing.wait_all_tasks_blocked()
            producer.streams.producer.push("ticks", lines(60))
        summary = sub.summary()
        assert summary["packets"] == 60

        # a priced content sale to the buyer
        source = tmp_path / "premium.bin"
        cid = write_random(source, SIZE).hex()
        await producer.content.publish(source, meta=ContentMeta(price=PRICE), replication=0)
        assert await buyer.content.grant_for(cid, max_price=100) is not None
        await producer.streams.producer.flush()

        # the consumers' reports
        seen = await viewer.reports.consumer_report("24h", include_payments=True)
        bought = await buyer.reports.consumer_report("24h")
        [v] = seen["providers"]
        assert v["identity_key"] == me
        assert v["satoshis"] == summary["paid_satoshis"] == seen["total_satoshis"]
        assert (v["payments"], v["fees"], v["packets"]) == (summary["payments"], summary["fees"], 60)
        [stream] = seen["streams"]
        assert (stream["stream_id"], stream["provider"], stream["packets"]) == ("ticks", me, 60)
        assert stream["satoshis"] == summary["paid_satoshis"]
        assert seen["content"] == []
        assert len(seen["payments"]) == summary["payments"]
        assert {p["resource"] for p in seen["payments"]} == {stream_resource("ticks")}
        [b] = bought["providers"]
        assert (b["identity_key"], b["satoshis"], b["bytes"], b["payments"]) == (me, PRICE, SIZE, 1)
        [item] = bought["content"]
        assert (item["hash"], item["bytes"], item["packets"], item["satoshis"]) == (cid, SIZE, 1, PRICE)
        assert "payments" not in bought

        # the producer's revenue: per consumer, per stream and content, and the wallet agrees
        revenue = await producer.reports.analytics("revenue", "7d")
        total = v["satoshis"] + b["satoshis"]
        assert revenue["total_satoshis"] == total == revenue["wallet_received_satoshis"]
        assert producer.wallet.balance().satoshis == total  # the producer started with nothing
        by_consumer = {c["identity_key"]: c["satoshis"] for c in revenue["consumers"]}
        assert by_consumer == {viewer.info.identity_key: v["satoshis"], buyer.info.identity_key: PRICE}
        assert [(s["stream_id"], s["satoshis"]) for s in revenue["streams"]] == [("ticks", v["satoshis"])]
        assert [(c["hash"], c["satoshis"], c["bytes"]) for c in revenue["content"]] == [(cid, PRICE, SIZE)]
        assert sum(bucket["satoshis"] for bucket in revenue["buckets"]) == total
        assert len(revenue["buckets"]) >= 24 * 7  # every hour of the range, for charts
        assert revenue["settled_satoshis"] + revenue["unsettled_satoshis"] == total

        # once ARC has seen every payment, all of it is settled
        for p in seen["payments"]:
            await producer.settlement.wait_for(p["txid"], "seen", "mined")
        assert producer._store is not None
        for payment in await producer._store.payments.recent(limit=100):
            await producer.settlement.wait_for(payment.txid, "seen", "mined")
        settled = await producer.reports.analytics("revenue", "24h")
        assert settled["settled_satoshis"] == total
        assert settled["unsettled_satoshis"] == 0

        # usage and access
        usage = await producer.reports.analytics("usage", "24h")
        [ticks] = usage["streams"]
        assert ticks["packets"] == 60
        assert [s["identity_key"] for s in ticks["subscribers"]] == [viewer.info.identity_key]
        access = await producer.reports.analytics("access", "24h")
        [sold] = access["content"]
        assert [(c["identity_key"], c["accesses"]) for c in sold["consumers"]] == [(buyer.info.identity_key, 1)]

        # a range before any of it reports nothing
        past = await producer.reports.analytics("revenue", "2001-01-01..2001-01-02")  # both days whole
        assert (past["total_satoshis"], past["consumers"], len(past["buckets"])) == (0, [], 48)
        assert (await viewer.reports.consumer_report("2001-01-01..2001-01-02"))["total_satoshis"] == 0

        # the CLI, with the keys scripts rely on
        out = await cli("--data-dir", str(viewer.data_dir.path), "ctl", "report", "--time-range", "24h", "--json")
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout)
        assert data["total_satoshis"] == v["satoshis"]
        assert {"identity_key", "satoshis", "packets", "bytes", "payments"} <= set(data["providers"][0])
        out = await cli(
            "--data-dir", str(producer.data_dir.path), "ctl", "analytics", "--report-type", "revenue",
            "--time-range", "7d", "--json",
        )  # fmt: skip
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout)
        assert (data["total_satoshis"], data["settled_satoshis"]) == (total, total)
        assert {c["identity_key"] for c in data["consumers"]} == set(by_consumer)
        assert isinstance(data["buckets"], list)
        out = await cli(
            "--data-dir", str(viewer.data_dir.path), "ctl", "report", "--format", "csv", "--include-payments"
        )
        assert out.exit_code == 0, out.output
        rows = list(csv.DictReader(io.StringIO(out.stdout)))
        assert [r["level"] for r in rows].count("payment") == summary["payments"]
        assert next(r for r in rows if r["level"] == "provider")["satoshis"] == str(v["satoshis"])
        human = await cli("--data-dir", str(buyer.data_dir.path), "ctl", "report")
        assert human.exit_code == 0, human.output
        assert cid in human.stdout

        # bad input: one line, exit 2, nothing else happens
        bad = await cli("--data-dir", str(viewer.data_dir.path), "ctl", "report", "--time-range", "yesterday")
        assert bad.exit_code == 2
        assert "--time-range" in bad.stderr
        bad = await cli("--data-dir", str(producer.data_dir.path), "ctl", "analytics", "--report-type", "profit")
        assert bad.exit_code == 2
        assert "usage, access, revenue" in bad.stderr


def test_time_ranges() -> None:
    now = 1_800_000_000.0
    assert parse_time_range("24h", now).since == now - 86_400
    assert parse_time_range("7d", now).since == now - 7 * 86_400
    day = parse_time_range("2026-12-01..2026-12-02", now)
    assert (day.since, day.until) == (1_796_083_200.0, 1_796_083_200.0 + 2 * 86_400)
    assert parse_time_range("1700000000..1700003600", now).until == 1_700_003_600.0
    assert parse_time_range("2026-12-01T10:00:00+01:00..", now).since == 1_796_083_200.0 + 9 * 3600
    assert parse_time_range("all", now).since == 0.0
    for bad in ("yesterday", "5x", "2026-13-01..", "2026-12-02..2026-12-01"):
        with pytest.raises(BadRequest, match="--time-range"):
            parse_time_range(bad, now)


async def stream_and_viewer(start_node: NodeFactory, stream_id: str) -> tuple[Node, Node]:
    """A producer with a per-packet stream ``stream_id`` and a funded viewer, on one devnet ledger."""
    bank = await start_node("bank", **{"wallet.devnet_block_interval": 0}, **FAST)
    shared = {"wallet.arc_url": bank.status()["ledger"], "dht.bootstrap": [bank.info.dht], **FAST}
    producer = await start_node("producer", **shared)
    viewer = await start_node("viewer", **shared)
    await viewer.wallet.faucet(100_000)
    await producer.streams.producer.create(stream_id, pricing_model="per-packet", rate=RATE)
    return producer, viewer


async def test_a_paid_streams_bytes_reconcile_and_are_the_payload_bytes_sent(start_node: NodeFactory) -> None:
    with trio.fail_after(60):
        producer, viewer = await stream_and_viewer(start_node, "words")
        sub = await viewer.streams.consumer.subscribe("words", window=10, max_price=RATE)
        # multi-byte UTF-8 text: the bytes counted are the payloads' bytes, not their characters
        payloads = [f'{{"i": {i}, "w": "{"€ü" * (i % 7)}"}}' for i in range(40)]
        sent = sum(len(p.encode()) for p in payloads)
        assert sent > sum(len(p) for p in payloads)
        got: list[Packet] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, sub, len(payloads), got)
            await trio.testing.wait_all_tasks_blocked()
            producer.streams.producer.push("words", payloads)
        assert [p.payload for p in got] == payloads
        assert sub.summary()["bytes"] == sent
        await producer.streams.producer.flush()

        # the consumer's report: per stream, per provider and in total (no content bought)
        seen = await viewer.reports.consumer_report("24h")
        [stream] = seen["streams"]
        assert (stream["stream_id"], stream["packets"], stream["bytes"]) == ("words", 40, sent)
        [provider] = seen["providers"]
        assert (provider["bytes"], seen["total_bytes"]) == (sent, sent)

        # the producer's analytics: per stream and per subscriber, in every report type
        for report_type in ("usage", "revenue", "access"):
            sold = await producer.reports.analytics(report_type, "24h")
            [words] = sold["streams"]
            assert (words["stream_id"], words["bytes"]) == ("words", sent)
            assert [(s["identity_key"], s["bytes"]) for s in words["subscribers"]] == [(viewer.info.identity_key, sent)]

        # the CLI carries them: JSON and the CSV's stream row
        out = await cli("--data-dir", str(viewer.data_dir.path), "ctl", "report", "--json")
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["streams"][0]["bytes"] == sent
        out = await cli("--data-dir", str(viewer.data_dir.path), "ctl", "report", "--format", "csv")
        assert out.exit_code == 0, out.output
        rows = list(csv.DictReader(io.StringIO(out.stdout)))
        assert next(r for r in rows if r["level"] == "stream")["bytes"] == str(sent)
        out = await cli(
            "--data-dir", str(producer.data_dir.path), "ctl", "analytics", "--report-type", "usage", "--json"
        )
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["streams"][0]["bytes"] == sent


async def test_the_consumers_report_sums_every_subscription_to_a_stream(start_node: NodeFactory) -> None:
    # two subscriptions, one after the other: the consumer's row keeps the totals of both (each subscription
    # counted from zero, and the row kept the larger of them), so the report equals what was received and paid
    with trio.fail_after(60):
        producer, viewer = await stream_and_viewer(start_node, "ticks")
        received: list[int] = []
        paid = 0
        for session, count in enumerate((12, 8)):
            sub = await viewer.streams.consumer.subscribe("ticks", window=4, max_price=RATE)
            got: list[Packet] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, sub, count, got)
                await trio.testing.wait_all_tasks_blocked()
                producer.streams.producer.push("ticks", [f"s{session}p{i}" for i in range(count)])
            await sub.wait_finished()
            received.append(len(got))
            paid += sub.summary()["paid_satoshis"]
        assert received == [12, 8]
        seen = await viewer.reports.consumer_report("24h")
        [stream] = seen["streams"]
        assert stream["packets"] == 20
        [row] = await viewer.store.streams.subs("ticks", role="consumer")
        assert (row.packets, row.paid) == (20, paid)
