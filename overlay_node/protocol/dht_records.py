"""Signed multi-publisher DHT records: signing, the in-memory record store with its abuse limits, republishing.

Invariants:

1. A record's signature is the publisher's, over the canonical CBOR map of ``key``, ``value``, ``publisher``,
   ``seq`` and ``expires`` (:func:`record_signing_bytes`). A store holds only records whose signature verified.
2. A key holds at most one record per publisher. A record replaces the held one only with a strictly higher
   ``seq``; equal or lower ones are ignored (``stale``) without checking their signature.
3. A tombstone (empty value) is a record like any other: it replaces older records of its publisher and is kept
   until it expires, so an older record cannot come back through replication.
4. No held record has expired (as of the last :meth:`RecordStore.expire`) or expires more than ``max_ttl``
   (+ ``clock_skew``) after it was stored. Every limit holds at all times: value size, records per key, keys per
   publisher, total bytes. A refusal changes nothing and returns its reason (counted in ``refusals``).
5. Times here are wall-clock seconds (``clock.wall_time()``), because ``expires`` is signed and shared.

Theory of operation: the DHT service calls :meth:`RecordStore.put` for each STORE it receives and answers with the
result; FIND_VALUE answers come from :meth:`RecordStore.page` and ``wire.dht.pack_values``. A janitor calls
:meth:`RecordStore.expire`. Records this node publishes are tracked in :class:`OwnRecords`, whose
:meth:`OwnRecords.due_republish` says when to push them again (unchanged) and when to renew them (re-signed with a
higher seq and later expiry) before they expire. When the routing table learns a new contact,
:func:`replicate_to` says which stored records that contact should now also hold.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import cbor2

from overlay_node.protocol.dht_routing import RoutingTable, id_to_int
from overlay_node.wire.dht import MAX_VALUE, Contact, Record

__all__ = [
    "OwnRecords",
    "PutResult",
    "RecordLimits",
    "RecordStats",
    "RecordStore",
    "Replicate",
    "Republish",
    "make_record",
    "record_signing_bytes",
    "record_size",
    "renew_record",
    "replicate_to",
    "verify_record",
]

logger = logging.getLogger(__name__)

Verify = Callable[[bytes, bytes, bytes], bool]
Sign = Callable[[bytes], bytes]

MAX_TTL: Final = 24 * 3600
#: bytes counted for a record besides its value and signature (key, publisher, seq, expires, bookkeeping)
_RECORD_OVERHEAD: Final = 96


def record_signing_bytes(*, key: bytes, value: bytes, publisher: bytes, seq: int, expires: int) -> bytes:
    """The bytes a publisher signs: the canonical CBOR map of the record's fields other than ``sig``."""
    fields = {"key": key, "value": value, "publisher": publisher, "seq": seq, "expires": expires}
    return cbor2.dumps(fields, canonical=True)


def make_record(*, key: bytes, value: bytes, publisher: bytes, seq: int, expires: int, sign: Sign) -> Record:
    """Create and sign a record (``sign`` uses the key of ``publisher``)."""
    payload = record_signing_bytes(key=key, value=value, publisher=publisher, seq=seq, expires=expires)
    return Record(key=key, value=value, publisher=publisher, seq=seq, expires=expires, sig=sign(payload))


def verify_record(record: Record, verify: Verify) -> bool:
    """True if ``record.sig`` is the publisher's signature over the record's fields."""
    payload = record_signing_bytes(
        key=record.key, value=record.value, publisher=record.publisher, seq=record.seq, expires=record.expires
    )
    try:
        return verify(record.publisher, payload, record.sig)
    except ValueError:  # a verifier that rejects a malformed key by raising
        return False


def renew_record(record: Record, *, now: float, ttl: float, sign: Sign) -> Record:
    """The same record with ``seq + 1`` and a new expiry ``now + ttl``, signed again."""
    return make_record(
        key=record.key,
        value=record.value,
        publisher=record.publisher,
        seq=record.seq + 1,
        expires=int(now + min(ttl, MAX_TTL)),
        sign=sign,
    )


