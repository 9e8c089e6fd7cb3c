"""The adverts service: publish, refresh, revoke and discover SHIP/SLAP adverts over the DHT (BRC-88).

Theory of operation:
1. An advert is our own signed DHT record under ``ship:<topic>`` or ``slap:<service>`` whose value is the encoded
   :class:`~overlay_node.protocol.adverts.Advert`. The DHT service stores it at the k closest nodes and republishes
   it before expiry; revoking publishes a tombstone with a higher seq.
2. Direct peers see a new advert (or a revocation) at once: the signed record is pushed over every peer link as an
   ``advert.push`` notice, and the receiver checks it exactly as a STORE (record signature, limits) plus the
   advert's own checks before it keeps it.
3. Discovery is a DHT ``get`` of the key: the union over publishers, each value decoded and checked (BRC-88
   signature, publisher = advertised identity), filtered (capability, max price, region, service type), minus
   banned hosts, ordered by host score.
4. The janitor health-checks the hosts of adverts this node has seen with a DHT ping to their advertised DHT
   endpoint (answered and signed by the host's own key). A host that fails ``janitor_failures`` checks in a row
   is banned: its adverts are no longer returned, whoever republishes them, until it answers a check again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from overlay_node.clock import wall_time
from overlay_node.config import AdvertsSection
from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest, NotFound, OverlayError, PaymentError, RemoteProtocolError
from overlay_node.metrics import Metrics
from overlay_node.net.peers import PeerLink, PeerManager
from overlay_node.protocol.adverts import (
    Advert,
    AdvertError,
    Endpoints,
    Filter,
    Offer,
    decode_advert,
    dht_name,
    encode_advert,
    host_score,
    kind_of,
    make_advert,
)
from overlay_node.services.dht import DhtService, dht_key
from overlay_node.wire.dht import Record

logger = logging.getLogger(__name__)

PUSH_METHOD = "advert.push"
NO_FILTER = Filter()


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
    except (RemoteProtocolError, TypeError, ValueError) as exc:
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
        self._janitor_pass = trio.Event()
        #: puts adverts on chain too (set by the node once its wallet and overlay engine run)
        self.tokens: TokenMaker | None = None
        peers.on_notice(PUSH_METHOD, self._on_push)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the janitor until cancelled."""
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
    ) -> tuple[Advert, int]:
        """Publish (or refresh) our advert for ``name``; returns it and how many DHT nodes stored it. ``token``:
        the outpoint of the same advert's token on chain, named in the record so that others can fetch it.

        Raises:
            BadRequest: a bad name, TTL or metadata.
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
        )
        key = dht_key(*dht_name(advert.kind, name))
        outcome = await self._dht.put(key, encode_advert(advert), ttl=ttl)
        await self._push(key)
        self._metrics.adverts_published.labels(advert.kind).inc()
        logger.info("advertised %s %s (stored at %d nodes)", advert.kind, name, outcome.stored)
        return advert, outcome.stored

    async def advertise(self, name: str, *, on_chain: bool = True, **options: Any) -> dict[str, Any]:
        """Publish our advert for ``name`` (:meth:`publish`'s ``options``), and, with ``on_chain`` and a token
        maker set (``self.tokens``), first put the same advert on chain as a BRC-88 token, named in the DHT record.
        A token that cannot be made (no funds, no https URI) leaves the DHT advert standing and says why.

        Returns:
            ``{"advert", "stored", "token": outpoint or None, "token_error": reason or None}``.
        """
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

    def default_uri(self) -> str:
        """The URI our adverts (and their tokens) name: ``adverts.uri``, else this node's http origin."""
        return self._config.uri or self._endpoints().http

    async def revoke(self, name: str) -> int:
        """Revoke our advert for ``name`` everywhere (a signed tombstone); returns how many nodes stored it.

        Raises:
            NotFound: we have no advert for ``name``.
        """
        kind = kind_of(name)
        key = dht_key(*dht_name(kind, name))
        if not any(a.name == name for a in self.own()):
            raise NotFound(f"no advert of ours for {name}")
        outcome = await self._dht.remove(key)
        await self._push(key)
        logger.info("revoked %s %s", kind, name)
        return outcome.stored

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

    async def discover(self, name: str, flt: Filter = NO_FILTER) -> list[Found]:
        """All live, valid, unbanned hosts advertising ``name`` that match ``flt``, best score first."""
        kind = kind_of(name)
        records = await self._dht.get(dht_key(*dht_name(kind, name)))
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
            if advert.name != name or advert.expires <= now:
                continue
            health = self._track(advert)
            if health.banned or not flt.matches(advert):
                continue
            found.append(Found(advert=advert, score=health.score, latency_ms=health.latency_ms))
        found.sort(key=lambda f: (-f.score, f.advert.offer.price, f.advert.identity_hex))
        return found

    def _track(self, advert: Advert) -> HostHealth:
        health = self._hosts.get(advert.identity_key)
        if health is None:
            health = self._hosts[advert.identity_key] = HostHealth(dht=advert.endpoints.dht)
        elif advert.endpoints.dht:
            health.dht = advert.endpoints.dht
        return health

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
