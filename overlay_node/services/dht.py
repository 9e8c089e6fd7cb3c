"""The DHT service: Kademlia over UDP on trio, holding signed multi-publisher records (docs/design.md, DHT).

This is the I/O shell around the sans-IO core: ``protocol.dht_routing`` (the routing table),
``protocol.dht_lookup`` (iterative lookups), ``protocol.dht_records`` (the record store, republishing,
re-replication) and ``wire.dht`` (the datagram codec). ``services.dht_rpc`` moves the datagrams (signatures, rate
limits, requests and retries) and ``services.dht_lookups`` drives lookups over it.

Theory of operation:

- ``run`` binds the UDP endpoint, loads the records saved in SQLite, reports ``host:port`` and bootstraps from
  ``dht.bootstrap`` and the contacts saved by the last run: a PING to each, then, once the first answers, a lookup
  of our own id (the other PINGs go on in the background: a dead one does not hold the start up). Background
  tasks read datagrams, save changed records in batches, and run :meth:`DhtService.run_maintenance` every
  ``maintenance_interval``, which also saves the contacts closest to our id when they changed (and so does the
  stop), so that a node restarted while its bootstrap nodes are down rejoins through the nodes it knew.
- Every verified sender goes into the routing table: at once when it answers a request of ours, after answering a
  ping at its source address when it sent us a request (so a spoofed source or a replayed datagram cannot plant
  a contact or draw pushed records to a victim). A full bucket asks for a ping of its oldest contact, and a
  contact that fails it, or fails ``max_failures`` requests in a row, is evicted; so is a contact silent for
  ``contact_check_interval`` that does not answer the ping maintenance sends it. A contact new to the table gets,
  from the nearest holders, the records it should now hold (re-replication).
- :meth:`DhtService.put` signs a record with a higher ``seq``, keeps it locally, finds the k closest nodes of its
  key and sends them STORE. Maintenance pushes own records again every ``republish_interval`` and renews them
  (re-signed, later expiry) before they expire, until :meth:`DhtService.remove` replaces them with a tombstone.
- :meth:`DhtService.get` runs an iterative FIND_VALUE over the k closest nodes, following their pages (those of
  one holder per records digest: holders naming the same digest hold the same records), verifies every record, and
  returns the newest live record of each publisher, local records included.

Invariants:

1. Every record held, returned or passed to ``on_record`` callbacks has a valid publisher signature, a value within
   ``max_value`` and an expiry in the future (wall clock); a refused one is counted in
   ``overlay_dht_record_refusals{reason}``.
2. Protocol time (timeouts, buckets, rate limits) is ``trio.current_time()``; wall time (record expiry, datagram
   timestamps) comes from the injected ``wall_clock`` only.
3. Records changed in memory are saved to SQLite by one writer task (``services.dht_saver``), coalesced per
   ``(key, publisher)``; whatever is not yet written when the service stops is written within ``flush_timeout``.
4. Timeouts and limits all come from the ``[dht]`` config section.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio

from overlay_node.clock import wall_time
from overlay_node.config import DhtSection
from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest, DialError, LocalProtocolError, PeerTimeout, StoreError
from overlay_node.metrics import Metrics
from overlay_node.net.udp import Address, UdpEndpoint, format_address, open_udp_endpoint
from overlay_node.protocol.dht_lookup import LookupResult
from overlay_node.protocol.dht_records import (
    OwnRecords,
    PutResult,
    RecordLimits,
    RecordStore,
    make_record,
    record_signing_bytes,
    renew_record,
    replicate_to,
)
from overlay_node.protocol.dht_routing import Evicted, PingOldest, RoutingAction, RoutingTable
from overlay_node.services.dht_lookups import LookupDriver
from overlay_node.services.dht_rpc import DhtRpc, endpoint_closed
from overlay_node.services.dht_saver import RecordSaver, load_contacts, save_contacts
from overlay_node.store.db import Store
from overlay_node.store.dht import OwnRecord
from overlay_node.wire.dht import (
    NODE_ID_LEN,
    Contact,
    Envelope,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Record,
    Values,
    node_id_of,
    pack_values,
    records_digest,
)
from overlay_node.wire.dht import Store as StoreMsg
from overlay_node.wire.dht import StoreAck as StoreAckMsg

__all__ = ["DhtService", "DhtStats", "PutOutcome", "dht_key"]

logger = logging.getLogger(__name__)

#: contacts saved for the next start (the closest to our own id), pinged there beside ``dht.bootstrap``
SAVED_CONTACTS: Final = 64
#: (key, publisher) pairs remembered as passed to ``on_record`` callbacks, so one record is announced once
#: a routing table with fewer contacts than this (or than k) is filled again from ``dht.bootstrap`` by maintenance
THIN_TABLE: Final = 8
_NOTIFIED_CACHE: Final = 65536
#: most unconfirmed senders being pinged at once (a flood of new identities costs at most this many pings)
_MAX_CONFIRMING: Final = 256
#: VALUES page layouts remembered (cleared when full)
_PAGE_LAYOUT_CACHE: Final = 1024
#: verified record signatures remembered (publisher, digest, signature), so a record seen again costs no verify
_VERIFIED_CACHE: Final = 16384
#: records from lookup answers remembered as good (whole records: a smaller cache)
_GOOD_RECORDS_CACHE: Final = 4096


def dht_key(namespace: str, name: str) -> bytes:
    """The 32-byte DHT key of ``name`` in ``namespace`` (``ship``, ``slap``, ``uhrp``, ``stream``, ``tag``):
    ``SHA-256(f"{namespace}:{name}")``, docs/design.md, DHT."""
    return hashlib.sha256(f"{namespace}:{name}".encode()).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class PutOutcome:
    """What :meth:`DhtService.put` / :meth:`DhtService.remove` achieved."""

    key: bytes
    seq: int
    expires: int
    tombstone: bool
    #: nodes that acknowledged holding the record (we are not counted)
    stored: int
    #: nodes asked to store it (the k closest found)
    asked: int
    #: refusal reasons from the nodes that did not store it (``timeout`` for no answer)
    refused: dict[str, int]
    #: whether our own store holds it too
    local: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtStats:
    """A snapshot for ``ctl status`` and tests."""

    address: str
    node_id: str
    contacts: int
    buckets: int
    records: int
    tombstones: int
    keys: int
    own_records: int
    datagrams_in: int
    datagrams_out: int
    drops: dict[str, int]
    refusals: dict[str, int]
    #: datagrams that came and went MAC'd instead of signed, and the peers known to take that (``services/dht_rpc.py``)
    macs_in: int = 0
    macs_out: int = 0
    mac_peers: int = 0


class DhtService:
    """One node of the DHT (see the module docstring).

    Args:
        identity: the node identity; it signs datagrams and our records (publisher = its public key).
        config: the ``[dht]`` section.
        store: the node's database (``store.dht``).
        metrics: the node's instruments.
        wall_clock: wall-clock seconds (``clock.wall_time``); tests pass a clock they can move.
        rng: random source for bucket refresh targets.
    """

    def __init__(
        self,
        identity: Identity,
        config: DhtSection,
        store: Store,
        metrics: Metrics,
        *,
        wall_clock: Callable[[], float] = wall_time,
        rng: random.Random | None = None,
    ) -> None:
        self._identity = identity
        self._pub = identity.public_key
        self._own_id = node_id_of(self._pub)
        self._config = config
        self._store = store
        self._metrics = metrics
        self._wall = wall_clock
        self._rng = rng
        self._rpc = DhtRpc(identity, config, metrics, self, wall_clock)
        self._rpc_budget = config.request_timeout * (config.request_retries + 1)
        self._lookups = LookupDriver(
            self._rpc,
            config,
            self._own_id,
            on_failed=self._request_failed,
            check_records=self._checked_found,
            spawn=self._spawn,
        )
        self._table = self._new_table(0.0)
        self._records = RecordStore(
            self._verify_record_sig,
            RecordLimits(
                max_value=config.max_value,
                max_per_key=config.max_records_per_key,
                max_per_publisher=config.max_records_per_publisher,
                max_total_bytes=config.max_store_bytes,
                max_ttl=config.max_ttl,
                clock_skew=config.max_skew,
            ),
        )
        self._own = OwnRecords(republish_interval=config.republish_interval, renew_fraction=config.renew_fraction)
        self._own_ttl: dict[bytes, float] = {}
        self._heard: dict[bytes, float] = {}
        #: node ids whose request came from an address not yet confirmed, being pinged there
        self._confirming: set[bytes] = set()
        self._verified: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
        #: records from lookup answers that passed every check (equal ones from other nodes skip the checks)
        self._good_records: OrderedDict[Record, None] = OrderedDict()
        #: (key, cursor, contacts, records) -> how many of the records fit on that VALUES page
        self._page_layouts: dict[tuple[bytes, bytes | None, tuple[Contact, ...], tuple[Record, ...]], int] = {}
        self._notified: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()
        self._callbacks: list[Callable[[Record], None]] = []
        self._address = ""
        self._endpoint: UdpEndpoint | None = None
        self._nursery: trio.Nursery | None = None
        self._maintenance_lock = trio.Lock()
        # tasks started by _spawn still running, and an event set whenever that count drops to zero
        self._background = 0
        self._idle = trio.Event()
        self._bootstrapped = trio.Event()
        self._saver = RecordSaver(store.dht)
        #: the contacts last saved for the next start
        self._saved_contacts: frozenset[Contact] = frozenset()

    def _new_table(self, now: float) -> RoutingTable:
        cfg = self._config
        return RoutingTable(
            self._own_id,
            k=cfg.k,
            replacement_size=cfg.replacement_size,
            max_failures=cfg.max_failures,
            ping_timeout=self._rpc_budget,
            refresh_interval=cfg.refresh_interval,
            now=now,
            rng=self._rng,
        )

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, load saved records, report ``host:port``, bootstrap, then serve until cancelled.

        Raises:
            TransportError: the UDP port cannot be bound.
            StoreError: the database failed.
        """
        cfg = self._config
        self._table = self._new_table(trio.current_time())
        await self._load()
        saved = await load_contacts(self._store.meta)
        self._saved_contacts = frozenset(saved)
        try:
            async with open_udp_endpoint(cfg.host, cfg.port, buffer_size=cfg.socket_buffer) as endpoint:
                self._endpoint = endpoint
                host, port = endpoint.address
                host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
                self._address = format_address((host, port))
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self._rpc.serve, endpoint)
                    nursery.start_soon(self._saver.run)
                    nursery.start_soon(self._maintenance_loop)
                    logger.info("dht listening on %s as %s", self._address, self._own_id.hex()[:16])
                    task_status.started(self._address)
                    if cfg.bootstrap or saved:
                        await self.bootstrap(cfg.bootstrap, saved=saved)
                        await self._save_contacts()
                    self._bootstrapped.set()
                    for record in self._own.records():
                        nursery.start_soon(self._push, record)
        finally:
            self._nursery = None
            self._endpoint = None
            with trio.move_on_after(cfg.flush_timeout, shield=True) as scope:
                await self.flush()
                await self._save_contacts()
            if scope.cancelled_caught:
                logger.error("dht: records not saved within %.1fs at shutdown", cfg.flush_timeout)

    @property
    def address(self) -> str:
        """``host:port`` of the UDP endpoint (empty before ``run`` binds it)."""
        return self._address

    @property
    def public_key(self) -> bytes:
        """Our 33-byte identity public key: the publisher key of our records."""
        return self._pub

    @property
    def node_id(self) -> bytes:
        """Our 32-byte node id, SHA-256 of the identity public key."""
        return self._own_id

    async def wait_bootstrapped(self) -> None:
        """Wait until ``run`` has finished bootstrapping from ``dht.bootstrap`` and the saved contacts (at once if
        there are neither)."""
        await self._bootstrapped.wait()

    def on_record(self, callback: Callable[[Record], None]) -> None:
        """Call ``callback`` for every newly accepted record of another publisher, tombstones included: stored here
        through STORE, or learned in a lookup with a higher ``seq`` than known. Called in the service's task; it
        must not block."""
        self._callbacks.append(callback)

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> bool:
        """Start ``fn(*args)`` in the service's nursery; False (nothing started) once the service has stopped."""
        if self._nursery is None:
            return False
        self._background += 1
        self._nursery.start_soon(self._tracked, fn, args)
        return True

    async def _tracked(self, fn: Callable[..., Awaitable[object]], args: tuple[object, ...]) -> None:
        try:
            await fn(*args)
        finally:
            self._background -= 1
            if not self._background:
                self._idle.set()

    async def wait_background(self) -> None:
        """Wait until the background work started so far has ended: requests a finished lookup left in flight
        (their answers or timeouts still update the routing table), address checks, replication."""
        while self._background:
            if self._idle.is_set():
                self._idle = trio.Event()
            await self._idle.wait()

    # -- the public operations -------------------------------------------------------------------------------

    async def bootstrap(self, addresses: Sequence[str], *, saved: Sequence[Contact] = ()) -> int:
        """Ping each ``host:port`` and each of the ``saved`` contacts (at its address, expecting its key), then look
        up our own id; returns how many contacts the table holds.

        The lookup starts as soon as the first of them answers: the pings not answered yet go on in the background
        (an answer still puts its contact in the table), so one dead bootstrap node or saved contact does not hold
        a start up for its request timeout and retries. With no answer at all, it ends when every ping has failed."""
        endpoint = self._endpoint
        if endpoint is None:
            await endpoint_closed()
        resolved: list[Address] = []
        for text in addresses:
            try:
                address = await endpoint.resolve(text)
            except (BadRequest, DialError) as exc:
                logger.warning("dht bootstrap: skipping %r: %s", text, exc)
                continue
            if address != endpoint.address:  # a shared bootstrap list names us too
                resolved.append(address)
        pings: list[tuple[Callable[[Any], Awaitable[bool]], object]] = [
            *((self._ping_address, address) for address in resolved),
            *((self._ping_saved, contact) for contact in saved),
        ]
        settled = trio.Event()  # the first answer, or the last failure
        left = len(pings)

        async def ping(fn: Callable[[Any], Awaitable[bool]], target: object) -> None:
            nonlocal left
            try:
                if await fn(target):
                    settled.set()
            finally:
                left -= 1
                if not left:
                    settled.set()

        for fn, target in pings:
            self._spawn(ping, fn, target)
        if pings:
            await settled.wait()
        if len(self._table):
            await self._lookup(self._own_id, find_value=False)
        logger.info(
            "dht bootstrapped from %d addresses and %d saved contacts: %d contacts",
            len(resolved),
            len(saved),
            len(self._table),
        )
        self._update_gauges()
        return len(self._table)

    async def _ping_address(self, address: Address) -> bool:
        """Ping a bootstrap address; True when it answered (its answer puts it in the table)."""
        try:
            await self._rpc.request(address, Ping(rpc_id=self._rpc.new_rpc_id()), expect_id=None)
        except (PeerTimeout, DialError) as exc:
            logger.warning("dht bootstrap: %s", exc)
            return False
        return True

    async def _ping_saved(self, contact: Contact) -> bool:
        """Ping a contact saved by an earlier run; True when it answered (``on_heard`` puts it in the table)."""
        try:
            await self._rpc.request(
                (contact.host, contact.port), Ping(rpc_id=self._rpc.new_rpc_id()), expect_id=contact.node_id
            )
        except (PeerTimeout, DialError) as exc:
            logger.debug("dht: saved contact %s: %s", contact.node_id.hex()[:16], exc)
            return False
        return True

    async def put(self, key: bytes, value: bytes, *, ttl: float) -> PutOutcome:
        """Publish our record ``value`` under ``key`` for ``ttl`` seconds, replacing our earlier one.

        Raises:
            BadRequest: the key is not 32 bytes, the value is empty or over ``max_value``, or ``ttl`` is not in
                ``[1, max_ttl]`` seconds.
        """
        self._check_key(key)
        if not value or len(value) > self._config.max_value:
            raise BadRequest(f"dht value must be 1..{self._config.max_value} bytes, got {len(value)}")
        if not (1.0 <= ttl <= self._config.max_ttl):
            raise BadRequest(f"dht ttl must be in [1, {self._config.max_ttl:g}] seconds, got {ttl!r}")
        wall = self._wall()
        record = make_record(
            key=key,
            value=bytes(value),
            publisher=self._pub,
            seq=self._next_seq(key, wall),
            expires=int(wall + ttl),
            sign=self._rpc.signer.sign,
        )
        return await self._publish(record, ttl)

    async def remove(self, key: bytes) -> PutOutcome:
        """Revoke our record under ``key`` with a signed tombstone (a higher ``seq``, empty value), kept and pushed
        until the revoked record would have expired.

        Raises:
            BadRequest: the key is not 32 bytes.
        """
        self._check_key(key)
        wall = self._wall()
        previous = self._own_record(key)
        expires = previous.expires if previous is not None else int(wall + self._config.max_ttl)
        expires = max(expires, int(wall) + 1)
        record = make_record(
            key=key,
            value=b"",
            publisher=self._pub,
            seq=self._next_seq(key, wall),
            expires=expires,
            sign=self._rpc.signer.sign,
        )
        return await self._publish(record, max(expires - wall, 1.0))

    async def get(self, key: bytes, *, tombstones: bool = False) -> list[Record]:
        """The newest live record of every publisher under ``key``, ordered by publisher.

        Runs an iterative FIND_VALUE over the k closest nodes (all pages of each, or of one holder per records
        digest; ``protocol.dht_lookup`` invariant 6), verifies every record, and merges
        them with our own and locally held records; expired records are left out, and so are tombstones unless
        ``tombstones`` (a publisher whose newest record is one has revoked what it published there).

        Raises:
            BadRequest: the key is not 32 bytes.
        """
        self._check_key(key)
        result = await self._lookup(key, find_value=True)
        wall = self._wall()
        best: dict[bytes, Record] = {}
        for record in (*self._records.get(key), *self._own_records_under(key)):
            best[record.publisher] = _newer(best.get(record.publisher), record)
        for record in result.records:
            known = best.get(record.publisher)
            if known is None or record.seq > known.seq:
                best[record.publisher] = record
                if record.publisher != self._pub:
                    self._notify(record)
        kept = (r for r in best.values() if (tombstones or not r.is_tombstone) and r.expires > wall)
        return sorted(kept, key=lambda r: r.publisher)

    def local_records(self, key: bytes) -> list[Record]:
        """The live records this node holds under ``key`` (its own included), ordered by publisher; no I/O."""
        wall = self._wall()
        best: dict[bytes, Record] = {}
        for record in (*self._records.get(key), *self._own_records_under(key)):
            best[record.publisher] = _newer(best.get(record.publisher), record)
        return sorted((r for r in best.values() if not r.is_tombstone and r.expires > wall), key=lambda r: r.publisher)

    def own_records(self) -> list[Record]:
        """The records we publish (tombstones included, until they expire), as kept for republishing."""
        return self._own.records()

    def ingest(self, record: Record) -> PutResult:
        """Take a record that reached us outside the DHT (pushed by a linked peer) exactly like a STORE: verified,
        checked against the limits, held and saved if newer, announced to ``on_record`` callbacks; a refusal is
        counted and returned."""
        return self._accept_stored(record)

    async def ping(self, address: str, *, expect_key: bytes | None = None) -> float:
        """PING the DHT node at ``host:port`` (which must be ``expect_key``'s node, if given); returns the round
        trip in seconds. A node that answers is taken into the routing table; a known node that does not has the
        failure counted (``max_failures`` in a row evict it).

        Raises:
            BadRequest: ``address`` is not ``host:port``.
            DialError: it cannot be resolved or sent to.
            PeerTimeout: no answer after ``request_retries + 1`` sends.
            TransportError: the service has stopped.
        """
        endpoint = self._endpoint
        if endpoint is None:
            await endpoint_closed()
        target = await endpoint.resolve(address)
        expect_id = node_id_of(expect_key) if expect_key is not None else None
        started = trio.current_time()
        try:
            await self._rpc.request(target, Ping(rpc_id=self._rpc.new_rpc_id()), expect_id=expect_id)
        except PeerTimeout:
            # a failed health check of a known node counts against it like any failed request
            known = self._table.get(expect_id) if expect_id is not None else None
            if known is not None:
                self._request_failed(known)
            raise
        return trio.current_time() - started

    def contacts(self) -> list[Contact]:
        """The contacts in the routing table."""
        return self._table.contacts()

    def statistics(self) -> DhtStats:
        """Counts of the table, the records and the datagrams."""
        table = self._table.statistics()
        records = self._records.statistics()
        rpc = self._rpc.statistics()
        return DhtStats(
            address=self._address,
            node_id=self._own_id.hex(),
            contacts=table.contacts,
            buckets=table.buckets,
            records=records.records,
            tombstones=records.tombstones,
            keys=records.keys,
            own_records=len(self._own.records()),
            datagrams_in=rpc.datagrams_in,
            datagrams_out=rpc.datagrams_out,
            drops=rpc.drops,
            refusals=records.refusals,
            macs_in=rpc.macs_in,
            macs_out=rpc.macs_out,
            mac_peers=rpc.mac_peers,
        )

    # -- own records -----------------------------------------------------------------------------------------

    @staticmethod
    def _check_key(key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != NODE_ID_LEN:
            raise BadRequest(f"dht key must be {NODE_ID_LEN} bytes (use dht_key(namespace, name))")

    def _own_records_under(self, key: bytes) -> list[Record]:
        return [r for r in self._own.records() if r.key == key]

    def _own_record(self, key: bytes) -> Record | None:
        best: Record | None = None
        for record in (*self._own_records_under(key), *self._records.get(key)):
            if record.publisher == self._pub:
                best = _newer(best, record)
        return best

    def _next_seq(self, key: bytes, wall: float) -> int:
        """A seq above any we used under ``key``; milliseconds of wall time when higher, so that a restart with a
        lost database still publishes a newer record."""
        previous = self._own_record(key)
        return max(previous.seq + 1 if previous is not None else 0, int(wall * 1000))

    async def _publish(self, record: Record, ttl: float) -> PutOutcome:
        wall = self._wall()
        local = self._records.put(record, wall)
        if local.accepted:
            self._saver.save(record)
        self._own.add(record, wall)
        self._own_ttl[record.key] = ttl
        self._saver.save_own(record.key, OwnRecord(record=record, ttl=ttl))
        self._update_gauges()
        stored, asked, refused = await self._push(record)
        return PutOutcome(
            key=record.key,
            seq=record.seq,
            expires=record.expires,
            tombstone=record.is_tombstone,
            stored=stored,
            asked=asked,
            refused=refused,
            local=local.accepted or local is PutResult.STALE,
        )

    async def _push(self, record: Record) -> tuple[int, int, dict[str, int]]:
        """STORE ``record`` at the k closest nodes of its key; returns (stored, asked, refusal reasons)."""
        result = await self._lookup(record.key, find_value=False)
        acks: list[str] = []

        async def store_at(contact: Contact) -> None:
            acks.append(await self._store_at(contact, record))

        async with trio.open_nursery() as nursery:
            for contact in result.closest:
                nursery.start_soon(store_at, contact)
        refused: dict[str, int] = {}
        for reason in acks:
            if reason not in ("stored", "replaced", "stale"):
                refused[reason] = refused.get(reason, 0) + 1
        return len(acks) - sum(refused.values()), len(acks), refused

    async def _store_at(self, contact: Contact, record: Record) -> str:
        """Send one STORE; returns the answer's reason (``stored``, ``replaced``, ``stale`` or a refusal) or
        ``timeout``."""
        try:
            envelope = await self._rpc.request(
                (contact.host, contact.port),
                StoreMsg(rpc_id=self._rpc.new_rpc_id(), record=record),
                expect_id=contact.node_id,
            )
        except (PeerTimeout, DialError):
            self._request_failed(contact)
            return "timeout"
        ack = envelope.message
        assert isinstance(ack, StoreAckMsg)  # DhtRpc checks the answer type
        if ack.stored:
            return ack.reason if ack.reason in ("stored", "replaced", "stale") else "stored"
        return ack.reason or "refused"

    # -- records from others ---------------------------------------------------------------------------------

    def _verify_record_sig(self, pubkey: bytes, message: bytes, signature: bytes) -> bool:
        """Record signature check with a cache of the ones that verified."""
        digest = hashlib.sha256(message).digest()
        slot = (pubkey, digest, signature)
        if slot in self._verified:
            self._verified.move_to_end(slot)
            return True
        if not self._rpc.signer.verify_digest(pubkey, digest, signature):
            return False
        self._verified[slot] = None
        if len(self._verified) > _VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return True

    def _refuse(self, reason: str) -> None:
        self._metrics.dht_record_refusals.labels(reason).inc()

    def _accept_stored(self, record: Record) -> PutResult:
        """A record sent to us with STORE (or re-replicated): keep it if it is valid and newer."""
        result = self._records.put(record, self._wall())
        if result.accepted:
            self._saver.save(record)
            self._metrics.dht_records.set(len(self._records))
            if record.publisher != self._pub:
                self._notify(record)
        elif result.refused:
            self._refuse(result.value)
        return result

    def _checked_found(self, key: bytes, records: Iterable[Record]) -> list[Record]:
        """Records a node returned for ``key``: the valid, unexpired ones (refusals counted)."""
        wall = self._wall()
        good: list[Record] = []
        for record in records:
            if record.key != key:
                continue
            if record.expires <= wall:
                continue  # expired on the way: not a refusal, the holder just has not run its janitor
            if record in self._good_records:
                self._good_records.move_to_end(record)
                good.append(record)
                continue
            if len(record.value) > self._config.max_value:
                self._refuse(PutResult.VALUE_TOO_LARGE.value)
                continue
            payload = record_signing_bytes(
                key=record.key,
                value=record.value,
                publisher=record.publisher,
                seq=record.seq,
                expires=record.expires,
            )
            if not self._verify_record_sig(record.publisher, payload, record.sig):
                self._refuse(PutResult.BAD_SIGNATURE.value)
                continue
            self._good_records[record] = None
            if len(self._good_records) > _GOOD_RECORDS_CACHE:
                self._good_records.popitem(last=False)
            good.append(record)
        return good

    def _notify(self, record: Record) -> None:
        slot = (record.key, record.publisher)
        seen = self._notified.get(slot)
        if seen is not None and seen >= record.seq:
            return
        self._notified[slot] = record.seq
        self._notified.move_to_end(slot)
        if len(self._notified) > _NOTIFIED_CACHE:
            self._notified.popitem(last=False)
        for callback in self._callbacks:
            callback(record)

    # -- the handler of DhtRpc -------------------------------------------------------------------------------

    def handle_request(self, envelope: Envelope, _source: Address) -> Message | None:
        """Answer a verified request."""
        msg = envelope.message
        k = self._config.k
        exclude = frozenset({envelope.sender_id})
        match msg:
            case Ping(rpc_id=rpc_id):
                return Pong(rpc_id=rpc_id)
            case FindNode(rpc_id=rpc_id, target=target):
                return Nodes(rpc_id=rpc_id, contacts=tuple(self._table.closest(target, k, exclude=exclude)))
            case FindValue(rpc_id=rpc_id, key=key, cursor=cursor):
                return self._values_page(rpc_id, key, cursor, exclude)
            case StoreMsg(rpc_id=rpc_id, record=record):
                result = self._accept_stored(record)
                return StoreAckMsg(
                    rpc_id=rpc_id, stored=result.accepted or result is PutResult.STALE, reason=result.value
                )
            case _:
                return None

    def _values_page(self, rpc_id: bytes, key: bytes, cursor: bytes | None, exclude: frozenset[bytes]) -> Values:
        """One page of our records under ``key`` after ``cursor``; the first page also carries closer contacts.

        How many records fit beside the given contacts is remembered per (key, cursor, contacts, records): every
        asker of a key gets the same page, and sizing a page costs several trial encodings.
        """
        first = cursor is None
        records = self._records.page(key, cursor, self._wall())
        # a holder's first page carries fewer contacts, so that it has room for records as well
        limit = min(self._config.k, self._config.value_contacts) if records else self._config.k
        contacts = tuple(self._table.closest(key, limit, exclude=exclude)) if first else ()
        layout = (key, cursor, contacts, tuple(records))
        # the first page of a holder names all it holds, so an asker that has them from another node stops there
        digest = records_digest(records) if first and records else None
        fits = self._page_layouts.get(layout)
        if fits is None:
            page = pack_values(
                rpc_id=rpc_id, key=key, records=records, contacts=contacts, first_page=first, digest=digest
            )
            if len(self._page_layouts) >= _PAGE_LAYOUT_CACHE:
                self._page_layouts.clear()
            self._page_layouts[layout] = len(page.records)
            return page
        more = fits < len(records)
        next_cursor = (records[fits - 1].publisher if fits else b"") if more else None
        return Values(
            rpc_id=rpc_id,
            key=key,
            records=tuple(records[:fits]),
            next_cursor=next_cursor,
            contacts=contacts,
            digest=digest if more else None,
        )

    def on_heard(self, envelope: Envelope, source: Address, *, answer: bool) -> None:
        """A verified datagram: put its sender in the routing table (see the module docstring)."""
        node_id = envelope.sender_id
        known = self._table.get(node_id)
        if not answer and (known is None or (known.host, known.port) != source):
            # a request from a node we do not know, or from another address than the one we reach it at: the source
            # address may be spoofed or the datagram replayed, so the node enters the table (or moves) only once it
            # answers a ping there; until then it gets no records pushed and is not handed to others
            if node_id not in self._confirming and len(self._confirming) < _MAX_CONFIRMING:
                self._confirming.add(node_id)
                self._spawn(self._confirm_address, node_id, source)
            return
        try:
            contact = (
                known
                if known is not None and (known.host, known.port) == source
                else Contact(pubkey=envelope.sender_pub, host=source[0], port=source[1])
            )
        except LocalProtocolError:
            return
        now = trio.current_time()
        actions = self._table.observe(contact, now)
        if node_id in self._table:
            self._heard[node_id] = now
            if known is None:
                self._on_new_contact(contact)
        if actions or known is None:  # else the table holds the same contacts (the gauge stays right)
            self._routing_actions(actions)

    # -- routing table upkeep --------------------------------------------------------------------------------

    def _routing_actions(self, actions: Iterable[RoutingAction]) -> None:
        for action in actions:
            match action:
                case PingOldest(contact=contact):
                    self._spawn(self._check_contact, contact)
                case Evicted(contact=contact, reason=reason, replaced_by=replacement):
                    self._heard.pop(contact.node_id, None)
                    self._metrics.dht_evictions.labels(reason).inc()
                    logger.debug("dht: evicted %s (%s)", contact.node_id.hex()[:16], reason)
                    if replacement is not None:
                        self._heard[replacement.node_id] = trio.current_time()
                        self._on_new_contact(replacement)
        self._metrics.dht_contacts.set(len(self._table))

    async def _check_contact(self, contact: Contact) -> None:
        """Ping ``contact``; evict it if it does not answer."""
        try:
            await self._rpc.request(
                (contact.host, contact.port), Ping(rpc_id=self._rpc.new_rpc_id()), expect_id=contact.node_id
            )
        except (PeerTimeout, DialError):
            self._routing_actions(self._table.on_ping_timeout(contact.node_id, trio.current_time()))

    async def _confirm_address(self, node_id: bytes, address: Address) -> None:
        """Ping ``address`` expecting ``node_id``; its answer puts the contact there (``on_heard``)."""
        try:
            await self._rpc.request(address, Ping(rpc_id=self._rpc.new_rpc_id()), expect_id=node_id)
        except (PeerTimeout, DialError):
            pass
        finally:
            self._confirming.discard(node_id)

    def _request_failed(self, contact: Contact) -> None:
        self._routing_actions(self._table.on_request_failed(contact.node_id, trio.current_time()))

    def _on_new_contact(self, contact: Contact) -> None:
        plans = replicate_to(self._records, self._table, contact, self._wall(), push_rank=self._config.push_rank)
        if plans:
            records = [r for plan in plans for r in plan.records]
            self._spawn(self._replicate, contact, records)

    async def _replicate(self, contact: Contact, records: list[Record]) -> None:
        logger.debug("dht: re-replicating %d records to %s", len(records), contact.node_id.hex()[:16])
        for record in records:
            if await self._store_at(contact, record) == "timeout":
                return

    # -- lookups ---------------------------------------------------------------------------------------------

    async def _lookup(self, target: bytes, *, find_value: bool) -> LookupResult:
        """Run one iterative lookup to its end (``services.dht_lookups``)."""
        self._table.mark_lookup(target, trio.current_time())
        self._metrics.dht_lookups.labels("find_value" if find_value else "find_node").inc()
        initial = self._table.closest(target, self._config.k)
        return await self._lookups.run(target, initial, find_value=find_value)

    # -- maintenance -----------------------------------------------------------------------------------------

    async def _maintenance_loop(self) -> None:
        while True:
            await trio.sleep(self._config.maintenance_interval)
            await self.run_maintenance()

    async def run_maintenance(self) -> None:
        """One maintenance pass; the service runs it every ``maintenance_interval`` (tests call it directly).

        Drops expired records, renews or pushes again our own records that are due, refreshes buckets not looked
        up for ``refresh_interval``, pings contacts silent for ``contact_check_interval`` (evicting those that do
        not answer), and bootstraps again if the table is thin (fewer than ``THIN_TABLE`` contacts). Returns when
        all of that is done.
        """
        async with self._maintenance_lock:
            cfg = self._config
            wall = self._wall()
            now = trio.current_time()
            for record in self._records.expire(wall):
                self._saver.delete(record)
            pushes: list[Record] = []
            for item in self._own.due_republish(wall):
                record = item.record
                if item.renew:
                    ttl = self._own_ttl.get(record.key, max(record.expires - wall, 1.0))
                    record = renew_record(record, now=wall, ttl=ttl, sign=self._rpc.signer.sign)
                    if self._records.put(record, wall).accepted:
                        self._saver.save(record)
                    self._own.add(record, wall)
                    self._saver.save_own(record.key, OwnRecord(record=record, ttl=ttl))
                pushes.append(record)
            tracked = {r.key for r in self._own.records()}
            for key in [key for key in self._own_ttl if key not in tracked]:
                del self._own_ttl[key]  # an expired tombstone: its job is done
                self._saver.save_own(key, None)
            refresh = self._table.due_refreshes(now)
            silent = [
                c
                for c in self._table.contacts()
                if now - self._heard.get(c.node_id, -math.inf) >= cfg.contact_check_interval
            ]
            async with trio.open_nursery() as nursery:
                for record in pushes:
                    nursery.start_soon(self._push, record)
                for target in refresh:
                    nursery.start_soon(self._refresh, target)
                for contact in silent:
                    nursery.start_soon(self._check_contact, contact)
            if len(self._table) < min(cfg.k, THIN_TABLE) and cfg.bootstrap:
                # a thin table (a restart while the bootstrap nodes were down left one contact or none) is filled
                # again from them now, not only after refresh_interval: a ping each and a lookup of our own id
                await self.bootstrap(cfg.bootstrap)
            self._update_gauges()
            await self._save_contacts()

    async def _refresh(self, target: bytes) -> None:
        await self._lookup(target, find_value=False)

    def _update_gauges(self) -> None:
        self._metrics.dht_contacts.set(len(self._table))
        self._metrics.dht_records.set(len(self._records))
        self._metrics.dht_own_records.set(len(self._own.records()))

    # -- persistence -----------------------------------------------------------------------------------------

    async def _save_contacts(self) -> None:
        """Save the contacts closest to our id (``SAVED_CONTACTS``) when they changed since the last save; an empty
        table keeps what was saved, for the next start."""
        contacts = self._table.closest(self._own_id, SAVED_CONTACTS)
        if not contacts or frozenset(contacts) == self._saved_contacts:
            return
        try:
            await save_contacts(self._store.meta, contacts)
        except StoreError as exc:
            logger.warning("dht: contacts not saved: %s", exc)
            return
        self._saved_contacts = frozenset(contacts)

    async def flush(self) -> None:
        """Write every record change made so far to the database; returns once it is committed.

        Raises:
            StoreError: the database failed.
        """
        await self._saver.flush()

    async def _load(self) -> None:
        """Load saved records: held ones into the record store, our own into the republish schedule."""
        wall = self._wall()
        await self._store.dht.delete_expired(wall)
        for record in await self._store.dht.load_records():
            if not self._records.put(record, wall).accepted:
                self._saver.delete(record)
        for own in await self._store.dht.load_own():
            record = own.record
            if record.publisher != self._pub or (record.is_tombstone and record.expires <= wall):
                self._saver.save_own(record.key, None)
                continue
            self._own.add(record, wall)
            self._own_ttl[record.key] = own.ttl
            if self._records.put(record, wall).accepted:
                self._saver.save(record)
        logger.info("dht: loaded %d records, %d own", len(self._records), len(self._own.records()))
        self._update_gauges()


def _newer(known: Record | None, record: Record) -> Record:
    return record if known is None or record.seq > known.seq else known
