"""Signed multi-publisher records: the store's rules and limits, republishing, and re-replication decisions."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from coincurve import PrivateKey, PublicKey

from overlay_node.protocol.dht_records import (
    OwnRecords,
    PutResult,
    RecordLimits,
    RecordStore,
    Replicate,
    Republish,
    make_record,
    record_signing_bytes,
    record_size,
    renew_record,
    replicate_to,
    verify_record,
)
from overlay_node.protocol.dht_routing import RoutingTable, distance
from overlay_node.wire.dht import Contact, Record

NOW = 1_700_000_000.0
KEY = hashlib.sha256(b"ship:tm_records").digest()
OTHER_KEY = hashlib.sha256(b"slap:ls_records").digest()


def verify(pub: bytes, message: bytes, sig: bytes) -> bool:
    try:
        return PublicKey(pub).verify(sig, message)  # ECDSA over SHA-256(message)
    except ValueError:
        return False


class Publisher:
    def __init__(self, n: int) -> None:
        self.priv = PrivateKey(hashlib.sha256(b"records-%d" % n).digest())
        self.pub = self.priv.public_key.format()

    def sign(self, message: bytes) -> bytes:
        return self.priv.sign(message)

    def record(self, seq: int = 1, value: bytes = b"v", *, key: bytes = KEY, ttl: float = 3600.0) -> Record:
        return make_record(key=key, value=value, publisher=self.pub, seq=seq, expires=int(NOW + ttl), sign=self.sign)


ALICE, BOB, CAROL = Publisher(1), Publisher(2), Publisher(3)


def test_signature_covers_the_canonical_cbor_of_the_other_fields() -> None:
    record = ALICE.record(7, b"hello")
    payload = record_signing_bytes(key=KEY, value=b"hello", publisher=ALICE.pub, seq=7, expires=record.expires)
    fields = {"key": KEY, "value": b"hello", "publisher": ALICE.pub, "seq": 7, "expires": record.expires}
    assert payload == cbor2.dumps(fields, canonical=True)
    assert PublicKey(ALICE.pub).verify(record.sig, payload)
    assert verify_record(record, verify)


def test_newer_seq_replaces_and_equal_or_older_is_ignored() -> None:
    store = RecordStore(verify)
    assert store.put(ALICE.record(2, b"two"), NOW) is PutResult.STORED
    assert store.put(ALICE.record(3, b"three"), NOW) is PutResult.REPLACED
    assert store.put(ALICE.record(3, b"other three"), NOW) is PutResult.STALE
    assert store.put(ALICE.record(1, b"one"), NOW) is PutResult.STALE
    assert not PutResult.STALE.refused
    assert not PutResult.STALE.accepted
    assert [r.value for r in store.get(KEY)] == [b"three"]
    assert store.refusals == {}, "stale is not an abuse refusal"


def test_a_key_holds_one_record_per_publisher() -> None:
    store = RecordStore(verify)
    for p in (ALICE, BOB, CAROL):
        assert store.put(p.record(1, b"host of " + p.pub[:4]), NOW).accepted
    assert store.put(ALICE.record(1, b"x", key=OTHER_KEY), NOW).accepted
    assert [r.publisher for r in store.get(KEY)] == sorted(p.pub for p in (ALICE, BOB, CAROL))
    assert len(store) == 4
    assert sorted(store.held_keys()) == sorted([KEY, OTHER_KEY])
    stats = store.statistics()
    assert (stats.records, stats.keys, stats.publishers) == (4, 2, 3)
    assert stats.total_bytes == sum(record_size(r) for r in store.all_records())


def test_tombstones_revoke_and_keep_older_records_out() -> None:
    store = RecordStore(verify)
    store.put(ALICE.record(1, b"live"), NOW)
    store.put(BOB.record(1, b"bob"), NOW)
    tombstone = ALICE.record(2, b"")
    assert tombstone.is_tombstone
    assert store.put(tombstone, NOW) is PutResult.REPLACED
    assert [r.publisher for r in store.live(KEY, NOW)] == [BOB.pub]
    assert tombstone in store.get(KEY), "tombstones are served so that revocations spread"
    assert store.put(ALICE.record(1, b"live"), NOW) is PutResult.STALE
    assert store.put(ALICE.record(3, b"back"), NOW) is PutResult.REPLACED, "a newer record may follow a revocation"
    # a tombstone for a record never seen is kept too
    assert store.put(CAROL.record(5, b""), NOW) is PutResult.STORED
    assert store.put(CAROL.record(4, b"late"), NOW) is PutResult.STALE
    assert store.statistics().tombstones == 1


def test_records_expire() -> None:
    store = RecordStore(verify)
    short, long = ALICE.record(1, ttl=60), BOB.record(1, ttl=600)
    store.put(short, NOW)
    store.put(long, NOW)
    store.put(ALICE.record(2, ttl=120), NOW)  # replaces `short`: its old expiry must not drop the new one
    assert store.get(KEY, NOW + 100) == sorted(store.get(KEY), key=lambda r: r.publisher)
    assert store.expire(NOW + 60) == []
    assert [r.seq for r in store.expire(NOW + 120)] == [2]
    assert store.get(KEY, NOW + 300) == [long]
    assert store.live(KEY, NOW + 700) == []
    assert store.expire(NOW + 601) == [long]
    assert len(store) == 0
    assert store.statistics().total_bytes == 0
    assert store.held_keys() == []


def test_expiry_is_checked_on_arrival() -> None:
    store = RecordStore(verify)
    assert store.put(ALICE.record(1, ttl=-1), NOW) is PutResult.EXPIRED
    assert store.put(ALICE.record(1, ttl=24 * 3600 + 60), NOW).accepted, "a little clock skew is tolerated"
    assert store.put(BOB.record(1, ttl=25 * 3600), NOW) is PutResult.EXPIRES_TOO_FAR
    assert store.refusals == {"expired": 1, "expires_too_far": 1}


def test_forged_and_mismatched_records_are_refused() -> None:
    store = RecordStore(verify)
    genuine = ALICE.record(1, b"genuine")
    altered = Record(key=KEY, value=b"altered", publisher=ALICE.pub, seq=1, expires=genuine.expires, sig=genuine.sig)
    assert store.put(altered, NOW) is PutResult.BAD_SIGNATURE
    # Bob signs but the record names Alice as publisher
    payload = record_signing_bytes(key=KEY, value=b"x", publisher=ALICE.pub, seq=9, expires=genuine.expires)
    claimed = Record(key=KEY, value=b"x", publisher=ALICE.pub, seq=9, expires=genuine.expires, sig=BOB.sign(payload))
    assert store.put(claimed, NOW) is PutResult.BAD_SIGNATURE
    # valid, but not from the publisher the caller requires
    assert store.put(BOB.record(1), NOW, expected_publisher=ALICE.pub) is PutResult.PUBLISHER_MISMATCH
    assert store.put(genuine, NOW, expected_publisher=ALICE.pub) is PutResult.STORED
    bad_key = Record(key=KEY, value=b"x", publisher=b"\x02" + bytes(32), seq=1, expires=genuine.expires, sig=b"\x30")
    assert store.put(bad_key, NOW) is PutResult.BAD_SIGNATURE
    assert store.refusals == {"bad_signature": 3, "publisher_mismatch": 1}
    assert store.get(KEY) == [genuine]


def test_every_limit_refuses_and_changes_nothing() -> None:
    limits = RecordLimits(max_value=100, max_per_key=2, max_per_publisher=2, max_total_bytes=700)
    store = RecordStore(verify, limits)
    assert store.put(ALICE.record(1, b"x" * 101), NOW) is PutResult.VALUE_TOO_LARGE
    assert store.put(ALICE.record(1, b"a" * 50), NOW).accepted
    assert store.put(BOB.record(1, b"b" * 50), NOW).accepted
    assert store.put(CAROL.record(1, b"c" * 50), NOW) is PutResult.KEY_FULL
    assert store.put(ALICE.record(2, b"a" * 60), NOW).accepted, "replacing does not count against the key"
    assert store.put(ALICE.record(1, b"a", key=OTHER_KEY), NOW).accepted
    third = hashlib.sha256(b"third").digest()
    assert store.put(ALICE.record(1, b"a", key=third), NOW) is PutResult.PUBLISHER_FULL
    before = store.statistics()
    assert store.put(BOB.record(1, b"b" * 100, key=OTHER_KEY), NOW) is PutResult.STORE_FULL
    after = store.statistics()
    assert (after.records, after.total_bytes) == (before.records, before.total_bytes)
    assert after.refusals == {"value_too_large": 1, "key_full": 1, "publisher_full": 1, "store_full": 1}
    # freeing space lets records in again
    assert store.remove(KEY, BOB.pub)
    assert not store.remove(KEY, BOB.pub)
    assert store.put(BOB.record(1, b"b" * 100, key=OTHER_KEY), NOW).accepted


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match=r"max_value must be in \[0, 1024\]"):
        RecordLimits(max_value=2000)
    with pytest.raises(ValueError, match=r"max_ttl must be in \(0, 86400\]"):
        RecordLimits(max_ttl=48 * 3600)
    with pytest.raises(ValueError, match="record limits must be >= 1"):
        RecordLimits(max_per_key=0)


def test_pages_follow_publisher_order() -> None:
    store = RecordStore(verify)
    for p in (ALICE, BOB, CAROL):
        store.put(p.record(1), NOW)
    ordered = store.get(KEY)
    assert store.page(KEY, None, NOW) == store.page(KEY, b"", NOW) == ordered
    assert store.page(KEY, ordered[0].publisher, NOW) == ordered[1:]
    assert store.page(KEY, ordered[-1].publisher, NOW) == []
    assert store.page(OTHER_KEY, None, NOW) == []


def test_own_records_are_pushed_again_and_renewed_before_expiry() -> None:
    own = OwnRecords(republish_interval=100.0, renew_fraction=0.25)
    record = ALICE.record(1, b"advert", ttl=1000)
    own.add(record, NOW)
    assert own.next_due() == NOW + 100
    assert own.due_republish(NOW + 99) == []
    assert own.due_republish(NOW + 100) == [Republish(record=record, renew=False)]
    assert own.due_republish(NOW + 150) == []
    # with a quarter of its lifetime left, the record is renewed (and stays due until the new one is added)
    assert own.due_republish(NOW + 750) == [Republish(record=record, renew=True)]
    assert own.due_republish(NOW + 751) == [Republish(record=record, renew=True)]
    renewed = renew_record(record, now=NOW + 751, ttl=1000, sign=ALICE.sign)
    assert (renewed.seq, renewed.expires, renewed.value) == (2, int(NOW + 1751), b"advert")
    assert verify_record(renewed, verify)
    own.add(renewed, NOW + 751)
    assert own.due_republish(NOW + 800) == []
    assert own.records() == [renewed]
    # a revocation is pushed like a record but never renewed, and forgotten once expired
    tombstone = ALICE.record(3, b"", ttl=1200)
    own.add(tombstone, NOW + 800)
    assert own.due_republish(NOW + 900) == [Republish(record=tombstone, renew=False)]
    assert own.records() == [tombstone]
    assert own.due_republish(NOW + 1200) == []
    assert own.records() == []
    own.add(BOB.record(1), NOW)
    own.remove(KEY, BOB.pub)
    assert own.next_due() is None


def test_renewal_never_exceeds_24_hours() -> None:
    renewed = renew_record(ALICE.record(1), now=NOW, ttl=10 * 24 * 3600, sign=ALICE.sign)
    assert renewed.expires == int(NOW + 24 * 3600)
    assert RecordStore(verify).put(renewed, NOW).accepted


def _contact(n: int) -> Contact:
    return Contact(pubkey=b"\x02" + hashlib.sha256(b"replica-%d" % n).digest(), host="10.1.0.1", port=1000 + n)


def test_new_closer_nodes_get_the_records_they_should_hold() -> None:
    own = _contact(0)
    others = [_contact(i) for i in range(1, 400)]
    key = KEY
    by_dist = sorted(others, key=lambda c: distance(c.node_id, key))
    # we are a holder: our table knows only nodes farther from the key than we are... except the newcomers
    far = [c for c in by_dist if distance(c.node_id, key) > distance(own.node_id, key)]
    near = [c for c in by_dist if distance(c.node_id, key) < distance(own.node_id, key)]
    table = RoutingTable(own.node_id, k=4)
    store = RecordStore(verify)
    for c in far[:60]:
        table.observe(c, now=0.0)
    store.put(ALICE.record(1, key=key), NOW)
    store.put(BOB.record(1, b"", key=key), NOW)  # tombstones are replicated too
    newcomer = near[-1] if near else far[0]
    plans = replicate_to(store, table, newcomer, NOW)
    assert plans == [Replicate(contact=newcomer, key=key, records=tuple(store.get(key)))]
    # a node far from the key gets nothing
    assert replicate_to(store, table, far[-1], NOW) == []
    # expired records are not sent
    assert replicate_to(store, table, newcomer, NOW + 7200) == []
    assert replicate_to(store, table, own, NOW) == []


def test_only_the_closest_holders_push() -> None:
    own = _contact(0)
    others = [_contact(i) for i in range(1, 400)]
    # a key where we are far: many known nodes are closer to it than we are
    key = next(
        k
        for k in (hashlib.sha256(b"key-%d" % i).digest() for i in range(1000))
        if sum(distance(c.node_id, k) < distance(own.node_id, k) for c in others[:50]) >= 10
    )
    table = RoutingTable(own.node_id, k=20)
    for c in others[:50]:
        table.observe(c, now=0.0)
    store = RecordStore(verify)
    store.put(ALICE.record(1, key=key), NOW)
    closest_new = min(others[50:], key=lambda c: distance(c.node_id, key))
    assert replicate_to(store, table, closest_new, NOW, push_rank=3) == []
    assert replicate_to(store, table, closest_new, NOW, push_rank=100) != []