def record_size(record: Record) -> int:
    """Bytes a record is counted as against the store's total size limit."""
    return len(record.value) + len(record.sig) + _RECORD_OVERHEAD


class PutResult(enum.StrEnum):
    """Outcome of :meth:`RecordStore.put`; refusals are metric labels (``stale`` is not a refusal)."""

    STORED = "stored"
    REPLACED = "replaced"
    STALE = "stale"
    VALUE_TOO_LARGE = "value_too_large"
    EXPIRED = "expired"
    EXPIRES_TOO_FAR = "expires_too_far"
    PUBLISHER_MISMATCH = "publisher_mismatch"
    BAD_SIGNATURE = "bad_signature"
    KEY_FULL = "key_full"
    PUBLISHER_FULL = "publisher_full"
    STORE_FULL = "store_full"

    @property
    def accepted(self) -> bool:
        """True if the store now holds the record."""
        return self in (PutResult.STORED, PutResult.REPLACED)

    @property
    def refused(self) -> bool:
        """True for a refusal (a limit or a bad record), as opposed to stored or merely stale."""
        return not self.accepted and self is not PutResult.STALE


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordLimits:
    """Abuse limits of one record store."""

    max_value: int = 1024
    max_per_key: int = 128
    max_per_publisher: int = 256
    max_total_bytes: int = 64 * 1024 * 1024
    max_ttl: float = MAX_TTL
    #: tolerance for a publisher's clock running ahead when checking ``max_ttl``
    clock_skew: float = 300.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_value <= MAX_VALUE:
            raise ValueError(f"max_value must be in [0, {MAX_VALUE}] (the wire limit)")
        if min(self.max_per_key, self.max_per_publisher, self.max_total_bytes) < 1:
            raise ValueError("record limits must be >= 1")
        if not 0 < self.max_ttl <= MAX_TTL:
            raise ValueError(f"max_ttl must be in (0, {MAX_TTL}]")


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordStats:
    """Counts for metrics."""

    records: int
    tombstones: int
    keys: int
    publishers: int
    total_bytes: int
    refusals: dict[str, int]


