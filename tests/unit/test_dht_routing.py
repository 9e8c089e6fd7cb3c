"""The k-bucket routing table: splits, LRU order, full buckets, eviction, closest-node queries, refreshes."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.protocol.dht_routing import (
    ID_BITS,
    Evicted,
    PingOldest,
    RoutingTable,
    distance,
    id_to_int,
    int_to_id,
)
from overlay_node.wire.dht import Contact

_counter = itertools.count()


def make_contact(seed: int | None = None, *, port: int = 4000) -> Contact:
    n = next(_counter) if seed is None else seed
    return Contact(pubkey=b"\x02" + hashlib.sha256(b"routing-%d" % n).digest(), host="10.0.0.1", port=port)


def contacts_where(pred: Callable[[int], bool], count: int) -> list[Contact]:
    """The first ``count`` fresh contacts whose node id satisfies ``pred``."""
    found: list[Contact] = []
    while len(found) < count:
        c = make_contact()
        if pred(id_to_int(c.node_id)):
            found.append(c)
    return found


OWN = make_contact(10**9)
TOP = 1 << (ID_BITS - 1)


def far_half(value: int) -> bool:
    """Ids whose first bit differs from ours: they never share a bucket with our id after the first split."""
    return (value & TOP) != (id_to_int(OWN.node_id) & TOP)


def check_invariants(table: RoutingTable) -> None:
    own = id_to_int(table.own_id)
    assert table.buckets[0].lo == 0
    assert table.buckets[-1].hi == 1 << ID_BITS
    for a, b in itertools.pairwise(table.buckets):
        assert a.hi == b.lo
    seen: set[bytes] = set()
    for bucket in table.buckets:
        size = bucket.hi - bucket.lo
        assert size & (size - 1) == 0, "buckets are aligned blocks"
        assert bucket.lo % size == 0, "buckets are aligned blocks"
        assert len(bucket.entries) <= table.k
        assert len(bucket.replacements) <= table.replacement_size
        assert not set(bucket.entries) & set(bucket.replacements)
        for node_id in [*bucket.entries, *bucket.replacements]:
            assert bucket.covers(id_to_int(node_id))
            assert node_id != table.own_id
        assert not seen & set(bucket.entries)
        seen |= set(bucket.entries)
    # only the bucket holding our id was ever split: every other bucket is a sibling of our id's path
    deepest = max(b.depth for b in table.buckets)
    assert table.bucket_for(table.own_id).depth == deepest
    for bucket in table.buckets:
        if not bucket.covers(own):
            assert (bucket.lo ^ own) >> (ID_BITS - bucket.depth) == 1


def test_buckets_split_only_around_our_own_id() -> None:
    table = RoutingTable(OWN.node_id, k=4)
    for _ in range(300):
        for action in table.observe(make_contact(), now=1.0):
            assert isinstance(action, PingOldest)
        check_invariants(table)
    stats = table.statistics()
    assert stats.buckets == len(table.buckets) > 3
    assert stats.splits == stats.buckets - 1
    assert stats.contacts == len(table) == len(table.contacts())
    # the buckets next to our id fill up; far ones hold k and keep the rest as replacements
    assert all(len(b.entries) == 4 for b in table.buckets[:2])


def test_own_id_is_never_stored() -> None:
    table = RoutingTable(OWN.node_id, k=2)
    assert table.observe(OWN, now=0.0) == []
    assert len(table) == 0
    assert OWN.node_id not in table


def test_contacts_are_kept_least_recently_seen_first() -> None:
    table = RoutingTable(OWN.node_id, k=5)
    a, b, c = contacts_where(far_half, 3)
    for i, contact in enumerate((a, b, c)):
        table.observe(contact, now=float(i))
    bucket = table.bucket_for(a.node_id)
    assert bucket.contacts() == [a, b, c]
    moved = Contact(pubkey=a.pubkey, host="10.9.9.9", port=1)
    table.observe(moved, now=5.0)
    assert bucket.contacts() == [b, c, moved]
    assert table.get(a.node_id) == moved, "a node seen at a new endpoint is updated"


def _full_far_bucket(k: int = 3) -> tuple[RoutingTable, list[Contact]]:
    table = RoutingTable(OWN.node_id, k=k, replacement_size=2, ping_timeout=5.0)
    members = contacts_where(far_half, k)
    for i, contact in enumerate(members):
        assert table.observe(contact, now=float(i)) == []
    return table, members


def test_a_full_bucket_asks_to_ping_its_oldest_contact_once() -> None:
    table, members = _full_far_bucket()
    n1, n2, n3 = contacts_where(far_half, 3)
    assert table.observe(n1, now=10.0) == [PingOldest(contact=members[0])]
    # one ping at a time per bucket, until the ping timeout passes
    assert table.observe(n2, now=11.0) == []
    assert table.statistics().pings_outstanding == 1
    assert table.observe(n3, now=16.0) == [PingOldest(contact=members[0])]
    bucket = table.bucket_for(n1.node_id)
    assert list(bucket.replacements) == [n2.node_id, n3.node_id], "replacement cache is bounded, newest last"
    assert n1.node_id not in table
    check_invariants(table)


def test_an_unanswered_ping_evicts_the_oldest_for_the_newest_replacement() -> None:
    table, members = _full_far_bucket()
    n1, n2 = contacts_where(far_half, 2)
    table.observe(n1, now=10.0)
    table.observe(n2, now=11.0)
    actions = table.on_ping_timeout(members[0].node_id, now=15.0)
    assert actions == [Evicted(contact=members[0], reason="ping_timeout", replaced_by=n2)]
    assert members[0].node_id not in table
    assert n2.node_id in table
    assert table.bucket_for(n1.node_id).pinging is None
    assert table.statistics().evictions == 1
    assert table.on_ping_timeout(members[0].node_id, now=16.0) == [], "a second report is a no-op"
    check_invariants(table)


def test_an_answered_ping_keeps_the_old_contact() -> None:
    table, members = _full_far_bucket()
    (newcomer,) = contacts_where(far_half, 1)
    assert table.observe(newcomer, now=10.0) == [PingOldest(contact=members[0])]
    table.observe(members[0], now=10.5)  # the PONG
    bucket = table.bucket_for(newcomer.node_id)
    assert bucket.contacts() == [members[1], members[2], members[0]]
    assert bucket.pinging is None
    assert newcomer.node_id in bucket.replacements
    assert newcomer.node_id not in table


def test_repeated_request_failures_evict_and_an_answer_resets_the_count() -> None:
    table = RoutingTable(OWN.node_id, k=3, max_failures=3)
    a, b = contacts_where(far_half, 2)
    table.observe(a, now=0.0)
    table.observe(b, now=0.0)
    assert table.on_request_failed(a.node_id, now=1.0) == []
    assert table.on_request_failed(a.node_id, now=2.0) == []
    assert table.failures(a.node_id) == 2
    table.observe(a, now=3.0)
    assert table.failures(a.node_id) == 0
    for t in (4.0, 5.0):
        assert table.on_request_failed(a.node_id, now=t) == []
    assert table.on_request_failed(a.node_id, now=6.0) == [Evicted(contact=a, reason="failures")]
    assert a.node_id not in table
    assert b.node_id in table
    assert table.on_request_failed(a.node_id, now=7.0) == []


def test_remove() -> None:
    table = RoutingTable(OWN.node_id, k=3)
    (a,) = contacts_where(far_half, 1)
    table.observe(a, now=0.0)
    assert table.remove(a.node_id) is True
    assert table.remove(a.node_id) is False
    assert len(table) == 0


@settings(max_examples=60, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 2**32), min_size=0, max_size=120, unique=True),
    target=st.binary(min_size=32, max_size=32),
    k=st.integers(1, 8),
    n=st.integers(0, 30),
)
def test_closest_matches_brute_force(seeds: list[int], target: bytes, k: int, n: int) -> None:
    table = RoutingTable(OWN.node_id, k=k)
    for seed in seeds:
        table.observe(make_contact(seed), now=0.0)
    check_invariants(table)
    expected = sorted(table.contacts(), key=lambda c: distance(c.node_id, target))[:n]
    assert table.closest(target, n) == expected
    if expected:
        skip = frozenset({expected[0].node_id})
        assert (
            table.closest(target, n, exclude=skip)
            == [
                c for c in sorted(table.contacts(), key=lambda c: distance(c.node_id, target)) if c.node_id not in skip
            ][:n]
        )


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["observe", "move", "fail", "ping_timeout", "remove", "ask"]), st.integers(0, 12)),
        max_size=120,
    ),
    k=st.integers(1, 6),
)
def test_closest_answers_kept_between_changes_match_a_recount(steps: list[tuple[str, int]], k: int) -> None:
    """Questions asked again and again while contacts join, move, fail and leave: every answer is the one a
    recount over the table gives (invariant 6: a kept answer never outlives the change that alters it)."""
    table = RoutingTable(OWN.node_id, k=k, max_failures=2)
    targets = [hashlib.sha256(b"target%d" % i).digest() for i in range(3)]
    now = 0.0
    for op, seed in steps:
        now += 1.0
        contact = make_contact(seed)
        if op == "observe":
            table.observe(contact, now)
        elif op == "move":
            table.observe(make_contact(seed, port=5000 + int(now)), now)
        elif op == "fail":
            table.on_request_failed(contact.node_id, now)
        elif op == "ping_timeout":
            table.on_ping_timeout(contact.node_id, now)
        elif op == "remove":
            table.remove(contact.node_id)
        for target in targets if op == "ask" else targets[:1]:
            for n, skip in ((k, frozenset()), (2, frozenset({contact.node_id}))):
                ordered = sorted(table.contacts(), key=lambda c: distance(c.node_id, target))
                expected = [c for c in ordered if c.node_id not in skip][:n]
                assert table.closest(target, n, exclude=skip) == expected  # contacts compare by address too
    check_invariants(table)


def test_closest_defaults_to_k() -> None:
    table = RoutingTable(OWN.node_id, k=3)
    for _ in range(50):
        table.observe(make_contact(), now=0.0)
    assert len(table.closest(OWN.node_id)) == 3


def _ids_in(table: RoutingTable, targets: list[bytes]) -> Iterator[int]:
    for target in targets:
        yield table.buckets.index(table.bucket_for(target))


def test_stale_buckets_are_refreshed_with_random_ids_in_their_range() -> None:
    table = RoutingTable(OWN.node_id, k=2, refresh_interval=100.0, now=0.0, rng=random.Random(7))
    for _ in range(40):
        table.observe(make_contact(), now=0.0)
    assert table.due_refreshes(now=99.0) == []
    assert table.next_refresh_at() == 100.0
    targets = table.due_refreshes(now=100.0)
    assert sorted(_ids_in(table, targets)) == list(range(len(table.buckets))), "one target per bucket"
    assert table.due_refreshes(now=150.0) == [], "a returned refresh counts as a lookup"
    # a lookup into one bucket keeps it fresh; the others come due again
    looked_up = table.buckets[0]
    table.mark_lookup(int_to_id(looked_up.lo), now=180.0)
    again = table.due_refreshes(now=200.0)
    assert sorted(_ids_in(table, again)) == list(range(1, len(table.buckets)))
    assert table.next_refresh_at() == 280.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="own_id must be 32 bytes"):
        RoutingTable(b"short")
    with pytest.raises(ValueError, match="k and max_failures must be >= 1"):
        RoutingTable(OWN.node_id, k=0)
