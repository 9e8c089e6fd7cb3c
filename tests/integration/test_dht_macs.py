"""MAC'd datagrams between DHT services (docs/protocol.md, section 10): nodes that take them learn it of each other
from their first exchange and authenticate everything after it with the key they share; a node that does not
(``mac_datagrams = false``, as a node of version 1) gets signed datagrams only, and a network of both kinds works."""

from __future__ import annotations

import pytest
import trio

from overlay_node.errors import PeerTimeout
from overlay_node.services.dht import dht_key
from overlay_node.wire.dht import node_id_of
from tests.integration.dht_fixtures import DhtNet, DhtPeer, dht_net, settle

__all__ = ["dht_net"]

LIMIT = 15  # seconds per test


def macs(peer: DhtPeer) -> tuple[int, int]:
    stats = peer.service.statistics()
    return stats.macs_in, stats.macs_out


async def test_nodes_learn_from_their_first_exchange_that_they_take_macs(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        a, b = await dht_net.form(2)
        assert a.service.statistics().mac_peers == 1
        assert b.service.statistics().mac_peers == 1
        before_a, before_b = macs(a), macs(b)
        signed_out = a.service.statistics().datagrams_out - before_a[1]
        await a.service.ping(b.address, expect_key=b.identity.public_key)
        await b.service.ping(a.address, expect_key=a.identity.public_key)
        # each ping and its pong went MAC'd, both ways
        assert macs(a) == (before_a[0] + 2, before_a[1] + 2)
        assert macs(b) == (before_b[0] + 2, before_b[1] + 2)
        assert a.service.statistics().datagrams_out - macs(a)[1] == signed_out  # nothing more was signed
        key = dht_key("tag", "maced")
        await a.service.put(key, b"v", ttl=60)
        assert [r.value for r in await b.service.get(key)] == [b"v"]


async def test_a_network_of_nodes_with_and_without_macs_works_and_signs_for_the_old(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        new = [await dht_net.start(f"new{i}") for i in range(3)]
        old = [await dht_net.start(f"old{i}", mac_datagrams=False) for i in range(2)]
        for peer in [*new[1:], *old]:
            await peer.service.bootstrap([new[0].address])
        await old[1].service.bootstrap([old[0].address])
        await settle()
        for i, peer in enumerate([*new, *old]):
            await peer.service.put(dht_key("tag", "mixed"), f"from {i}".encode(), ttl=60)
        for peer in [*new, *old]:
            found = await peer.service.get(dht_key("tag", "mixed"))
            assert sorted(r.value for r in found) == [f"from {i}".encode() for i in range(5)]
        for peer in old:
            assert macs(peer) == (0, 0)  # never sent one, never took one
            assert peer.drops("version") == 0  # and was never sent one
        for peer in new:
            assert peer.service.statistics().mac_peers == 2  # the other two new ones
            assert macs(peer)[1] > 0


async def test_a_mac_d_request_that_goes_unanswered_is_signed_the_next_time(dht_net: DhtNet) -> None:
    # the node at an address is replaced by one with the same key that does not take MACs (a downgrade): the first
    # MAC'd ping is dropped there and times out, and the ping after it is signed and answered
    with trio.fail_after(LIMIT):
        a = await dht_net.start("a", request_timeout=0.1, request_retries=0)
        b = await dht_net.start("b")
        await a.service.bootstrap([b.address])
        await settle()
        port = int(b.address.rsplit(":", 1)[1])
        await dht_net.stop(b)
        b_old = await dht_net.start("b-old", identity=b.identity, port=port, mac_datagrams=False)  # a new database
        assert a.service.statistics().mac_peers == 1
        with pytest.raises(PeerTimeout):
            await a.service.ping(b_old.address, expect_key=b.identity.public_key)
        assert b_old.drops("version") == 1
        assert a.service.statistics().mac_peers == 0
        await a.service.ping(b_old.address, expect_key=b.identity.public_key)
        assert macs(b_old) == (0, 0)


async def test_the_mac_key_of_a_peer_heard_lately_outlives_an_older_one(dht_net: DhtNet) -> None:
    """The MAC keys a node holds are an LRU by when each peer was last heard: when a new peer's key needs the room,
    the one heard from longest ago goes, not the one learned first."""
    with trio.fail_after(LIMIT):
        a, b, c = await dht_net.form(3)
        held = a.service._rpc._mac_peers  # the LRU itself is what this test is about
        assert {node_id_of(b.identity.public_key), node_id_of(c.identity.public_key)} <= set(held)
        for older, newer in ((c, b), (b, c)):
            # `older` speaks, then `newer`: `older` is the one heard from longest ago
            for peer in (older, newer):
                await peer.service.ping(a.address, expect_key=a.identity.public_key)
            for other in list(held):
                if other not in (node_id_of(older.identity.public_key), node_id_of(newer.identity.public_key)):
                    held.pop(other)  # only these two are in the race
            held.size = 2  # full: the next new peer's key pushes one out
            joiner = await dht_net.start(f"joiner-{len(dht_net.peers)}")
            await joiner.service.bootstrap([a.address])
            await settle()
            assert node_id_of(newer.identity.public_key) in held
            assert node_id_of(older.identity.public_key) not in held
            assert node_id_of(joiner.identity.public_key) in held
            # the one pushed out is learned again from its next datagram, as any new peer's
            await older.service.ping(a.address, expect_key=a.identity.public_key)
            assert node_id_of(older.identity.public_key) in held