class RecordStore:
    """The records this node holds for the DHT, many per key and one per publisher (see the module docstring).

    Args:
        verify: ``verify(pubkey, message, signature) -> bool``.
        limits: abuse limits.
    """

    def __init__(self, verify: Verify, limits: RecordLimits | None = None) -> None:
        self.verify = verify
        self.limits = limits or RecordLimits()
        self._by_key: dict[bytes, dict[bytes, Record]] = {}
        self._per_publisher: dict[bytes, int] = {}
        self._total = 0
        #: (expires, key, publisher, seq); entries made stale by a replacement are skipped when popped
        self._expiry: list[tuple[int, bytes, bytes, int]] = []
        self.refusals: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(held) for held in self._by_key.values())

    def _refuse(self, result: PutResult, record: Record) -> PutResult:
        self.refusals[result.value] = self.refusals.get(result.value, 0) + 1
        logger.debug("dht records: refused %s from %s: %s", record.key.hex()[:16], record.publisher.hex()[:16], result)
        return result

    def put(self, record: Record, now: float, *, expected_publisher: bytes | None = None) -> PutResult:
        """Store ``record`` if it is valid, newer than the held one and within every limit.

        Args:
            record: the record (a STORE's payload, or one we publish).
            now: wall-clock seconds.
            expected_publisher: if given, the record must come from this publisher (a direct publish, or an
                application namespace tied to one key).

        Returns:
            ``STORED``/``REPLACED`` when held now, ``STALE`` for an equal or older seq, else the refusal.
        """
        limits = self.limits
        if expected_publisher is not None and record.publisher != expected_publisher:
            return self._refuse(PutResult.PUBLISHER_MISMATCH, record)
        if len(record.value) > limits.max_value:
            return self._refuse(PutResult.VALUE_TOO_LARGE, record)
        if record.expires <= now:
            return self._refuse(PutResult.EXPIRED, record)
        if record.expires > now + limits.max_ttl + limits.clock_skew:
            return self._refuse(PutResult.EXPIRES_TOO_FAR, record)
        held = self._by_key.get(record.key, {})
        old = held.get(record.publisher)
        if old is not None and record.seq <= old.seq:
            return PutResult.STALE
        if old is None and len(held) >= limits.max_per_key:
            return self._refuse(PutResult.KEY_FULL, record)
        if old is None and self._per_publisher.get(record.publisher, 0) >= limits.max_per_publisher:
            return self._refuse(PutResult.PUBLISHER_FULL, record)
        grow = record_size(record) - (record_size(old) if old is not None else 0)
        if self._total + grow > limits.max_total_bytes:
            return self._refuse(PutResult.STORE_FULL, record)
        # the signature is checked last: it is the expensive check, and cheap refusals must not cost a verify
        if not verify_record(record, self.verify):
            return self._refuse(PutResult.BAD_SIGNATURE, record)
        if old is None:
            self._per_publisher[record.publisher] = self._per_publisher.get(record.publisher, 0) + 1
        self._by_key.setdefault(record.key, {})[record.publisher] = record
        self._total += grow
        heapq.heappush(self._expiry, (record.expires, record.key, record.publisher, record.seq))
        return PutResult.STORED if old is None else PutResult.REPLACED

    def _drop(self, key: bytes, publisher: bytes) -> Record:
        held = self._by_key[key]
        record = held.pop(publisher)
        if not held:
            del self._by_key[key]
        left = self._per_publisher[publisher] - 1
        if left:
            self._per_publisher[publisher] = left
        else:
            del self._per_publisher[publisher]
        self._total -= record_size(record)
        return record

    def remove(self, key: bytes, publisher: bytes) -> bool:
        """Forget the record of ``publisher`` under ``key`` (its heap entry is skipped later); True if held."""
        if publisher not in self._by_key.get(key, {}):
            return False
        self._drop(key, publisher)
        return True

    def expire(self, now: float) -> list[Record]:
        """Drop every record (and tombstone) whose ``expires`` is at or before ``now``; return them."""
        dropped: list[Record] = []
        while self._expiry and self._expiry[0][0] <= now:
            expires, key, publisher, seq = heapq.heappop(self._expiry)
            record = self._by_key.get(key, {}).get(publisher)
            if record is not None and (record.seq, record.expires) == (seq, expires):
                dropped.append(self._drop(key, publisher))
        return dropped

    def get(self, key: bytes, now: float | None = None) -> list[Record]:
        """Records under ``key`` ordered by publisher, tombstones included; unexpired at ``now`` if given."""
        held = self._by_key.get(key, {})
        return [r for _, r in sorted(held.items()) if now is None or r.expires > now]

    def live(self, key: bytes, now: float) -> list[Record]:
        """Unexpired, non-tombstone records under ``key``, ordered by publisher."""
        return [r for r in self.get(key, now) if not r.is_tombstone]

    def page(self, key: bytes, cursor: bytes | None, now: float) -> list[Record]:
        """Records under ``key`` whose publisher sorts after ``cursor`` (all for ``None`` or ``b""``)."""
        records = self.get(key, now)
        return [r for r in records if r.publisher > cursor] if cursor else records

    def held_keys(self) -> list[bytes]:
        """Every key with at least one record."""
        return list(self._by_key)

    def all_records(self) -> Iterable[Record]:
        """Every held record (for persistence and re-replication)."""
        for held in self._by_key.values():
            yield from held.values()

    def statistics(self) -> RecordStats:
        """Counts for metrics."""
        records = list(self.all_records())
        return RecordStats(
            records=len(records),
            tombstones=sum(1 for r in records if r.is_tombstone),
            keys=len(self._by_key),
            publishers=len(self._per_publisher),
            total_bytes=self._total,
            refusals=dict(self.refusals),
        )


# -- our own records ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Republish:
    """Push ``record`` to the k closest nodes of its key again; if ``renew``, re-sign it first (``renew_record``)."""

    record: Record
    renew: bool


@dataclass(slots=True)
class _Own:
    record: Record
    published_at: float
    pushed_at: float
    ttl: float = field(default=0.0)


