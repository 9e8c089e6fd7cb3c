"""Bad input over real UDP: forged and oversized records, floods from one address, malformed datagrams.

Each is dropped and counted in the node's metrics, and the node keeps answering everyone else. The attacker is a raw
UDP socket that speaks the wire codec with its own key. To know that the node has dealt with a burst, a test sends a
PING from the same socket last and waits for the PONG: loopback keeps one socket's datagrams in order.
"""

from __future__ import annotations

import dataclasses
import hmac
import socket

import cbor2
import trio
import trio.lowlevel

from overlay_node.crypto.keys import Identity
from overlay_node.protocol.dht_records import make_record
from overlay_node.services.dht import dht_key
from overlay_node.services.dht_rpc import Signer, mac
from overlay_node.wire.dht import (
    MAX_DATAGRAM,
    Contact,
    Envelope,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Record,
    Store,
    StoreAck,
    Values,
    decode,
    encode,
    new_rpc_id,
)
from tests.integration.dht_fixtures import DhtNet, DhtPeer, WallClock, dht_net, settle

__all__ = ["dht_net"]

LIMIT = 15  # seconds per test


class RawClient:
    """A DHT speaker on a bare non-blocking UDP socket, under its own identity."""

    def __init__(self, clock: WallClock, identity: Identity | None = None, *, host: str = "127.0.0.1") -> None:
        self.clock = clock
        self.identity = identity or Identity.generate()
        self.signer = Signer(self.identity)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((host, 0))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def encode(
        self, msg: Message, *, identity: Identity | None = None, skew: float = 0.0, mac_key: bytes | None = None
    ) -> bytes:
        """Signed, or MAC'd (version 2) under ``mac_key``."""
        ident = identity or self.identity
        if mac_key is not None:
            return encode(
                msg, sender_pub=ident.public_key, now=self.clock() + skew, sign=lambda m: mac(mac_key, m), mac=True
            )
        return encode(msg, sender_pub=ident.public_key, now=self.clock() + skew, sign=Signer(ident).sign)

    def mac_key(self, peer: DhtPeer) -> bytes:
        """The MAC key this client shares with ``peer``."""
        key = self.signer.mac_key(peer.identity.public_key)
        assert key is not None
        return key

    def _verify_mac(self, pubkey: bytes, message: bytes, tag: bytes) -> bool:
        key = self.signer.mac_key(pubkey)
        return key is not None and hmac.compare_digest(mac(key, message), tag)

    def decode(self, data: bytes) -> Envelope:
        return decode(data, now=self.clock(), verify=self.signer.verify, max_skew=300.0, verify_mac=self._verify_mac)

    async def send_to(self, data: bytes, address: tuple[str, int]) -> None:
        self.sock.sendto(data, address)  # loopback takes a datagram at once
        await trio.lowlevel.checkpoint()

    async def send_raw(self, data: bytes, peer: DhtPeer) -> None:
        host, port = peer.address.rsplit(":", 1)
        await self.send_to(data, (host, int(port)))

    async def send(self, msg: Message, peer: DhtPeer) -> None:
        await self.send_raw(self.encode(msg), peer)

    async def receive(self) -> tuple[Envelope, tuple[str, int]]:
        while True:
            try:
                data, source = self.sock.recvfrom(4096)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            return self.decode(data), source

    async def ask(self, msg: Message, peer: DhtPeer, *, mac_key: bytes | None = None) -> Message:
        """Send a request (MAC'd under ``mac_key`` if given) and return the answer with its rpc id (skipping anything
        else)."""
        await self.send_raw(self.encode(msg, mac_key=mac_key), peer)
        while True:
            envelope, _ = await self.receive()
            if envelope.message.rpc_id == msg.rpc_id:
                return envelope.message

    def drain(self) -> list[bytes]:
        """Datagrams already queued on the socket."""
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


def signed_record(publisher: Identity, key: bytes, value: bytes, clock: WallClock, ttl: float = 600) -> Record:
    return make_record(
        key=key,
        value=value,
        publisher=publisher.public_key,
        seq=1,
        expires=int(clock() + ttl),
        sign=Signer(publisher).sign,
    )


