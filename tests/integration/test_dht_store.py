"""The ``dht`` repository on a real SQLite file, the UDP endpoint's address handling, and VALUES paging."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from overlay_node.config import StoreSection
from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest, DialError, TransportError
from overlay_node.net.udp import format_address, open_udp_endpoint, parse_host_port, resolve_address
from overlay_node.protocol.dht_records import make_record
from overlay_node.services.dht_rpc import Signer
from overlay_node.services.dht_saver import RecordSaver
from overlay_node.store import MIGRATIONS, open_store
from overlay_node.store.dht import DhtWrites, OwnRecord
from overlay_node.wire.dht import MAX_DATAGRAM, Contact, Record, encode, pack_values
from tests.conftest import runs_without_yielding

CONFIG = StoreSection(busy_timeout=5.0, read_connections=2)
LIMIT = 10
NOW = 1_700_000_000
ALICE, BOB = Identity.generate(), Identity.generate()
KEY = hashlib.sha256(b"ship:tm_store").digest()


def record(who: Identity, seq: int, value: bytes = b"v", *, key: bytes = KEY, expires: int = NOW + 600) -> Record:
    return make_record(key=key, value=value, publisher=who.public_key, seq=seq, expires=expires, sign=Signer(who).sign)


async def test_records_round_trip_and_only_newer_seqs_replace(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(tmp_path / "n.db", CONFIG) as store:
            assert "0003_dht" in MIGRATIONS.names()
            assert await store.dht.load_records() == []
            assert await store.dht.load_own() == []
            a1, b1 = record(ALICE, 1, b"a1"), record(BOB, 1, b"", expires=NOW + 5)  # a tombstone too
            await store.dht.apply(DhtWrites(save=(a1, b1)))
            assert sorted(await store.dht.load_records(), key=lambda r: r.publisher) == sorted(
                [a1, b1], key=lambda r: r.publisher
            )
            # a late, older write does not bring an older record back
            a2 = record(ALICE, 2, b"a2")
            await store.dht.apply(DhtWrites(save=(a2,)))
            await store.dht.apply(DhtWrites(save=(a1,)))
            assert a2 in await store.dht.load_records()
            assert a1 not in await store.dht.load_records()
            # deletion, then expiry
            await store.dht.apply(DhtWrites(delete=((KEY, ALICE.public_key),)))
            assert await store.dht.load_records() == [b1]
            assert await store.dht.delete_expired(NOW + 5) == 1
            assert await store.dht.load_records() == []
            await store.dht.apply(DhtWrites())  # an empty batch is a no-op


async def test_own_records_round_trip(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(tmp_path / "n.db", CONFIG) as store:
            other_key = hashlib.sha256(b"slap:ls_store").digest()
            mine = OwnRecord(record=record(ALICE, 7), ttl=600.0)
            other = OwnRecord(record=record(ALICE, 1, key=other_key), ttl=60.0)
            await store.dht.apply(DhtWrites(save_own=(mine, other)))
            renewed = OwnRecord(record=record(ALICE, 8, expires=NOW + 1200), ttl=600.0)
            await store.dht.apply(DhtWrites(save_own=(renewed,), delete_own=(other_key,)))
        async with open_store(tmp_path / "n.db", CONFIG) as store:
            assert await store.dht.load_own() == [renewed]


def test_host_port_parsing() -> None:
    assert parse_host_port("127.0.0.1:4762") == ("127.0.0.1", 4762)
    assert parse_host_port("[::1]:80") == ("::1", 80)
    assert parse_host_port("seed.example:1") == ("seed.example", 1)
    for bad in ("", "host", "host:", ":80", "host:0", "host:65536", "::1:80", "[::1]80", "host:x"):
        with pytest.raises(BadRequest):
            parse_host_port(bad)
    assert format_address(("::1", 5)) == "[::1]:5"
    assert format_address(("10.0.0.1", 5)) == "10.0.0.1:5"


async def test_resolving_and_binding() -> None:
    with trio.fail_after(LIMIT):
        assert await resolve_address("[::ffff:127.0.0.1]:9") == ("127.0.0.1", 9)
        with pytest.raises(DialError):
            await resolve_address("no-such-host.invalid:9")
        with pytest.raises(TransportError, match="IP address"):
            async with open_udp_endpoint("localhost", 0):
                pass
        async with open_udp_endpoint("127.0.0.1", 0) as first:
            assert first.address[0] == "127.0.0.1"
            assert first.address[1] > 0
            with pytest.raises(TransportError, match="cannot bind"):
                async with open_udp_endpoint("127.0.0.1", first.address[1]):
                    pass
            async with open_udp_endpoint("127.0.0.1", 0) as second:
                await second.send(b"hello", first.address)
                assert await first.receive() == (b"hello", second.address)
                assert await second.resolve(f"localhost:{first.address[1]}") == first.address
                with pytest.raises(DialError):
                    await second.resolve("[::1]:9")


async def test_a_send_is_a_cancel_point_but_yields_only_for_room_in_the_buffer() -> None:
    # net/udp.py invariant 4: a burst of sends runs without handing the loop to other tasks
    with trio.fail_after(LIMIT):
        async with open_udp_endpoint("127.0.0.1", 0) as first, open_udp_endpoint("127.0.0.1", 0) as second:

            async def burst() -> None:
                for n in range(20):
                    await second.send(b"burst %d" % n, first.address)

            assert await runs_without_yielding(burst)
            for n in range(20):
                assert await first.receive() == (b"burst %d" % n, second.address)
            with trio.CancelScope() as scope:
                scope.cancel()
                await second.send(b"never", first.address)
            assert scope.cancelled_caught
            await second.send(b"after", first.address)
            assert await first.receive() == (b"after", second.address)


def test_every_packed_values_page_encodes() -> None:
    """Regression: pages were sized without room for their ``next_cursor``, so a nearly full page that had a cursor
    did not fit in a datagram and the node failed to answer."""
    signer = Signer(ALICE)
    publishers = sorted((Identity.generate() for _ in range(3)), key=lambda i: i.public_key)
    contacts = [Contact(pubkey=i.public_key, host="127.0.0.1", port=40000 + n) for n, i in enumerate(publishers)]
    for size in range(150, 700, 7):
        records = [record(who, 1, bytes([n]) * size) for n, who in enumerate(publishers)]
        records.sort(key=lambda r: r.publisher)
        for first_page, page_contacts in ((True, contacts), (True, []), (False, [])):
            page = pack_values(
                rpc_id=b"\x01" * 8, key=KEY, records=records, contacts=page_contacts, first_page=first_page
            )
            data = encode(page, sender_pub=ALICE.public_key, now=float(NOW), sign=signer.sign)
            assert len(data) <= MAX_DATAGRAM


async def test_a_save_cancelled_while_queued_behind_another_write_is_written_by_the_next_flush(tmp_path: Path) -> None:
    """The service stopping cancels the saver while its batch waits for the writer (the write is withdrawn): the
    batch goes back in the queue, and the final flush writes it (it was lost before, and a restarted node forgot a
    record it had acknowledged)."""
    with trio.fail_after(LIMIT):
        async with open_store(tmp_path / "n.db", CONFIG) as store:
            saver = RecordSaver(store.dht)
            held = record(ALICE, 1, b"held")
            saver.save(held)
            release = threading.Event()
            async with trio.open_nursery() as nursery:
                # the writer busy with another write, so the saver's batch waits in its queue
                nursery.start_soon(store._db.write, lambda _conn: release.wait(LIMIT))
                await trio.testing.wait_all_tasks_blocked()
                with trio.CancelScope() as scope:
                    nursery.start_soon(lambda: _cancel_when_blocked(scope))
                    await saver.flush()
                assert scope.cancelled_caught
                release.set()
            assert await store.dht.load_records() == []  # the cancelled batch was not written
            await saver.flush()
            assert await store.dht.load_records() == [held]


async def _cancel_when_blocked(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()
