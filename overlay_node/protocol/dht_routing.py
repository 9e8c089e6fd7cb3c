"""The Kademlia routing table: k-buckets over the 256-bit XOR metric, as a sans-IO state machine.

Invariants:

1. The buckets partition the id space ``[0, 2**256)`` into aligned ranges ``[lo, hi)``, ordered by ``lo``. Only
   the bucket holding our own id is ever split (the standard rule), so there are at most 257 buckets.
2. A bucket holds at most ``k`` live contacts, least recently seen first; it never holds our own id and never the
   same node twice. Its replacement cache holds at most ``replacement_size`` contacts, most recent last, none of
   which is in the bucket.
3. Every contact in a bucket (or its replacement cache) has a node id inside the bucket's range.
4. The table never performs I/O: methods take ``now`` (protocol time, ``trio.current_time()``) and return actions
   (:class:`PingOldest`, :class:`Evicted`) for the DHT service to carry out or record.
5. A bucket has at most one ping to its oldest contact outstanding; another is asked for only after
   ``ping_timeout`` has passed without :meth:`RoutingTable.on_ping_timeout` or an answer.
6. :meth:`RoutingTable.closest` answers a question it answered before from what it said then, as long as no contact
   joined, left or moved (a new address) since: those are the only changes that alter its answer (being seen again
   moves a contact within its bucket, which the XOR order ignores). Every such change starts a new set of answers.

Theory of operation: every verified datagram's sender is passed to :meth:`RoutingTable.observe`. A known contact
moves to the tail (most recently seen) and its failure count resets. A new contact goes into its bucket if there
is room; if the bucket is full and holds our id, the bucket splits and the insert is retried; otherwise the newcomer
waits in the replacement cache and the table asks for a ping of the bucket's oldest contact (Kademlia prefers old,
proven contacts). If that ping fails (:meth:`on_ping_timeout`) the oldest is evicted and the freshest replacement
takes its place; if it answers, its ``observe`` moves it to the tail and the newcomer stays a replacement.
Requests that time out during lookups are counted with :meth:`on_request_failed`; after ``max_failures`` in a row
the contact is evicted the same way. :meth:`due_refreshes` names a random id in each bucket that has not been
looked up for ``refresh_interval``, for the service to run a lookup on.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from overlay_node.wire.dht import NODE_ID_LEN, Contact

__all__ = [
    "ID_BITS",
    "Bucket",
    "Evicted",
    "PingOldest",
    "RoutingAction",
    "RoutingStats",
    "RoutingTable",
    "distance",
    "id_to_int",
    "int_to_id",
]

logger = logging.getLogger(__name__)

#: answers of closest() kept between changes of the table (invariant 6); past this many they start again
_ANSWERS_KEPT: Final = 1024

ID_BITS: Final = NODE_ID_LEN * 8
ID_SPACE: Final = 1 << ID_BITS


def id_to_int(node_id: bytes) -> int:
    """A 32-byte id as an unsigned big-endian integer."""
    return int.from_bytes(node_id, "big")


def int_to_id(value: int) -> bytes:
    """An integer in ``[0, 2**256)`` as a 32-byte id."""
    return value.to_bytes(NODE_ID_LEN, "big")


def distance(a: bytes, b: bytes) -> int:
    """The XOR distance of two ids, as an integer."""
    return id_to_int(a) ^ id_to_int(b)


@dataclass(frozen=True, slots=True, kw_only=True)
class PingOldest:
    """Ping ``contact`` (the least recently seen of a full bucket); report a failure with ``on_ping_timeout``."""

    contact: Contact


@dataclass(frozen=True, slots=True, kw_only=True)
class Evicted:
    """``contact`` left the table (``reason``: ``ping_timeout``, ``failures`` or ``removed``)."""

    contact: Contact
    reason: str
    replaced_by: Contact | None = None


RoutingAction = PingOldest | Evicted


@dataclass(slots=True)
class _Entry:
    contact: Contact
    last_seen: float
    failures: int = 0
    #: the node id as an integer, for distances (every answer to a lookup computes them)
    number: int = field(init=False)

    def __post_init__(self) -> None:
        self.number = id_to_int(self.contact.node_id)


@dataclass(slots=True)
class Bucket:
    """One k-bucket: the ids in ``[lo, hi)``."""

    lo: int
    hi: int
    entries: OrderedDict[bytes, _Entry] = field(default_factory=OrderedDict)
    replacements: OrderedDict[bytes, Contact] = field(default_factory=OrderedDict)
    #: protocol time of the last lookup into this bucket (or its creation); drives refreshes
    last_lookup: float = 0.0
    #: node id of the oldest contact being pinged, and when the ping was asked for
    pinging: bytes | None = None
    ping_since: float = 0.0

    def covers(self, value: int) -> bool:
        """True if the id ``value`` falls in this bucket's range."""
        return self.lo <= value < self.hi

    @property
    def depth(self) -> int:
        """Number of leading id bits shared by every id in this bucket."""
        return ID_BITS - (self.hi - self.lo).bit_length() + 1

    def contacts(self) -> list[Contact]:
        """Contacts from least to most recently seen."""
        return [e.contact for e in self.entries.values()]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingStats:
    """A snapshot of the table for metrics and ``ctl`` output."""

    contacts: int
    buckets: int
    replacements: int
    pings_outstanding: int
    splits: int
    evictions: int
    depth: int