async def test_forged_records_are_refused_and_counted(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        target, honest = await dht_net.form(2, request_timeout=0.1)
        attacker = RawClient(dht_net.clock)
        victim = Identity.generate()
        key = dht_key("ship", "tm_forged")
        # the attacker signs a record that names the victim as publisher
        impostor = make_record(
            key=key,
            value=b"i am the victim",
            publisher=victim.public_key,
            seq=1,
            expires=int(dht_net.clock() + 600),
            sign=attacker.signer.sign,
        )
        # a genuine record of the victim, altered after signing
        altered = dataclasses.replace(signed_record(victim, key, b"genuine", dht_net.clock), value=b"altered")
        for record in (impostor, altered):
            ack = await attacker.ask(Store(rpc_id=new_rpc_id(), record=record), target)
            assert ack == StoreAck(rpc_id=ack.rpc_id, stored=False, reason="bad_signature")
        assert target.refusals("bad_signature") == 2
        assert target.service.local_records(key) == []
        assert target.seen == []
        # a genuine record from the same sender is fine: whoever relays a record, the publisher's signature decides
        genuine = signed_record(victim, key, b"genuine", dht_net.clock)
        ack = await attacker.ask(Store(rpc_id=new_rpc_id(), record=genuine), target)
        assert isinstance(ack, StoreAck)
        assert ack.stored
        assert [r.value for r in await honest.service.get(key)] == [b"genuine"]
        attacker.close()


async def test_forged_records_in_lookup_answers_are_dropped(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        asker = await dht_net.start("asker")
        fake = RawClient(dht_net.clock)
        impostor_key = Identity.generate()
        key = dht_key("ship", "tm_lookup")
        honest_publisher = Identity.generate()
        good = signed_record(honest_publisher, key, b"good", dht_net.clock)
        forged = dataclasses.replace(signed_record(impostor_key, key, b"forged", dht_net.clock), value=b"swapped")
        unreachable = Contact(pubkey=Identity.generate().public_key, host="::1", port=9)

        async def serve_fake_node() -> None:
            while True:
                envelope, source = await fake.receive()
                msg = envelope.message
                reply: Message
                match msg:
                    case Ping(rpc_id=rpc_id):
                        reply = Pong(rpc_id=rpc_id)
                    case FindNode(rpc_id=rpc_id):
                        # a contact the asker cannot even send to (IPv6, from an IPv4 socket): skipped, not fatal
                        reply = Nodes(rpc_id=rpc_id, contacts=(unreachable,))
                    case FindValue(rpc_id=rpc_id):
                        # first an answer signed by another key (a spoofed node id), then the real one
                        spoof = Values(rpc_id=rpc_id, key=key, records=(good,), next_cursor=None)
                        await fake.send_to(fake.encode(spoof, identity=Identity.generate()), source)
                        reply = Values(rpc_id=rpc_id, key=key, records=(forged, good), next_cursor=None)
                    case _:
                        continue
                await fake.send_to(fake.encode(reply), source)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_fake_node)
            assert await asker.service.bootstrap([fake.address]) == 1
            assert [r.value for r in await asker.service.get(key)] == [b"good"]
            nursery.cancel_scope.cancel()
        assert asker.refusals("bad_signature") == 1
        assert asker.drops("bad_node_id") == 1
        send_failed = asker.metrics.registry.get_sample_value(
            "overlay_dht_requests_total", {"method": "find_node", "outcome": "send_failed"}
        )
        assert send_failed == 1
        assert [r.value for r in asker.seen] == [b"good"]
        fake.close()


async def test_oversized_values_and_datagrams_are_refused(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        small = await dht_net.start("small", max_value=256)
        big = await dht_net.start("big")
        await big.service.bootstrap([small.address])
        key = dht_key("uhrp", "large")
        # a valid 600-byte record: the small-limit node refuses it and says why
        outcome = await big.service.put(key, b"x" * 600, ttl=600)
        assert (outcome.stored, outcome.asked, outcome.refused) == (0, 1, {"value_too_large": 1})
        assert small.refusals("value_too_large") == 1
        assert small.service.local_records(key) == []
        # a datagram above the wire limit is dropped before it is parsed
        client = RawClient(dht_net.clock)
        await client.send_raw(b"\x82" + b"\x00" * (MAX_DATAGRAM + 100), small)
        assert isinstance(await client.ask(Ping(rpc_id=new_rpc_id()), small), Pong)
        assert small.drops("oversized") == 1
        client.close()


async def test_record_count_limits_refuse_and_count(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        holder = await dht_net.start("holder", max_records_per_key=2, max_records_per_publisher=2)
        client = RawClient(dht_net.clock)
        key = dht_key("ship", "tm_full")
        publishers = [Identity.generate() for _ in range(3)]
        acks = []
        for who in publishers:  # three publishers under one key: the third is one too many
            acks.append(
                await client.ask(
                    Store(rpc_id=new_rpc_id(), record=signed_record(who, key, b"v", dht_net.clock)), holder
                )
            )
        for name in ("a", "b", "c"):  # one publisher under three keys: the third is one too many
            record = signed_record(publishers[0], dht_key("tag", name), b"v", dht_net.clock)
            acks.append(await client.ask(Store(rpc_id=new_rpc_id(), record=record), holder))
        assert [(a.stored, a.reason) for a in acks if isinstance(a, StoreAck)] == [
            (True, "stored"),
            (True, "stored"),
            (False, "key_full"),
            (True, "stored"),
            (False, "publisher_full"),
            (False, "publisher_full"),
        ]
        assert holder.refusals("key_full") == 1
        assert holder.refusals("publisher_full") == 2
        assert len(holder.service.local_records(key)) == 2
        client.close()


async def test_a_flood_from_one_address_is_rate_limited(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        # the raw clients never answer requests: short timeouts keep the lookups that try them quick
        target, honest = await dht_net.form(2, max_datagrams_per_source=20, request_timeout=0.1)
        flooder = RawClient(dht_net.clock)
        prober = RawClient(dht_net.clock)
        pings = [flooder.encode(Ping(rpc_id=new_rpc_id())) for _ in range(10)]
        for i in range(200):
            await flooder.send_raw(pings[i % 10], target)
        assert isinstance(await prober.ask(Ping(rpc_id=new_rpc_id()), target), Pong)
        # at most two one-second windows' worth were answered; the rest were dropped before any parsing
        answered = sum(isinstance(flooder.decode(data).message, Pong) for data in flooder.drain())
        limited = target.drops("rate_limited")
        assert answered + limited == 200
        assert answered <= 40
        assert limited >= 160
        # the node keeps serving others
        key = dht_key("tag", "after-flood")
        await honest.service.put(key, b"still fine", ttl=60)
        assert [r.value for r in await target.service.get(key)] == [b"still fine"]
        flooder.close()
        prober.close()


async def test_a_flood_from_many_ports_of_one_ip_shares_its_budget(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        # each port stays within its own budget (10 of 20); together the 20 ports are far over the IP's 60
        target, honest = await dht_net.form(
            2, max_datagrams_per_source=20, max_datagrams_per_ip=60, request_timeout=0.1
        )
        attacker = Identity.generate()
        flooders = [RawClient(dht_net.clock, attacker, host="127.0.0.2") for _ in range(20)]
        pings = [flooders[0].encode(Ping(rpc_id=new_rpc_id())) for _ in range(10)]
        for flooder in flooders:
            for ping in pings:
                await flooder.send_raw(ping, target)
        # an honest speaker on 127.0.0.1 is answered right after; its PING, sent last, is read after the flood
        prober = RawClient(dht_net.clock)
        assert isinstance(await prober.ask(Ping(rpc_id=new_rpc_id()), target), Pong)
        answered = sum(isinstance(f.decode(data).message, Pong) for f in flooders for data in f.drain())
        limited = target.drops("rate_limited")
        assert answered + limited == 200
        assert answered <= 120  # at most two one-second windows of the IP's budget
        assert limited >= 80
        # the honest node on 127.0.0.1 is answered too, and the node keeps serving
        assert await honest.service.ping(target.address, expect_key=target.identity.public_key) > 0
        key = dht_key("tag", "after-port-flood")
        await honest.service.put(key, b"still fine", ttl=60)
        assert [r.value for r in await target.service.get(key)] == [b"still fine"]
        for flooder in flooders:
            flooder.close()
        prober.close()


async def test_malformed_datagrams_are_dropped_and_counted(dht_net: DhtNet) -> None:
    with trio.fail_after(LIMIT):
        target, honest = await dht_net.form(2, request_timeout=0.1)
        client = RawClient(dht_net.clock)
        ping = client.encode(Ping(rpc_id=new_rpc_id()))
        inner, sig = cbor2.loads(ping)
        junk = {
            "malformed": [
                b"\xff\x00garbage",  # not CBOR
                ping[:-5],  # truncated
                b"\x82\x59" + len(inner).to_bytes(2, "big") + inner + cbor2.dumps(sig),  # not canonical CBOR
                cbor2.dumps(["not", "a", "datagram"]),
            ],
            "bad_signature": [cbor2.dumps([inner, client.signer.sign(b"something else")], canonical=True)],
            "stale": [client.encode(Ping(rpc_id=new_rpc_id()), skew=-3600.0)],
            "unexpected": [client.encode(Pong(rpc_id=new_rpc_id()))],  # an answer to nothing we asked
        }
        for datagrams in junk.values():
            for data in datagrams:
                await client.send_raw(data, target)
        assert isinstance(await client.ask(Ping(rpc_id=new_rpc_id()), target), Pong)
        for reason, datagrams in junk.items():
            assert target.drops(reason) == len(datagrams), reason
        assert b"overlay_dht_drops_total" in target.metrics.render()
        # nothing of it reached the table (the client never answers the ping that would confirm its address),
        # and the node still serves others
        assert [c.node_id for c in target.service.contacts()] == [honest.service.node_id]
        key = dht_key("tag", "after-junk")
        await honest.service.put(key, b"ok", ttl=60)
        assert [r.value for r in await target.service.get(key)] == [b"ok"]
        client.close()


async def test_a_flood_spread_over_many_ips_is_bounded_by_the_signature_budget(dht_net: DhtNet) -> None:
    """Forty addresses, each far within its own budget, together over the node-wide budget of signature checks:
    the requests beyond it are dropped unchecked, and the node's own lookups go on (answers to its requests are
    not charged to that budget)."""
    with trio.fail_after(LIMIT):
        honest = await dht_net.start("honest", request_timeout=0.1)
        target = await dht_net.start("target", request_timeout=0.1, max_verifies_per_second=1)
        # the target asks, the honest node answers: nothing of that is charged to the target's budget
        assert await target.service.bootstrap([honest.address]) == 1
        await settle()
        attacker = Identity.generate()
        flooders = [RawClient(dht_net.clock, attacker, host=f"127.0.0.{i}") for i in range(2, 42)]
        overloaded = target.drops("overloaded")
        for flooder in flooders:
            for _ in range(5):
                await flooder.send(Ping(rpc_id=new_rpc_id()), target)
        await settle()  # loopback delivers during sendto: once every task waits, the target has read them all
        # answers only: the target also pings a sender it checked, before its routing table takes it
        answered = sum(isinstance(f.decode(data).message, Pong) for f in flooders for data in f.drain())
        assert target.drops("rate_limited") == 0  # every address stayed within its own budget
        assert answered <= 2  # one check a second (a second one if the budget refilled meanwhile)
        assert target.drops("overloaded") - overloaded == 200 - answered
        # the spent budget does not stop the target's own lookups
        key = dht_key("tag", "after-spread-flood")
        await honest.service.put(key, b"still fine", ttl=60)
        assert [r.value for r in await target.service.get(key)] == [b"still fine"]
        for flooder in flooders:
            flooder.close()


async def test_a_marked_request_is_answered_with_macs_and_a_mac_costs_no_signature_check(dht_net: DhtNet) -> None:
    """A signed request whose rpc id carries the mark is answered MAC'd, under the key the two share; from then on the
    client's MAC'd requests are answered without a signature check, so they take nothing from a spent budget. A MAC
    under another pair's key, or of other bytes, is dropped as a bad signature, and nothing answers it."""
    with trio.fail_after(LIMIT):
        target = await dht_net.start("target", max_verifies_per_second=1)
        client = RawClient(dht_net.clock)
        key = client.mac_key(target)
        await client.send(Ping(rpc_id=new_rpc_id(takes_macs=True)), target)
        envelope, _ = await client.receive()
        assert isinstance(envelope.message, Pong)
        assert envelope.mac
        # the budget is spent: a signed request now is dropped unchecked, a MAC'd one is answered
        await client.send(Ping(rpc_id=new_rpc_id()), target)
        assert isinstance(await client.ask(Ping(rpc_id=new_rpc_id()), target, mac_key=key), Pong)
        assert target.drops("overloaded") == 1
        stranger = Signer(Identity.generate()).mac_key(target.identity.public_key)
        inner, _tag = cbor2.loads(client.encode(Ping(rpc_id=new_rpc_id()), mac_key=key))
        forged = [
            client.encode(Ping(rpc_id=new_rpc_id()), mac_key=stranger),  # another pair's key
            cbor2.dumps([inner, bytes(32)], canonical=True),  # a MAC of nothing
        ]
        for data in forged:
            await client.send_raw(data, target)
        assert isinstance(await client.ask(Ping(rpc_id=new_rpc_id()), target, mac_key=key), Pong)
        assert target.drops("bad_signature") == 2
        assert target.service.statistics().macs_in == 2
        client.close()


async def test_a_node_that_does_not_take_macs_drops_them_and_signs_its_answers(dht_net: DhtNet) -> None:
    """``mac_datagrams = false`` is a node of version 1: a MAC'd request is dropped (``version``), and a marked one
    is answered signed, as such a node answers it."""
    with trio.fail_after(LIMIT):
        old = await dht_net.start("old", mac_datagrams=False)
        client = RawClient(dht_net.clock)
        await client.send_raw(client.encode(Ping(rpc_id=new_rpc_id()), mac_key=client.mac_key(old)), old)
        rpc_id = new_rpc_id(takes_macs=True)
        await client.send(Ping(rpc_id=rpc_id), old)
        envelope, _ = await client.receive()
        assert envelope.message == Pong(rpc_id=rpc_id)
        assert not envelope.mac
        assert old.drops("version") == 1
        assert old.service.statistics().macs_out == 0
        client.close()
