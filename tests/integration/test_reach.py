"""Reaching a peer by its identity key alone: discover -> quote -> pay and discover -> subscribe between nodes that
never linked to each other (no ``ctl connect``, no swarm bootstrap), sharing only a DHT bootstrap node; streams
advertised by service type and tag; discovery without a topic or service name. Real in-process daemons on
127.0.0.1 driven through the CLI (in-process for short commands, a real subprocess for ``ctl subscribe``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from typer.testing import CliRunner, Result

from overlay_cli.main import app
from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest
from overlay_node.node import Node
from overlay_node.services.dht import dht_key
from overlay_node.wire.dht import Record
from tests.conftest import NodeFactory


async def cli(*args: str) -> Result:
    runner = CliRunner()
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(lambda: runner.invoke(app, list(args)))


async def ctl_json(node: Node, *args: str) -> Any:
    result = await cli("--data-dir", str(node.data_dir.path), "--json", "ctl", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def strangers(start_node: NodeFactory, count: int) -> tuple[Node, list[Node]]:
    """A bank (the devnet ledger and the only DHT bootstrap) and ``count`` funded nodes that know nothing of each
    other but the bank's DHT address."""
    bank = await start_node("bank", **{"wallet.devnet_block_interval": 0})
    shared = {"wallet.arc_url": bank.status()["ledger"], "dht.bootstrap": [bank.info.dht]}
    nodes = []
    for i in range(count):
        node = await start_node(f"n{i}", **shared)
        await node.wallet.faucet(100_000)
        nodes.append(node)
    return bank, nodes


def unlinked(a: Node, b: Node) -> bool:
    return a.peers.link(b.info.identity_key) is None and b.peers.link(a.info.identity_key) is None


async def test_discover_quote_and_pay_with_nothing_but_identity_keys(start_node: NodeFactory) -> None:
    with trio.fail_after(60):
        _bank, (payee, payer) = await strangers(start_node, 2)
        payee_key = payee.info.identity_key
        await ctl_json(
            payee, "advertise", "--service", "ls_compute", "--service-type", "compute", "--price", "700", "--no-token"
        )
        found = await ctl_json(payer, "discover", "--service-type", "compute", "--max-price", "1000")
        assert [h["identity_key"] for h in found["hosts"]] == [payee_key]
        assert (await ctl_json(payer, "discover", "--service-type", "compute", "--max-price", "500"))["hosts"] == []
        assert unlinked(payer, payee)
        assert await payer.store.peers.get(payee_key) is None

        quote = await ctl_json(payer, "quote", "--provider", payee_key, "--resource", "job", "--amount", "700")
        receipt = await ctl_json(payer, "pay", "--quote-id", str(quote["quote_id"]))
        assert receipt["payee"] == payee_key
        assert receipt["amount"] == 700
        # the link the payment went over was dialled by identity, and is remembered for the next time
        known = await payer.store.peers.get(payee_key)
        assert known is not None
        assert known.address in payee.info.swarm


async def test_reach_uses_the_node_record_when_no_advert_was_seen(start_node: NodeFactory) -> None:
    with trio.fail_after(60):
        bank = await start_node("bank")
        shared = {"dht.bootstrap": [bank.info.dht]}
        a = await start_node("a", **shared)
        records: list[Record] = []
        arrived = trio.Event()

        def seen(record: Record) -> None:
            records.append(record)
            arrived.set()

        a.dht.on_record(seen)
        b = await start_node("b", **shared)
        b_key = b.info.identity_key
        node_key = dht_key("node", b_key)
        while not any(r.key == node_key and r.publisher.hex() == b_key for r in records):
            arrived = trio.Event()
            await arrived.wait()
        assert unlinked(a, b)
        link = await a.peers.reach(b_key)  # a knows b's key only: b's DHT node record says where it listens
        assert link.peer_key == b_key
        assert await a.peers.reach(b_key.upper()) is link
        with pytest.raises(BadRequest, match="own identity key"):
            await a.peers.reach(a.info.identity_key)