class RoutingTable:
    """The k-bucket routing table of one node (see the module docstring for the rules).

    Args:
        own_id: our 32-byte node id.
        k: bucket size.
        replacement_size: replacement cache size per bucket.
        max_failures: consecutive request failures that evict a contact.
        ping_timeout: after this long an unanswered oldest-contact ping may be asked for again.
        refresh_interval: a bucket not looked up for this long is due a refresh.
        now: protocol time at creation (buckets count as fresh from then).
        rng: random source for refresh targets (seed it in tests).
    """

    def __init__(
        self,
        own_id: bytes,
        *,
        k: int = 20,
        replacement_size: int = 20,
        max_failures: int = 3,
        ping_timeout: float = 5.0,
        refresh_interval: float = 3600.0,
        now: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if len(own_id) != NODE_ID_LEN:
            raise ValueError("own_id must be 32 bytes")
        if k < 1 or replacement_size < 0 or max_failures < 1:
            raise ValueError("k and max_failures must be >= 1, replacement_size >= 0")
        self.own_id = own_id
        self._own = id_to_int(own_id)
        self.k = k
        self.replacement_size = replacement_size
        self.max_failures = max_failures
        self.ping_timeout = ping_timeout
        self.refresh_interval = refresh_interval
        self._rng = rng or random.Random()
        self.buckets: list[Bucket] = [Bucket(0, ID_SPACE, last_lookup=now)]
        self._los: list[int] = [0]
        self._splits = 0
        self._evictions = 0
        #: answers of closest() since the last change that alters them (invariant 6): every node that asks about a
        #: key gets much the same contacts, and computing them is a sort of the buckets near the key
        self._answers: dict[tuple[bytes, int, frozenset[bytes]], tuple[Contact, ...]] = {}

    # -- lookup helpers ------------------------------------------------------------------------------------------

    def _index(self, value: int) -> int:
        return bisect.bisect_right(self._los, value) - 1

    def bucket_for(self, node_id: bytes) -> Bucket:
        """The bucket whose range holds ``node_id``."""
        return self.buckets[self._index(id_to_int(node_id))]

    def __len__(self) -> int:
        return sum(len(b.entries) for b in self.buckets)

    def __contains__(self, node_id: object) -> bool:
        return (
            isinstance(node_id, bytes) and len(node_id) == NODE_ID_LEN and node_id in self.bucket_for(node_id).entries
        )

    def get(self, node_id: bytes) -> Contact | None:
        """The contact with ``node_id`` if it is in the table."""
        entry = self.bucket_for(node_id).entries.get(node_id)
        return entry.contact if entry else None

    def contacts(self) -> list[Contact]:
        """Every contact in the table, bucket by bucket."""
        return [c for b in self.buckets for c in b.contacts()]

    # -- updates -------------------------------------------------------------------------------------------------

    def observe(self, contact: Contact, now: float) -> list[RoutingAction]:
        """Record that ``contact`` was heard from (a verified datagram or an answer).

        Returns:
            ``[PingOldest(...)]`` when the bucket is full and its oldest contact should be checked, else ``[]``.
        """
        node_id = contact.node_id
        if node_id == self.own_id:
            return []
        while True:
            bucket = self.buckets[self._index(id_to_int(node_id))]
            entry = bucket.entries.get(node_id)
            if entry is not None:
                # a known contact: most recently seen now; a changed endpoint is taken as the node's move
                if entry.contact != contact:
                    self._answers.clear()
                entry.contact = contact
                entry.last_seen = now
                entry.failures = 0
                bucket.entries.move_to_end(node_id)
                if bucket.pinging == node_id:
                    bucket.pinging = None
                return []
            if len(bucket.entries) < self.k:
                self._answers.clear()
                bucket.entries[node_id] = _Entry(contact, now)
                bucket.replacements.pop(node_id, None)
                return []
            if bucket.covers(self._own) and bucket.hi - bucket.lo > 1:
                self._split(bucket)
                continue
            return self._add_replacement(bucket, contact, now)

    def _add_replacement(self, bucket: Bucket, contact: Contact, now: float) -> list[RoutingAction]:
        if self.replacement_size:
            bucket.replacements.pop(contact.node_id, None)
            bucket.replacements[contact.node_id] = contact
            while len(bucket.replacements) > self.replacement_size:
                bucket.replacements.popitem(last=False)
        if bucket.pinging is not None and now < bucket.ping_since + self.ping_timeout:
            return []
        oldest_id, oldest = next(iter(bucket.entries.items()))
        bucket.pinging = oldest_id
        bucket.ping_since = now
        return [PingOldest(contact=oldest.contact)]

    def _split(self, bucket: Bucket) -> None:
        index = self.buckets.index(bucket)
        mid = (bucket.lo + bucket.hi) // 2
        low = Bucket(bucket.lo, mid, last_lookup=bucket.last_lookup)
        high = Bucket(mid, bucket.hi, last_lookup=bucket.last_lookup)
        for node_id, entry in bucket.entries.items():
            (low if id_to_int(node_id) < mid else high).entries[node_id] = entry
        for node_id, contact in bucket.replacements.items():
            (low if id_to_int(node_id) < mid else high).replacements[node_id] = contact
        for half in (low, high):
            if bucket.pinging in half.entries:
                half.pinging, half.ping_since = bucket.pinging, bucket.ping_since
        self.buckets[index : index + 1] = [low, high]
        self._los[index : index + 1] = [low.lo, high.lo]
        self._splits += 1
        logger.debug("dht routing: split bucket at depth %d", low.depth)

    def _evict(self, bucket: Bucket, node_id: bytes, reason: str) -> Evicted:
        self._answers.clear()
        entry = bucket.entries.pop(node_id)
        if bucket.pinging == node_id:
            bucket.pinging = None
        replaced_by: Contact | None = None
        if bucket.replacements:
            rid, replaced_by = bucket.replacements.popitem(last=True)
            bucket.entries[rid] = _Entry(replaced_by, entry.last_seen)
        self._evictions += 1
        logger.debug("dht routing: evicted %s (%s)", node_id.hex()[:16], reason)
        return Evicted(contact=entry.contact, reason=reason, replaced_by=replaced_by)

    def on_ping_timeout(
        self,
        node_id: bytes,
        now: float,  # noqa: ARG002 -- methods take now (invariant 4); callers name it
    ) -> list[RoutingAction]:
        """The ping of ``node_id`` (asked for by :class:`PingOldest`, or any liveness check) went unanswered.

        Returns:
            ``[Evicted(...)]`` if the contact was in the table, else ``[]``.
        """
        bucket = self.bucket_for(node_id)
        if node_id not in bucket.entries:
            if bucket.pinging == node_id:
                bucket.pinging = None
            return []
        return [self._evict(bucket, node_id, "ping_timeout")]

    def on_request_failed(
        self,
        node_id: bytes,
        now: float,  # noqa: ARG002 -- methods take now (invariant 4); callers name it
    ) -> list[RoutingAction]:
        """A request to ``node_id`` timed out; after ``max_failures`` in a row the contact is evicted."""
        bucket = self.bucket_for(node_id)
        entry = bucket.entries.get(node_id)
        if entry is None:
            bucket.replacements.pop(node_id, None)
            return []
        entry.failures += 1
        if entry.failures < self.max_failures:
            return []
        return [self._evict(bucket, node_id, "failures")]

    def failures(self, node_id: bytes) -> int:
        """Consecutive failures counted for ``node_id`` (0 if unknown)."""
        entry = self.bucket_for(node_id).entries.get(node_id)
        return entry.failures if entry else 0

    def remove(self, node_id: bytes) -> bool:
        """Drop ``node_id`` from the table and its replacement cache; True if it was in the table."""
        bucket = self.bucket_for(node_id)
        bucket.replacements.pop(node_id, None)
        if node_id not in bucket.entries:
            return False
        self._evict(bucket, node_id, "removed")
        return True

    # -- queries -------------------------------------------------------------------------------------------------

    def closest(self, target: bytes, n: int | None = None, *, exclude: frozenset[bytes] = frozenset()) -> list[Contact]:
        """The ``n`` (default k) contacts closest to ``target`` by XOR distance, closest first.

        The buckets' ranges are aligned blocks, and XOR with the target maps each block onto a block of
        distances, disjoint from the others. So buckets are visited in order of their nearest distance and the
        walk stops as soon as ``n`` contacts are gathered: no bucket visited later can hold a closer one.
        """
        count = self.k if n is None else n
        if count <= 0:
            return []
        question = (target, count, exclude)
        answer = self._answers.get(question)
        if answer is None:
            if len(self._answers) >= _ANSWERS_KEPT:
                self._answers.clear()
            answer = self._answers[question] = tuple(self._closest(target, count, exclude))
        return list(answer)

    def _closest(self, target: bytes, count: int, exclude: frozenset[bytes]) -> list[Contact]:
        """What :meth:`closest` answers, worked out from the buckets."""
        t = id_to_int(target)
        order = sorted(self.buckets, key=lambda b: (b.lo ^ t) & ~(b.hi - b.lo - 1))
        found: list[tuple[int, Contact]] = []
        for bucket in order:
            if len(found) >= count:
                break
            found.extend((e.number ^ t, e.contact) for node_id, e in bucket.entries.items() if node_id not in exclude)
        found.sort(key=lambda pair: pair[0])
        return [c for _, c in found[:count]]

    def mark_lookup(self, target: bytes, now: float) -> None:
        """Note that a lookup of ``target`` ran, so its bucket is not due a refresh."""
        self.bucket_for(target).last_lookup = now

    def due_refreshes(self, now: float) -> list[bytes]:
        """Random ids, one in each bucket not looked up for ``refresh_interval``; each is marked as looked up.

        The service runs a FIND_NODE lookup for each returned id.
        """
        targets: list[bytes] = []
        for bucket in self.buckets:
            if now >= bucket.last_lookup + self.refresh_interval:
                bucket.last_lookup = now
                targets.append(int_to_id(self._rng.randrange(bucket.lo, bucket.hi)))
        return targets

    def next_refresh_at(self) -> float:
        """Protocol time at which :meth:`due_refreshes` will next return something."""
        return min(b.last_lookup for b in self.buckets) + self.refresh_interval

    def statistics(self) -> RoutingStats:
        """Counts for metrics."""
        return RoutingStats(
            contacts=len(self),
            buckets=len(self.buckets),
            replacements=sum(len(b.replacements) for b in self.buckets),
            pings_outstanding=sum(1 for b in self.buckets if b.pinging is not None),
            splits=self._splits,
            evictions=self._evictions,
            depth=max(b.depth for b in self.buckets),
        )
