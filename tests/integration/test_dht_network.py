"""Twenty DHT services over real UDP on 127.0.0.1 in one process, each with its own SQLite file.

Every network is formed through bootstrap alone: each node knows only the first node's address.
"""

from __future__ import annotations

from functools import partial

import trio

from overlay_node.services.dht import DhtService, dht_key
from overlay_node.wire.dht import Record
from tests.integration.dht_fixtures import DhtNet, DhtPeer, dht_net

__all__ = ["dht_net"]

NODES = 20
LIMIT = 20  # seconds per test


def values(records: list[Record]) -> list[bytes]:
    return sorted(r.value for r in records)


async def get_everywhere(peers: list[DhtPeer], key: bytes) -> list[list[bytes]]:
    """``get(key)`` on every peer at once; the values each one found, in peer order."""
    found: list[list[bytes]] = [[] for _ in peers]

    async def one(i: int, service: DhtService) -> None:
        found[i] = values(await service.get(key))

    async with trio.open_nursery() as nursery:
        for i, peer in enumerate(peers):
            nursery.start_soon(one, i, peer.service)
    return found


async def test_twenty_nodes_form_the_dht_through_one_bootstrap_address(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        peers = await dht_net.form(NODES)
        # every node looked itself up, which reaches every other node of so small a network (k = 20)
        assert all(len(p.service.contacts()) == NODES - 1 for p in peers)
        ids = {p.service.node_id for p in peers}
        for peer in peers:
            assert {c.node_id for c in peer.service.contacts()} == ids - {peer.service.node_id}
        stats = peers[0].service.statistics()
        assert stats.contacts == NODES - 1
        assert stats.datagrams_in > 0
        assert stats.drops == {}


async def test_a_record_put_on_one_node_is_found_from_every_node(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        peers = await dht_net.form(NODES)
        key = dht_key("ship", "tm_everywhere")
        outcome = await peers[7].service.put(key, b"advert-7", ttl=600)
        assert (outcome.stored, outcome.asked, outcome.refused, outcome.local) == (NODES - 1, NODES - 1, {}, True)
        assert await get_everywhere(peers, key) == [[b"advert-7"]] * NODES
        # the k closest (here everyone) hold it and told their on_record callbacks
        for peer in peers:
            if peer is not peers[7]:
                assert [r.value for r in peer.seen] == [b"advert-7"]
                assert peer.service.local_records(key)[0].publisher == peers[7].identity.public_key
        # a newer put by the same publisher replaces the record everywhere
        second = await peers[7].service.put(key, b"advert-7b", ttl=600)
        assert second.seq > outcome.seq
        assert await get_everywhere(peers, key) == [[b"advert-7b"]] * NODES


async def test_three_publishers_under_one_key_are_all_returned(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        peers = await dht_net.form(NODES)
        key = dht_key("ship", "tm_three")
        async with trio.open_nursery() as nursery:
            for i in (2, 9, 15):
                nursery.start_soon(partial(peers[i].service.put, key, b"host-%d" % i, ttl=600))
        expected = [b"host-15", b"host-2", b"host-9"]
        assert await get_everywhere(peers, key) == [expected] * NODES


async def test_a_tombstone_removes_the_record_everywhere(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        peers = await dht_net.form(NODES)
        key = dht_key("slap", "ls_revoked")
        await peers[3].service.put(key, b"stays", ttl=600)
        put = await peers[4].service.put(key, b"revoked", ttl=600)
        assert await get_everywhere(peers, key) == [[b"revoked", b"stays"]] * NODES
        removed = await peers[4].service.remove(key)
        assert removed.tombstone
        assert removed.seq > put.seq
        assert removed.stored == NODES - 1
        assert removed.expires >= put.expires  # the tombstone outlives every copy of what it revokes
        assert await get_everywhere(peers, key) == [[b"stays"]] * NODES
        assert all(values(p.service.local_records(key)) == [b"stays"] for p in peers)
        # the holders were told about the revocation too
        assert any(r.is_tombstone for r in peers[0].seen)


async def test_an_expired_record_is_gone_everywhere(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        peers = await dht_net.form(NODES)
        key = dht_key("uhrp", "short-lived")
        publisher = peers[11]
        await publisher.service.put(key, b"brief", ttl=60)
        await peers[0].service.put(key, b"lasting", ttl=3600)
        assert await get_everywhere(peers, key) == [[b"brief", b"lasting"]] * NODES
        # the publisher goes away, so nobody renews its record; an hour later (on the wall clock) it has expired
        await dht_net.stop(publisher)
        rest = [p for p in peers if p is not publisher]
        dht_net.clock.advance(61)
        assert await get_everywhere(rest, key) == [[b"lasting"]] * len(rest)
        for peer in rest:
            await peer.service.run_maintenance()
            assert peer.service.statistics().records == 1  # the expired one is dropped from the store
            assert values(peer.service.local_records(key)) == [b"lasting"]


async def test_a_node_that_stops_answering_is_evicted_from_every_table(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        peers = await dht_net.form(NODES, contact_check_interval=0.0)
        gone = peers[5]
        gone_id = gone.service.node_id
        await dht_net.stop(gone)
        rest = [p for p in peers if p is not gone]
        assert all(gone_id in {c.node_id for c in p.service.contacts()} for p in rest)
        # maintenance pings every contact (contact_check_interval = 0); the silent one is evicted
        async with trio.open_nursery() as nursery:
            for peer in rest:
                nursery.start_soon(peer.service.run_maintenance)
        for peer in rest:
            contacts = {c.node_id for c in peer.service.contacts()}
            assert gone_id not in contacts
            assert len(contacts) == NODES - 2
            assert (
                peer.metrics.registry.get_sample_value("overlay_dht_evictions_total", {"reason": "ping_timeout"}) == 1
            )


async def test_lookup_failures_evict_a_silent_contact(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        # lookups that wait out every request (no stall), so each get ends with the failure counted
        peers = await dht_net.form(4, max_failures=2, stall_timeout=60.0)
        asker, gone = peers[0], peers[1]
        await dht_net.stop(gone)
        key = dht_key("tag", "anything")
        assert await asker.service.get(key) == []
        assert gone.service.node_id in {c.node_id for c in asker.service.contacts()}  # one failure so far
        await asker.service.get(key)
        assert gone.service.node_id not in {c.node_id for c in asker.service.contacts()}
        failures = asker.metrics.registry.get_sample_value("overlay_dht_evictions_total", {"reason": "failures"})
        assert failures == 1


async def test_a_dead_contact_holds_a_lookup_up_for_the_stall_time_not_the_request_timeout(dht_net: DhtNet) -> None:
    request_timeout = 5.0
    with trio.fail_after(LIMIT):
        peers = await dht_net.form(4, request_timeout=request_timeout, stall_timeout=0.2)
        asker, holder, gone = peers[0], peers[1], peers[2]
        key = dht_key("tag", "despite-the-dead")
        await holder.service.put(key, b"found", ttl=60)
        await dht_net.stop(gone)
        # without the stall the get would wait request_timeout * 2 sends for the dead node
        with trio.fail_after(request_timeout / 2):
            assert [r.value for r in await asker.service.get(key)] == [b"found"]
