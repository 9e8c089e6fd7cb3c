"""DhtService behaviour beyond put/get: bootstrap, timeouts and retries, restarts, re-replication, republishing."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import trio

from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest, PeerTimeout, TransportError
from overlay_node.protocol.dht_records import PutResult, make_record
from overlay_node.services.dht import dht_key
from overlay_node.services.dht_rpc import Signer
from overlay_node.wire.dht import node_id_of
from tests.conftest import NodeFactory
from tests.integration.dht_fixtures import DhtNet, dht_net, settle

__all__ = ["dht_net"]

LIMIT = 15  # seconds per test


async def test_bootstrap_from_config_joins_both_ways(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        seed = await dht_net.start("seed")
        port = seed.address.rsplit(":", 1)[1]
        # a host name is resolved; unusable entries are skipped with a warning
        joiner = await dht_net.start("joiner", bootstrap=("nonsense", "127.0.0.1:99999", f"localhost:{port}"))
        await joiner.service.wait_bootstrapped()
        await settle()  # the seed confirms the joiner's address with a ping before it takes the joiner in
        assert [c.node_id for c in joiner.service.contacts()] == [seed.service.node_id]
        assert [c.node_id for c in seed.service.contacts()] == [joiner.service.node_id]
        assert seed.service.contacts()[0].port == int(joiner.address.rsplit(":", 1)[1])


async def test_a_thin_table_is_filled_again_from_the_bootstrap_nodes(dht_net: DhtNet) -> None:
    # a node restarted while its bootstrap node was down knows one contact; once the bootstrap node is back, the
    # next maintenance pass fills the table from it (before, only an empty table bootstrapped again)
    with trio.fail_after(LIMIT):
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder.bind(("127.0.0.1", 0))
        down_port = holder.getsockname()[1]
        holder.close()  # nothing answers there until the bootstrap node starts on it
        lone = await dht_net.start("lone")
        node = await dht_net.start("node", bootstrap=(f"127.0.0.1:{down_port}", lone.address))
        await node.service.wait_bootstrapped()
        assert [c.node_id for c in node.service.contacts()] == [lone.service.node_id]
        boot = await dht_net.start("boot", port=down_port)
        others = [await dht_net.start(f"other{i}", bootstrap=(boot.address,)) for i in range(3)]
        for other in others:
            await other.service.wait_bootstrapped()
        await node.service.run_maintenance()
        known = {c.node_id for c in node.service.contacts()}
        assert {boot.service.node_id, *(o.service.node_id for o in others)} <= known


async def test_a_node_restarted_while_its_bootstrap_node_is_down_rejoins_through_its_saved_contacts(
    dht_net: DhtNet,
) -> None:
    # A bootstraps B and C, which learn each other; B stops, then A; B restarts (on a new port) with A still down:
    # the contacts B saved are pinged at start, so it finds C, and C learns B's new address from that ping
    with trio.fail_after(LIMIT):
        a = await dht_net.start("a")
        b = await dht_net.start("b", bootstrap=(a.address,))
        c = await dht_net.start("c", bootstrap=(a.address,))
        await b.service.wait_bootstrapped()
        await c.service.wait_bootstrapped()
        await settle()
        assert c.service.node_id in {x.node_id for x in b.service.contacts()}
        await dht_net.stop(b)
        await dht_net.stop(a)

        again = await dht_net.start("b", identity=b.identity, bootstrap=(a.address,))
        await again.service.wait_bootstrapped()
        await settle()
        assert [x.node_id for x in again.service.contacts()] == [c.service.node_id]
        seen_by_c = {x.node_id: x.port for x in c.service.contacts()}
        assert seen_by_c[again.service.node_id] == int(again.address.rsplit(":", 1)[1])
        # and it works through them: a record C holds is found from B
        key = dht_key("debug", "after-restart")
        await c.service.put(key, b"v", ttl=600)
        assert [r.value for r in await again.service.get(key)] == [b"v"]


async def test_a_whole_node_restarted_while_its_bootstrap_node_is_down_finds_the_others(
    start_node: NodeFactory,
) -> None:
    # the same through whole nodes (their data dirs, start order and readiness): B's status counts C at once
    with trio.fail_after(LIMIT * 2):
        fast = {"dht.request_timeout": 0.3}
        a = await start_node("a", **fast)
        boot = {"dht.bootstrap": [a.info.dht], **fast}
        b = await start_node("b", **boot)
        c = await start_node("c", **boot)
        await b.dht.wait_background()  # B takes C in once C answered its ping (C's bootstrap asked B)
        assert c.dht.node_id in {x.node_id for x in b.dht.contacts()}
        for node in (b, a):
            node.request_shutdown()
            await node.wait_stopped()

        again = await start_node("b", **boot)  # the same data dir: the same identity and node.db
        assert again.info.identity_key == b.info.identity_key
        assert [x.node_id for x in again.dht.contacts()] == [c.dht.node_id]
        assert again.status()["dht_contacts"] == 1


async def test_a_dead_bootstrap_address_does_not_hold_the_start_up(dht_net: DhtNet) -> None:
    # one live address and one that never answers: the bootstrap is done once the live one answered and the lookup
    # through it ended, not after the silent one's request timeout and retries (90 s here); its PING goes on
    with trio.fail_after(LIMIT):
        seed = await dht_net.start("seed")
        node = await dht_net.start("node", request_timeout=30.0, request_retries=2)
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            started = trio.current_time()
            assert await node.service.bootstrap([f"127.0.0.1:{silent.getsockname()[1]}", seed.address]) == 1
            assert trio.current_time() - started < 30.0
            assert [c.node_id for c in node.service.contacts()] == [seed.service.node_id]
        finally:
            silent.close()


async def test_requests_time_out_after_their_retries(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        node = await dht_net.start("node", request_timeout=0.2, request_retries=2)
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        try:
            started = trio.current_time()
            assert await node.service.bootstrap([f"127.0.0.1:{silent.getsockname()[1]}"]) == 0
            assert trio.current_time() - started >= 3 * 0.2 * 0.9
            received = []
            while True:
                try:
                    received.append(silent.recv(4096))
                except BlockingIOError:
                    break
            # the same signed PING, sent once and then twice more
            assert len(received) == 3
            assert len(set(received)) == 1
        finally:
            silent.close()
        timeouts = node.metrics.registry.get_sample_value(
            "overlay_dht_requests_total", {"method": "ping", "outcome": "timeout"}
        )
        assert timeouts == 1


async def test_bad_arguments_are_refused(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        node = await dht_net.start("node", max_value=100)
        key = dht_key("tag", "x")
        with pytest.raises(BadRequest, match="32 bytes"):
            await node.service.put(b"short", b"v", ttl=60)
        with pytest.raises(BadRequest, match=r"1\.\.100 bytes"):
            await node.service.put(key, b"x" * 101, ttl=60)
        with pytest.raises(BadRequest, match=r"1\.\.100 bytes"):
            await node.service.put(key, b"", ttl=60)
        with pytest.raises(BadRequest, match="ttl"):
            await node.service.put(key, b"v", ttl=10**9)
        with pytest.raises(BadRequest, match="32 bytes"):
            await node.service.get(b"")


async def test_records_survive_a_restart(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        a, b, c = await dht_net.form(3)
        own_key, held_key = dht_key("ship", "tm_own"), dht_key("ship", "tm_held")
        put = await a.service.put(own_key, b"mine", ttl=600)
        await b.service.put(held_key, b"theirs", ttl=600)
        await dht_net.stop(a)  # the stop writes whatever was not saved yet

        again = await dht_net.start("n0", identity=a.identity)
        assert [r.value for r in again.service.local_records(own_key)] == [b"mine"]
        assert [(r.value, r.publisher) for r in again.service.local_records(held_key)] == [
            (b"theirs", b.identity.public_key)
        ]
        stats = again.service.statistics()
        assert (stats.records, stats.own_records) == (2, 1)
        # back in the network (on a new port), it still answers for the records it holds and its own
        await again.service.bootstrap([b.address])
        assert [r.value for r in await c.service.get(own_key)] == [b"mine"]
        # its next seq is above the one used before the restart
        removed = await again.service.remove(own_key)
        assert removed.seq > put.seq
        assert await c.service.get(own_key) == []


async def test_records_are_re_replicated_to_a_closer_node_that_joins(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        peers = await dht_net.form(6, k=3)
        newcomer = Identity.generate()
        key = node_id_of(newcomer.public_key)  # the newcomer will be the closest node to this key
        outcome = await peers[0].service.put(key, b"replicate me", ttl=600)
        assert outcome.stored == 3
        joined = await dht_net.start("newcomer", identity=newcomer, k=3)
        assert joined.service.local_records(key) == []
        await joined.service.bootstrap([peers[0].address])
        record = await joined.wait_seen(lambda r: r.key == key)  # pushed by a holder that saw it join
        assert record.value == b"replicate me"
        assert [r.value for r in joined.service.local_records(key)] == [b"replicate me"]


async def test_own_records_are_renewed_before_they_expire(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        peers = await dht_net.form(4)
        publisher, others = peers[0], peers[1:]
        key = dht_key("slap", "ls_renewed")
        first = await publisher.service.put(key, b"renew me", ttl=100)
        await publisher.service.run_maintenance()  # nothing is due yet
        assert all(p.service.local_records(key)[0].seq == first.seq for p in others)
        # with less than a quarter of its lifetime left, maintenance re-signs it with a later expiry and pushes it
        dht_net.clock.advance(80)
        await publisher.service.run_maintenance()
        for peer in others:
            (held,) = peer.service.local_records(key)
            assert held.seq == first.seq + 1
            assert held.expires >= first.expires + 79
        # past the first expiry, the renewed record is what everyone finds
        dht_net.clock.advance(40)
        for peer in others:
            await peer.service.run_maintenance()
            assert [r.value for r in await peer.service.get(key)] == [b"renew me"]


async def test_unchanged_records_are_pushed_again_to_a_node_that_lost_them(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        peers = await dht_net.form(4, republish_interval=30.0)
        publisher, holder = peers[0], peers[2]
        key = dht_key("tag", "republished")
        first = await publisher.service.put(key, b"again", ttl=3600)
        # the holder restarts with an empty database (same identity, new port)
        await dht_net.stop(holder)
        fresh = await dht_net.start("fresh", identity=holder.identity, republish_interval=30.0)
        await fresh.service.bootstrap([peers[1].address])
        await publisher.service.bootstrap([fresh.address])  # the publisher learns the holder's new address
        assert fresh.service.local_records(key) == []
        dht_net.clock.advance(31)
        await publisher.service.run_maintenance()
        (held,) = fresh.service.local_records(key)
        assert (held.value, held.seq) == (b"again", first.seq)  # pushed unchanged, not renewed


async def test_many_publishers_are_returned_across_pages(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        peers = await dht_net.form(5)
        key = dht_key("ship", "tm_crowded")
        # 12 records of about 1 KiB: each VALUES datagram carries one, so every node answers in many pages
        values = sorted(b"%02d" % i + bytes([i]) * 1000 for i in range(12))
        publishers = [*peers, *[await dht_net.start(f"publisher{i}") for i in range(7)]]
        for publisher in publishers[5:]:
            await publisher.service.bootstrap([peers[0].address])
        for publisher, value in zip(publishers, values, strict=True):
            await publisher.service.put(key, value, ttl=600)
        for peer in peers:
            for _ in range(2):  # the second time, pages come from the layout cache
                assert sorted(r.value for r in await peer.service.get(key)) == values


async def test_ping_own_records_and_ingest_for_the_adverts_service(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        a, b = await dht_net.form(2, request_timeout=0.1, request_retries=0)
        assert await a.service.ping(b.address, expect_key=b.identity.public_key) >= 0
        with pytest.raises(PeerTimeout):  # the answer comes from another node than the one expected
            await a.service.ping(b.address, expect_key=Identity.generate().public_key)
        assert a.drops("bad_node_id") == 1
        key = dht_key("ship", "tm_pushed")
        await a.service.put(key, b"mine", ttl=600)
        await a.service.remove(dht_key("ship", "tm_gone"))
        assert sorted((r.key, r.is_tombstone) for r in a.service.own_records()) == sorted(
            [(key, False), (dht_key("ship", "tm_gone"), True)]
        )
        # a record pushed over a peer link is taken like a STORE: held, saved, announced
        publisher = Identity.generate()
        record = make_record(
            key=key,
            value=b"pushed",
            publisher=publisher.public_key,
            seq=1,
            expires=int(dht_net.clock() + 600),
            sign=Signer(publisher).sign,
        )
        assert b.service.ingest(record) is PutResult.STORED
        assert b.service.ingest(record) is PutResult.STALE
        assert b.seen[-1] == record
        forged = dataclasses.replace(record, seq=2)
        assert b.service.ingest(forged) is PutResult.BAD_SIGNATURE
        assert b.refusals("bad_signature") == 1
        assert sorted(r.value for r in await b.service.get(key)) == [b"mine", b"pushed"]


async def test_a_stopped_service_refuses_requests_with_a_transport_error(dht_net: DhtNet) -> None:
    # tasks still holding the service while the node stops (a lookup for GASP, say) get an OverlayError, or
    # Cancelled when they are being cancelled, never an unexpected exception that crashes the node's nursery
    with trio.fail_after(LIMIT):
        a, b = await dht_net.start("a"), await dht_net.start("b")
        await dht_net.stop(a)
        with pytest.raises(TransportError, match="dht endpoint is closed"):
            await a.service.ping(b.address)
        with trio.CancelScope() as scope:
            scope.cancel()
            await a.service.ping(b.address)
        assert scope.cancelled_caught