class OwnRecords:
    """Records this node publishes, and when to push or renew them (wall-clock time).

    Args:
        republish_interval: push unchanged records again this often (new closest nodes may have appeared).
        renew_fraction: renew a record once less than this fraction of its lifetime is left.
    """

    def __init__(self, *, republish_interval: float = 3600.0, renew_fraction: float = 0.25) -> None:
        if republish_interval <= 0 or not 0 < renew_fraction < 1:
            raise ValueError("republish_interval must be > 0 and renew_fraction in (0, 1)")
        self.republish_interval = republish_interval
        self.renew_fraction = renew_fraction
        self._own: dict[tuple[bytes, bytes], _Own] = {}

    def add(self, record: Record, now: float) -> None:
        """Track a record we just published (and pushed); replaces the one for the same key and publisher."""
        self._own[(record.key, record.publisher)] = _Own(record, now, now, ttl=max(record.expires - now, 0.0))

    def remove(self, key: bytes, publisher: bytes) -> None:
        """Stop tracking (after publishing a tombstone, track the tombstone instead)."""
        self._own.pop((key, publisher), None)

    def records(self) -> list[Record]:
        """The records tracked."""
        return [own.record for own in self._own.values()]

    def _renew_at(self, own: _Own) -> float:
        return own.record.expires - own.ttl * self.renew_fraction

    def due_republish(self, now: float) -> list[Republish]:
        """Records to push now: renewals for records near expiry, plain re-pushes for the others.

        Expired tombstones are forgotten (their job is done). A returned plain re-push counts as pushed at ``now``;
        a renewal stays due until the renewed record is passed to :meth:`add`.
        """
        due: list[Republish] = []
        for slot, own in list(self._own.items()):
            record = own.record
            if record.is_tombstone:
                if record.expires <= now:
                    del self._own[slot]
                    continue
            elif now >= self._renew_at(own):
                due.append(Republish(record=record, renew=True))
                continue
            if now >= own.pushed_at + self.republish_interval:
                own.pushed_at = now
                due.append(Republish(record=record, renew=False))
        return due

    def next_due(self) -> float | None:
        """Wall-clock time of the next :meth:`due_republish` event, or None if nothing is tracked."""
        times = [own.pushed_at + self.republish_interval for own in self._own.values()]
        times += [own.record.expires if own.record.is_tombstone else self._renew_at(own) for own in self._own.values()]
        return min(times) if times else None


# -- re-replication ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Replicate:
    """Send these records (all under ``key``) to ``contact`` with STORE."""

    contact: Contact
    key: bytes
    records: tuple[Record, ...]


def replicate_to(
    store: RecordStore, table: RoutingTable, contact: Contact, now: float, *, push_rank: int = 3
) -> list[Replicate]:
    """What to store at a newly seen ``contact``, which should now hold some of our keys.

    For each key we hold, ``contact`` gets its records if it is among the k closest nodes to the key that we
    know (ourselves included), and we are among the ``push_rank`` closest of the nodes known before it (so a few
    holders push, not all k of them). Call it when the routing table takes in a contact it did not have.

    Args:
        store: our record store.
        table: our routing table (its ``k`` and ``own_id`` are used; ``contact`` is left out of it).
        contact: the new contact.
        now: wall-clock seconds (expired records are not sent).
        push_rank: how many of the closest holders push.
    """
    new_id = contact.node_id
    if new_id == table.own_id:
        return []
    own = id_to_int(table.own_id)
    new = id_to_int(new_id)
    exclude = frozenset({new_id})
    plans: list[Replicate] = []
    for key in store.held_keys():
        t = id_to_int(key)
        known = [id_to_int(c.node_id) ^ t for c in table.closest(key, table.k, exclude=exclude)]
        ours, theirs = own ^ t, new ^ t
        # ranks among the known nodes and ourselves
        if sum(1 for d in known if d < theirs) + (ours < theirs) >= table.k:
            continue
        if sum(1 for d in known if d < ours) >= push_rank:
            continue
        records = tuple(store.get(key, now))
        if records:
            plans.append(Replicate(contact=contact, key=key, records=records))
    return plans
