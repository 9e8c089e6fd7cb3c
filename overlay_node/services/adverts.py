"""The adverts service: publish, refresh, revoke and discover SHIP/SLAP adverts over the DHT (BRC-88).

Theory of operation:
1. An advert is our own signed DHT record under ``ship:<topic>`` or ``slap:<service>`` whose value is the encoded
   :class:`~overlay_node.protocol.adverts.Advert`. The DHT service stores it at the k closest nodes and republishes
   it before expiry; revoking publishes a tombstone with a higher seq. The advert names its own expiry too, which
   the DHT cannot renew: that is the renewer's job (6).
2. Direct peers see a new advert (or a revocation) at once: the signed record is pushed over every peer link as an
   ``advert.push`` notice, and the receiver checks it exactly as a STORE (record signature, limits) plus the
   advert's own checks before it keeps it.
3. Discovery is a DHT ``get`` of the key: the union over publishers, each value decoded and checked (BRC-88
   signature, publisher = advertised identity), filtered (capability, max price, region, service type), minus
   banned hosts, ordered by host score. Without a name, discovery reads the index records of the service type
   (else of the first capability) the filter asks for, then every advert they list (``protocol/adverts.py``, 5);
   each publisher keeps its own index records in step with its adverts.
4. The janitor health-checks the hosts of adverts this node has seen with a DHT ping to their advertised DHT
   endpoint (answered and signed by the host's own key). A host that fails ``janitor_failures`` checks in a row
   is banned: its adverts are no longer returned, whoever republishes them, until it answers a check again.
5. Addresses: the swarm endpoints of the hosts discovery returned are remembered (bounded), and with the DHT
   ``node:`` records they are what the peer manager dials a peer by identity with (:meth:`seen_addresses`,
   :meth:`node_addresses`, wired by the node as resolvers of ``PeerManager.reach``).
6. Renewal: every advert of ours (``ctl advertise``, a stream's ``ls_stream``: one mechanism for all) is put again,
   the same advert with this run's endpoints and a fresh expiry, once less than half its lifetime is left
   (:meth:`AdvertService.renew_due`, run by :meth:`AdvertService.run`), and pushed to direct peers, until it is
   revoked. Each renewal first reads our current record under its key, with no checkpoint between that read and
   the put: a revoked advert (a tombstone), an expired one or one replaced by something else is dropped from the
   schedule, never put back. Its lifetime is the ``ttl`` it was published with (``adverts.ttl`` for adverts loaded
   at start, until they are published again).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import trio

from overlay_node.clock import wall_time
from overlay_node.config import AdvertsSection
from overlay_node.crypto.keys import Identity
from overlay_node.errors import (
    BadRequest,
    NotFound,
    OverlayError,
    PaymentError,
    ProtocolError,
    RemoteProtocolError,
)
from overlay_node.lru import LruMap
from overlay_node.metrics import Metrics
from overlay_node.net.peers import PeerLink, PeerManager
from overlay_node.protocol.adverts import (
    Advert,
    AdvertError,
    Endpoints,
    Filter,
    Offer,
    decode_advert,
    decode_index,
    dht_name,
    encode_advert,
    encode_index,
    host_score,
    index_terms,
    kind_of,
    make_advert,
)
from overlay_node.protocol.content import decode_provider
from overlay_node.services.dht import DhtService, dht_key
from overlay_node.wire.dht import Record

logger = logging.getLogger(__name__)

PUSH_METHOD = "advert.push"
NO_FILTER = Filter()
#: adverts fetched for one discovery through an index, and how many at once
MAX_INDEXED = 64
INDEX_FETCHES = 8
#: hosts whose advertised swarm endpoints are remembered for reaching them by identity
SEEN_HOSTS = 4096
#: an advert of ours is renewed once less than this part of its lifetime is left (module doc, 6)
RENEW_AT = 0.5
#: seconds (trio's clock) the renewer waits between passes over its schedule: at most (so that a jump of the wall
#: clock is noticed) and at least (an advert of a 1 s lifetime is not put again and again)
RENEW_CHECK_MAX = 60.0
RENEW_CHECK_MIN = 0.5
#: seconds before a renewal that failed is tried again
RENEW_RETRY = 5.0


class TokenMaker(Protocol):
    """What puts adverts on chain (``services/overlay_tokens.OverlayTokens``)."""

    async def advertise(self, name: str, *, uri: str = "") -> Any: ...

    async def revoke(self, kind: Any, name: str) -> list[str]: ...


@dataclass(slots=True)
class HostHealth:
    """What the janitor knows of one advertising host."""

    dht: str
    failures: int = 0
    successes: int = 0
    latency_ms: float | None = None
    banned: bool = False
    checked_at: float = 0.0

    @property
    def score(self) -> float:
        return host_score(self.latency_ms, self.failures, self.successes)


@dataclass(slots=True, kw_only=True)
class _Renewal:
    """When one advert of ours is renewed: ``seq`` of the record this was learned from, the advert's own expiry,
    the lifetime each renewal gives it, and the wall time before which a failed renewal is not tried again."""

    seq: int
    expires: int
    ttl: float
    retry_at: float = 0.0

    @property
    def due(self) -> float:
        return max(self.expires - self.ttl * RENEW_AT, self.retry_at)


@dataclass(frozen=True, slots=True, kw_only=True)
class Found:
    """One discovered host of a topic or service."""

    advert: Advert
    score: float
    latency_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return {**self.advert.as_dict(), "score": self.score, "latency_ms": self.latency_ms}


def record_to_wire(record: Record) -> list[object]:
    """A signed DHT record as CBOR-ready data for a peer notice."""
    return [record.key, record.value, record.publisher, record.seq, record.expires, record.sig]


def record_from_wire(raw: object) -> Record:
    """Parse a pushed record; the DHT's own checks (signature, limits) run when it is ingested.

    Raises:
        RemoteProtocolError: not a well-formed record.
    """
    if not isinstance(raw, list) or len(raw) != 6:
        raise RemoteProtocolError("pushed record is not a 6-item list", reason="malformed_advert")
    key, value, publisher, seq, expires, sig = raw
    try:
        return Record(key=key, value=value, publisher=publisher, seq=seq, expires=expires, sig=sig)
    except (ProtocolError, TypeError, ValueError) as exc:  # Record's own checks raise LocalProtocolError
        raise RemoteProtocolError(f"pushed record is malformed: {exc}", reason="malformed_advert") from exc


class AdvertService:
    """SHIP/SLAP adverts of one node (see the module docstring).

    Args:
        identity: the node identity (advertiser and record publisher).
        config: the ``[adverts]`` section.
        dht: the running DHT service.
        peers: the peer manager (push to direct peers).
        metrics: the node's instruments.
        endpoints: returns this node's current endpoints (known once the node's listeners are bound).
    """

    def __init__(
        self,
        identity: Identity,
        config: AdvertsSection,
        dht: DhtService,
        peers: PeerManager,
        metrics: Metrics,
        endpoints: Callable[[], Endpoints],
        *,
        wall_clock: Callable[[], float] = wall_time,
    ) -> None:
        self._identity = identity
        self._config = config
        self._dht = dht
        self._peers = peers
        self._metrics = metrics
        self._endpoints = endpoints
        self._wall = wall_clock
        self._hosts: dict[bytes, HostHealth] = {}
        self._seen: LruMap[str, tuple[str, ...]] = LruMap(SEEN_HOSTS)
        self._endpoints_known = trio.Event()
        self._janitor_pass = trio.Event()
        #: our adverts the renewer keeps alive, by DHT key (module doc, 6), and its wake-up call
        self._renewals: dict[bytes, _Renewal] = {}
        self._renewals_changed = trio.Event()
        #: puts adverts on chain too (set by the node once its wallet and overlay engine run)
        self.tokens: TokenMaker | None = None
        peers.on_notice(PUSH_METHOD, self._on_push)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew our adverts (module doc, 6) and run the janitor, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_renewed)
            task_status.started()
            if self._config.janitor_interval <= 0:
                await trio.sleep_forever()
            while True:
                await trio.sleep(self._config.janitor_interval)
                await self.run_janitor()

    # -- producer side -------------------------------------------------------------------------------------------

    async def publish(
        self,
        name: str,
        *,
        service_type: str = "",
        pricing_model: str = "free",
        price: int = 0,
        capabilities: tuple[str, ...] = (),
        region: str = "",
        ttl: float | None = None,
        uri: str = "",
        token: str = "",
        resource: str = "",
    ) -> tuple[Advert, int]:
        """Publish (or refresh) our advert for ``name`` (of one ``resource`` of it, if given); returns it and how
        many DHT nodes stored it. ``token``: the outpoint of the same advert's token on chain, named in the record
        so that others can fetch it. Our index records follow (module doc, 3).

        Raises:
            BadRequest: a bad name, TTL, resource or metadata.
        """
        ttl = self._config.ttl if ttl is None else ttl
        if not 1 <= ttl <= 86_400:
            raise BadRequest("ttl must be between 1 second and 24 hours")
        endpoints = self._endpoints()
        advert = make_advert(
            self._identity,
            name=name,
            token=token,
            uri=uri or self.default_uri(),
            endpoints=endpoints,
            expires=int(self._wall() + ttl),
            offer=Offer(
                service_type=service_type,
                pricing_model=pricing_model,
                price=price,
                capabilities=capabilities,
                region=region,
            ),
            resource=resource,
        )
        key = dht_key(*advert.dht_key_name)
        before = self._own_advert(key)
        outcome = await self._dht.put(key, encode_advert(advert), ttl=ttl)
        self._schedule(key, outcome.seq, advert.expires, ttl)
        await self._push(key)
        await self._reindex(index_terms(advert.offer) | (index_terms(before.offer) if before else set()))
        self._metrics.adverts_published.labels(advert.kind).inc()
        logger.info("advertised %s %s (stored at %d nodes)", advert.kind, name, outcome.stored)
        return advert, outcome.stored

    async def advertise(self, name: str, *, on_chain: bool = True, **options: Any) -> dict[str, Any]:
        """Publish our advert for ``name`` (:meth:`publish`'s ``options``), and, with ``on_chain`` and a token
        maker set (``self.tokens``), first put the same advert on chain as a BRC-88 token, named in the DHT record.
        A token that cannot be made (no funds, no https URI) leaves the DHT advert standing and says why.

        Raises:
            BadRequest: a bad name (BRC-87), or as :meth:`publish`.

        Returns:
            ``{"advert", "stored", "token": outpoint or None, "token_error": reason or None}``.
        """
        kind_of(name)  # a bad name is refused before anything is made (BadRequest)
        token, error = None, None
        if on_chain and self.tokens is not None:
            try:
                made = await self.tokens.advertise(name, uri=options.get("uri") or self.default_uri())
                token = made.outpoint
            except (BadRequest, PaymentError) as exc:
                error = str(exc)
                logger.info("advert %s without a token on chain: %s", name, exc)
        advert, stored = await self.publish(name, token=token or "", **options)
        return {"advert": advert.as_dict(), "stored": stored, "token": token, "token_error": error}

    async def withdraw(self, name: str) -> dict[str, Any]:
        """Revoke our advert for ``name`` in the DHT and spend its tokens on chain (when a token maker is set).

        Returns:
            ``{"revoked", "stored", "token_spends": [txid, ...], "token_error"}``.
        """
        stored = await self.revoke(name)
        spends: list[str] = []
        error = None
        if self.tokens is not None:
            try:
                spends = await self.tokens.revoke(kind_of(name), name)
            except (BadRequest, PaymentError) as exc:
                error = str(exc)
        return {"revoked": name, "stored": stored, "token_spends": spends, "token_error": error}

    def node_ready(self) -> None:
        """Called by the node once its endpoints are known (adverts name them)."""
        self._endpoints_known.set()

    async def wait_ready(self) -> None:
        """Wait until the node's endpoints are known."""
        await self._endpoints_known.wait()

    def default_uri(self) -> str:
        """The URI our adverts (and their tokens) name: ``adverts.uri``, else this node's http origin."""
        return self._config.uri or self._endpoints().http

    async def revoke(self, name: str, *, resource: str = "") -> int:
        """Revoke our advert for ``name`` (of ``resource``, if given) everywhere (a signed tombstone), and take it
        out of our index records; returns how many nodes stored the tombstone.

        Raises:
            NotFound: we have no advert for ``name``.
        """
        kind = kind_of(name)
        key = dht_key(*dht_name(kind, name, resource))
        before = self._own_advert(key)
        if before is None:
            raise NotFound(f"no advert of ours for {name}{'/' + resource if resource else ''}")
        self._renewals.pop(key, None)
        outcome = await self._dht.remove(key)
        await self._push(key)
        await self._reindex(index_terms(before.offer))
        logger.info("revoked %s %s%s", kind, name, f"/{resource}" if resource else "")
        return outcome.stored

    # -- renewal (module doc, 6) ---------------------------------------------------------------------------------

    def _schedule(self, key: bytes, seq: int, expires: int, ttl: float, *, wake: bool = True) -> None:
        """Keep the advert just put under ``key`` renewed; a put that finished after a newer one changes nothing."""
        known = self._renewals.get(key)
        if known is None or seq >= known.seq:
            self._renewals[key] = _Renewal(seq=seq, expires=expires, ttl=ttl)
            if wake:
                self._renewals_changed.set()

    def _live_own(self, key: bytes) -> Advert | None:
        """Our current advert under ``key``, or None when it is revoked, expired or not an advert (no checkpoint)."""
        me = self._identity.public_key
        record = next((r for r in self._dht.local_records(key) if r.publisher == me), None)
        if record is None:
            return None
        try:
            advert = decode_advert(record.value, publisher=record.publisher)
        except AdvertError:
            return None
        renewal = self._renewals.get(key)
        if renewal is not None and renewal.seq != record.seq:  # renewed by the DHT, or published meanwhile
            renewal.seq, renewal.expires = record.seq, advert.expires
        return advert

    async def renew_due(self) -> int:
        """Put again, with this run's endpoints and a fresh expiry, each advert of ours that has less than half its
        lifetime left, and push it to direct peers; returns how many were renewed. Revoked ones are forgotten."""
        renewed = 0
        for key in list(self._renewals):
            now = self._wall()
            renewal = self._renewals.get(key)
            if renewal is None or renewal.due > now:
                continue
            advert = self._live_own(key)
            if advert is None:
                del self._renewals[key]
                continue
            if renewal.due > now:
                continue  # renewed while we were not looking
            fresh = replace(advert, endpoints=self._endpoints(), expires=int(now + renewal.ttl))
            try:
                # no checkpoint since _live_own read the record: a revocation cannot slip in between
                outcome = await self._dht.put(key, encode_advert(fresh), ttl=renewal.ttl)
            except OverlayError as exc:
                renewal.retry_at = now + RENEW_RETRY
                logger.warning("advert %s not renewed (trying again in %gs): %s", fresh.name, RENEW_RETRY, exc)
                continue
            self._schedule(key, outcome.seq, fresh.expires, renewal.ttl, wake=False)
            await self._push(key)
            renewed += 1
            where = f"{fresh.name}/{fresh.resource}" if fresh.resource else fresh.name
            logger.debug("renewed %s %s until %d", fresh.kind, where, fresh.expires)
        return renewed

    async def _keep_renewed(self) -> None:
        """Renew our adverts as they come due (and the ones a previous run left in the DHT), until cancelled."""
        await self.wait_ready()  # a renewed advert names this run's endpoints
        for record in self._dht.own_records():
            if record.is_tombstone or record.expires <= self._wall():
                continue
            try:
                advert = decode_advert(record.value, publisher=record.publisher)
            except AdvertError:
                continue  # one of our other records (content, streams): not an advert
            if record.key not in self._renewals:
                self._schedule(record.key, record.seq, advert.expires, self._config.ttl, wake=False)
        while True:
            self._renewals_changed = trio.Event()
            await self.renew_due()
            due = min((r.due for r in self._renewals.values()), default=math.inf) - self._wall()
            with trio.move_on_after(min(max(due, RENEW_CHECK_MIN), RENEW_CHECK_MAX)):
                await self._renewals_changed.wait()

    def _own_advert(self, key: bytes) -> Advert | None:
        return next((a for a in self.own() if dht_key(*a.dht_key_name) == key), None)

    async def _reindex(self, terms: set[str]) -> None:
        """Bring our index records for ``terms`` in step with our live adverts: each lists the keys of those
        listed under it (newest expiry first), or is revoked when none is left."""
        if not terms:
            return
        mine = self.own()
        now = self._wall()
        held = {r.key for r in self._dht.own_records() if not r.is_tombstone}
        for term in sorted(terms):
            listed = sorted((a for a in mine if term in index_terms(a.offer)), key=lambda a: -a.expires)
            key = dht_key("index", term)
            try:
                if listed:
                    ttl = max(listed[0].expires - now, 1.0)  # never longer than an advert's own, which the DHT took
                    await self._dht.put(key, encode_index([dht_key(*a.dht_key_name) for a in listed]), ttl=ttl)
                elif key in held:
                    await self._dht.remove(key)
            except OverlayError as exc:
                logger.warning("index record %s not updated: %s", term, exc)

    def own(self) -> list[Advert]:
        """Our live adverts (from the DHT service's own records, which survive restarts)."""
        mine: list[Advert] = []
        now = self._wall()
        for record in self._dht.own_records():
            if record.is_tombstone or record.expires <= now:
                continue
            try:
                mine.append(decode_advert(record.value, publisher=record.publisher))
            except AdvertError:
                continue  # one of our other records (content, streams): not an advert
        return sorted(mine, key=lambda a: a.name)

    async def _push(self, key: bytes) -> None:
        record = next((r for r in self._dht.own_records() if r.key == key), None)
        if record is None:
            return
        body = {"record": record_to_wire(record)}
        for info in self._peers.links():
            link = self._peers.link(info.identity_key)
            if link is None:
                continue
            try:
                await link.notify(PUSH_METHOD, body)
            except OverlayError as exc:
                logger.debug("advert push to %s failed: %s", info.identity_key[:16], exc)

    async def _on_push(self, _link: PeerLink, body: dict[str, Any]) -> None:
        record = record_from_wire(body.get("record"))
        if not record.is_tombstone:
            decode_advert(record.value, publisher=record.publisher)  # raises AdvertError for a bad advert
        result = self._dht.ingest(record)
        if result.refused:
            self._metrics.advert_drops.labels(result.value).inc()
        else:
            self._metrics.adverts_pushed_in.inc()

    # -- consumer side -------------------------------------------------------------------------------------------

    async def discover(self, name: str | None, flt: Filter = NO_FILTER) -> list[Found]:
        """All live, valid, unbanned hosts advertising ``name`` that match ``flt``, best score first. Without a
        name: every advert listed in the index of ``flt``'s service type (else of its first capability) that
        matches ``flt``.

        Raises:
            BadRequest: a bad name, or neither a name nor a service type or capability to look up.
        """
        if name is None:
            records = await self._indexed(flt)
        else:
            records = await self._dht.get(dht_key(*dht_name(kind_of(name), name)))
        now = self._wall()
        found: list[Found] = []
        for record in records:
            if record.is_tombstone or record.expires <= now:
                continue
            try:
                advert = decode_advert(record.value, publisher=record.publisher)
            except AdvertError as exc:
                self._metrics.advert_drops.labels(exc.reason).inc()
                continue
            if (name is not None and advert.name != name) or advert.expires <= now:
                continue
            if dht_key(*advert.dht_key_name) != record.key:
                continue  # an advert stored under another name's key
            health = self._track(advert)
            if health.banned or not flt.matches(advert):
                continue
            found.append(Found(advert=advert, score=health.score, latency_ms=health.latency_ms))
        found.sort(key=lambda f: (-f.score, f.advert.offer.price, f.advert.identity_hex))
        return found

    async def _indexed(self, flt: Filter) -> list[Record]:
        """The advert records the index of ``flt``'s service type (else first capability) lists, each from the
        publisher that listed it."""
        if flt.service_type:
            term = f"type:{flt.service_type}"
        elif flt.capabilities:
            term = f"cap:{flt.capabilities[0]}"
        else:
            raise BadRequest(
                "give a topic (--topic tm_...), a service (--service ls_...), a service type (--service-type) "
                "or a capability (--capability) to discover"
            )
        wanted: dict[bytes, set[bytes]] = {}
        for record in await self._dht.get(dht_key("index", term)):
            try:
                keys = decode_index(record.value)
            except AdvertError as exc:
                self._metrics.advert_drops.labels(exc.reason).inc()
                continue
            for key in keys:
                if key in wanted or len(wanted) < MAX_INDEXED:
                    wanted.setdefault(key, set()).add(record.publisher)
        found: list[Record] = []
        limiter = trio.CapacityLimiter(INDEX_FETCHES)

        async def fetch(key: bytes, publishers: set[bytes]) -> None:
            async with limiter:
                try:
                    records = await self._dht.get(key)
                except OverlayError as exc:
                    logger.debug("indexed advert not fetched: %s", exc)
                    return
            found.extend(r for r in records if r.publisher in publishers)

        async with trio.open_nursery() as nursery:
            for key, publishers in wanted.items():
                nursery.start_soon(fetch, key, publishers)
        return found

    def _track(self, advert: Advert) -> HostHealth:
        health = self._hosts.get(advert.identity_key)
        if health is None:
            health = self._hosts[advert.identity_key] = HostHealth(dht=advert.endpoints.dht)
        elif advert.endpoints.dht:
            health.dht = advert.endpoints.dht
        if advert.endpoints.swarm:
            self._seen.put(advert.identity_hex, advert.endpoints.swarm[:4])
        return health

    # -- addresses of peers (resolvers of PeerManager.reach) --------------------------------------------------------

    async def seen_addresses(self, identity_key: str) -> tuple[str, ...]:
        """The swarm endpoints the last advert of ``identity_key`` seen here named (none if no advert was seen)."""
        return self._seen.get(identity_key.lower(), ())

    async def node_addresses(self, identity_key: str) -> tuple[str, ...]:
        """The swarm endpoints of the node record ``identity_key`` publishes in the DHT (``node:<key>``)."""
        for record in await self._dht.get(dht_key("node", identity_key)):
            if record.publisher.hex() == identity_key:
                try:
                    return decode_provider(record.value).swarm
                except BadRequest:
                    return ()
        return ()

    def hosts(self) -> dict[str, HostHealth]:
        """The janitor's view of every host seen, by identity key (hex)."""
        return {key.hex(): health for key, health in self._hosts.items()}

    # -- janitor -------------------------------------------------------------------------------------------------

    async def run_janitor(self) -> None:
        """One pass: health-check every known host (concurrently), ban after repeated failures, lift on success."""

        async def check(identity: bytes, health: HostHealth) -> None:
            if identity == self._identity.public_key:
                health.successes += 1
                return
            started = trio.current_time()
            try:
                with trio.fail_after(self._config.check_timeout):
                    await self._dht.ping(health.dht, expect_key=identity)
            except (trio.TooSlowError, OverlayError) as exc:
                health.failures += 1
                logger.debug(
                    "janitor: host %s failed a check (%d in a row): %s", identity.hex()[:16], health.failures, exc
                )
                if health.failures >= self._config.janitor_failures and not health.banned:
                    health.banned = True
                    self._metrics.adverts_banned_hosts.inc()
                    logger.info("janitor: host %s is down; its adverts are suppressed", identity.hex()[:16])
                return
            finally:
                health.checked_at = self._wall()
            health.latency_ms = round((trio.current_time() - started) * 1000, 3)
            health.successes += 1
            health.failures = 0
            if health.banned:
                health.banned = False
                self._metrics.adverts_banned_hosts.dec()
                logger.info("janitor: host %s answers again", identity.hex()[:16])

        async with trio.open_nursery() as nursery:
            for identity, health in list(self._hosts.items()):
                if health.dht:
                    nursery.start_soon(check, identity, health)


__all__ = ["AdvertService", "Found", "HostHealth", "record_from_wire", "record_to_wire"]