async def test_an_unknown_key_is_a_one_line_error_that_says_what_to_do(start_node: NodeFactory) -> None:
    with trio.fail_after(60):
        _bank, (payer,) = await strangers(start_node, 1)
        # a valid key no node publishes: nothing to dial
        ghost = Identity.from_private_bytes(bytes(31) + b"\x07").public_key_hex
        where = str(payer.data_dir.path)
        result = await cli("--data-dir", where, "ctl", "quote", "--provider", ghost, "--resource", "x", "--amount", "5")
        assert result.exit_code != 0
        message = result.output.strip()
        assert "no address known" in message
        assert "ctl discover" in message
        assert len(message.splitlines()) == 1


async def test_a_stream_is_found_by_service_type_and_tag_and_subscribed_by_key(
    tmp_path: Path, start_node: NodeFactory
) -> None:
    with trio.fail_after(90):
        _bank, (producer, consumer, other) = await strangers(start_node, 3)
        producer_key = producer.info.identity_key
        await ctl_json(
            producer, "stream", "create", "--stream-id", "ticker", "--rate", "2", "--tags", "news,markets",
            "--title", "ticks",
        )  # fmt: skip
        await ctl_json(other, "stream", "create", "--stream-id", "pricey", "--rate", "5000", "--tags", "news")
        source = tmp_path / "packets.ndjson"
        source.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(5)))
        pushed = await cli(
            "--data-dir", str(producer.data_dir.path), "ctl", "stream", "push", "ticker", "--file", str(source)
        )
        assert pushed.exit_code == 0, pushed.output

        by_type = (await ctl_json(consumer, "discover", "--service-type", "streaming", "--max-price", "1000"))["hosts"]
        assert [(h["identity_key"], h["resource"]) for h in by_type] == [(producer_key, "ticker")]
        assert by_type[0]["price"] == 2
        assert by_type[0]["pricing_model"] == "per-packet"
        assert set(by_type[0]["capabilities"]) == {"news", "markets"}
        by_tag = (await ctl_json(consumer, "discover", "--capability", "news"))["hosts"]
        assert {(h["identity_key"], h["resource"]) for h in by_tag} == {
            (producer_key, "ticker"),
            (other.info.identity_key, "pricey"),
        }
        by_two_tags = (await ctl_json(consumer, "discover", "--capability", "news", "--capability", "markets"))["hosts"]
        assert [h["resource"] for h in by_two_tags] == ["ticker"]
        assert unlinked(consumer, producer)

        # a real CLI process subscribes by stream id and producer key; its output lines are the events waited on
        args = [sys.executable, "-m", "overlay_cli.main", "--data-dir", str(consumer.data_dir.path), "--json"]
        args += ["ctl", "subscribe", "ticker", "--producer", producer_key, "--max-price", "2"]
        proc = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            lines: list[dict[str, Any]] = []
            buffered = b""
            while len(lines) < 5:
                chunk = await proc.stdout.receive_some()
                assert chunk, "ctl subscribe ended before 5 packets arrived"
                buffered += chunk
                *done, buffered = buffered.split(b"\n")
                lines += [json.loads(line) for line in done if line.strip()]
            assert [line["payload"] for line in lines[:5]] == [{"n": i} for i in range(5)]
            closed = await ctl_json(producer, "stream", "close", "ticker")
            assert closed["closed"] is True
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0

        # a closed stream is no longer advertised, and the index no longer lists it
        streaming = (await ctl_json(consumer, "discover", "--service-type", "streaming"))["hosts"]
        assert [h["resource"] for h in streaming] == ["pricey"]
        assert [h["resource"] for h in (await ctl_json(consumer, "discover", "--capability", "news"))["hosts"]] == [
            "pricey"
        ]
        assert [a["resource"] for a in (await ctl_json(producer, "adverts"))["adverts"]] == []


async def test_discover_needs_a_name_a_service_type_or_a_capability(start_node: NodeFactory) -> None:
    with trio.fail_after(30):
        node = await start_node("alone")
        result = await cli("--data-dir", str(node.data_dir.path), "ctl", "discover", "--max-price", "10")
        assert result.exit_code != 0
        assert "--service-type" in result.output
        assert len(result.output.strip().splitlines()) == 1
        found = await ctl_json(node, "discover", "--service-type", "streaming", "--max-price", "1000")
        assert found == {"hosts": []}
