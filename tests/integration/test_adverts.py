"""Adverts on whole nodes in one process: 20 nodes joined through DHT bootstrap alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from overlay_node.node import Node
from overlay_node.protocol.adverts import Filter, decode_advert
from overlay_node.services.adverts import NO_FILTER
from overlay_node.services.dht import dht_key
from overlay_node.wire.dht import Record
from tests.conftest import MovableClock, NodeFactory


async def start_network(start_node: NodeFactory, n: int, clock: Callable[[], float], **overrides: Any) -> list[Node]:
    first = await start_node("n0", wall_clock=clock, **overrides)
    rest = []
    async with trio.open_nursery() as nursery:

        async def one(i: int) -> None:
            rest.append(await start_node(f"n{i}", wall_clock=clock, **{"dht.bootstrap": [first.info.dht]}, **overrides))

        for i in range(1, n):
            nursery.start_soon(one, i)
    # twenty nodes starting at once in one process can leave a bootstrap PING unanswered within the short test
    # timeout (the node starts anyway: its bootstrap is bounded); those join now, as maintenance would later
    for node in rest:
        if not node.dht.contacts():
            await node.dht.bootstrap([first.info.dht])
    return [first, *rest]


async def discovered(node: Node, name: str, flt: Filter = NO_FILTER) -> set[str]:
    return {f.advert.identity_hex for f in await node.adverts.discover(name, flt)}


async def test_twenty_nodes_publish_discover_revoke_expire_and_drop_dead_hosts(start_node: NodeFactory) -> None:
    clock = MovableClock()
    with trio.fail_after(60):
        fast_failure = {"adverts.janitor_interval": 0, "adverts.check_timeout": 0.5, "dht.request_timeout": 0.2}
        nodes = await start_network(start_node, 20, clock, **fast_failure)
        keys = [n.info.identity_key for n in nodes]

        # one advert, found by every other node's discover
        _, stored = await nodes[5].adverts.publish("tm_weather", price=3, pricing_model="per-packet")
        assert stored >= 1
        for node in nodes:
            assert await discovered(node, "tm_weather") == {keys[5]}

        # three hosts of one service: all of them, from everywhere, with filters applied
        for i, price in ((1, 10), (2, 20), (3, 30)):
            await nodes[i].adverts.publish("ls_prices", price=price, capabilities=("ndjson",), region="eu")
        for node in nodes:
            assert await discovered(node, "ls_prices") == {keys[1], keys[2], keys[3]}
        assert await discovered(nodes[9], "ls_prices", Filter(max_price=20)) == {keys[1], keys[2]}
        assert await discovered(nodes[9], "ls_prices", Filter(capabilities=("csv",))) == set()
        assert [a.name for a in nodes[1].adverts.own()] == ["ls_prices"]

        # a revoked advert disappears everywhere
        await nodes[1].adverts.revoke("ls_prices")
        for node in nodes:
            assert await discovered(node, "ls_prices") == {keys[2], keys[3]}
        assert nodes[1].adverts.own() == []

        # an expired one is gone (wall time moved past its expiry)
        await nodes[7].adverts.publish("tm_short", ttl=30)
        assert await discovered(nodes[12], "tm_short") == {keys[7]}
        clock.offset += 31
        for node in nodes:
            assert await discovered(node, "tm_short") == set()

        # a host that stops answering: after the janitor's checks its adverts are no longer returned
        dead = nodes[3]
        dead.request_shutdown()
        await dead.wait_stopped()
        live = [n for n in nodes if n is not dead]
        for _ in range(live[0].config.adverts.janitor_failures):
            async with trio.open_nursery() as nursery:
                for node in live:
                    nursery.start_soon(node.adverts.run_janitor)
        for node in live:
            assert await discovered(node, "ls_prices") == {keys[2]}
            assert node.adverts.hosts()[keys[3]].banned
        # and it drops out of the routing tables of the nodes that tried to reach it (the requests that lookups
        # stopped waiting for count their timeouts in the background)
        for node in live:
            await node.dht.wait_background()
        assert all(keys[3] not in {c.pubkey.hex() for c in n.dht.contacts()} for n in live)


async def test_direct_peers_see_a_new_advert_and_its_revocation_at_once(start_node: NodeFactory) -> None:
    # two nodes linked over the swarm but not through the DHT: only the push can carry the advert
    a = await start_node("a")
    b = await start_node("b")
    await a.peers.connect(b.info.swarm[0])
    await b.peers.wait_linked(a.info.identity_key)
    key = dht_key("ship", "tm_news")
    arrived = trio.Event()
    b.dht.on_record(lambda record: arrived.set() if record.key == key else None)
    with trio.fail_after(10):
        await a.adverts.publish("tm_news")
        await arrived.wait()
    assert [r.publisher.hex() for r in b.dht.local_records(key)] == [a.info.identity_key]
    assert await discovered(b, "tm_news") == {a.info.identity_key}

    revoked = trio.Event()
    b.dht.on_record(lambda record: revoked.set() if record.key == key and record.is_tombstone else None)
    with trio.fail_after(10):
        await a.adverts.revoke("tm_news")
        await revoked.wait()
    assert await discovered(b, "tm_news") == set()


async def test_an_advert_is_renewed_with_a_fresh_expiry_until_it_is_revoked(
    start_node: NodeFactory, virtual_clock: trio.testing.MockClock
) -> None:
    # the DHT renews the record, but only the publisher can renew the expiry signed inside the advert: its adverts
    # service puts it again before then, until it is revoked (both clocks jump: no real waiting)
    ttl, step = 20.0, 11.0
    clock = MovableClock()
    quiet = {"adverts.janitor_interval": 0, "content.repair_interval": 0}
    with trio.fail_after(30 + 4 * step):  # the jumps count too
        a = await start_node("a", wall_clock=clock, **quiet)
        b = await start_node("b", wall_clock=clock, **{"dht.bootstrap": [a.info.dht]}, **quiet)
        await a.peers.connect(b.info.swarm[0])  # pushed over the link as well as stored through the DHT
        await b.peers.wait_linked(a.info.identity_key)
        kept, gone = dht_key("ship", "tm_kept"), dht_key("ship", "tm_gone")
        newest: dict[bytes, int] = {kept: 0, gone: 0}
        renewed = {kept: trio.Event(), gone: trio.Event()}

        def on_record(record: Record) -> None:
            if record.key in newest and not record.is_tombstone:
                expires = decode_advert(record.value, publisher=record.publisher).expires
                if expires > newest[record.key]:  # a new advert, not the same one in a record the DHT renewed
                    newest[record.key] = expires
                    renewed[record.key].set()

        b.dht.on_record(on_record)
        started = clock()
        await a.adverts.publish("tm_kept", ttl=ttl)
        await a.adverts.publish("tm_gone", ttl=ttl)
        await renewed[kept].wait()
        await renewed[gone].wait()
        for i in range(4):  # 4 x 11 s: past twice the lifetime
            renewed = {kept: trio.Event(), gone: trio.Event()}
            clock.offset += step
            virtual_clock.jump(step)
            await renewed[kept].wait()
            if i == 0:
                await renewed[gone].wait()
                await a.adverts.revoke("tm_gone")  # renewed once, then revoked
        assert clock() - started > 2 * ttl
        assert newest[kept] > clock()
        assert await discovered(b, "tm_kept") == {a.info.identity_key}
        assert await discovered(b, "tm_gone") == set()
        assert [advert.name for advert in a.adverts.own()] == ["tm_kept"]
        assert b.dht.local_records(gone) == []  # never put back after its revocation
