"""The content service: publish UHRP content, replicate it to the nodes closest to its id, serve it to peers,
repair the replica count, and (with :mod:`.content_fetch`) retrieve it with integrity checks.

Theory of operation:
1. Publishing imports a file into the blob store (hashed while copied; see :mod:`.content_blobs`), records the
   metadata, publishes a provider record under ``uhrp:<hex>`` and tag records under ``tag:<tag>``, then places
   ``replication`` replicas in the background.
2. Every node announces itself under ``node:<identity hex>`` (swarm and http addresses), so that a placing node
   can dial a DHT contact it has never linked with.
3. Placement ranks DHT contacts by XOR distance to the content id and offers the content to the closest first
   (``content.offer``: size, budget and limits are checked before any byte moves); an accepting node receives it
   as one peer-link transfer (``content.replicate``, credit flow control), verifies size and SHA-256 before it
   keeps a byte, records it and publishes its own provider record. The placing node keeps each replica's state.
   Lineage (parents and relationship) travels in the provider records and the replicate header; each holder of
   derived content publishes ``children:<parent>`` records (:mod:`.content_lineage`).
4. Holders serve ``content.manifest`` (size, chunk hashes) and ``content.read`` (one piece of a range); priced
   content is served only to its producer or with the producer's signed access grant naming the asking peer.
5. Repair (every ``repair_interval``, jittered) on every holder: expired content is deleted and its record
   revoked; live holders are counted with a ``content.has`` check; below the target, the closest live holder
   recruits new replicas; above target + margin, the farthest unpinned holder past ``trim_grace`` drops its copy.
   A downloader that saw a bad chunk from a holder tells it (``content.bad``); the holder re-hashes its copy and
   drops it when corrupt, and repair restores the count.

This module keeps the service itself (lifecycle, publish, records, local reads, serving holders' data, priced
content, search); its parts live beside it: :mod:`.content_place` (3, placing side), :mod:`.content_receive`
(3, receiving side and the storage budget), :mod:`.content_repair` (5), :mod:`.content_blobs`, :mod:`.content_fetch`,
and :mod:`.content_common` (method names, limits, errors; re-exported here).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from overlay_node.clock import wall_time
from overlay_node.config import ContentSection
from overlay_node.crypto.keys import Identity
from overlay_node.crypto.uhrp import parse_uhrp, url_for_hash
from overlay_node.errors import BadRequest, NotFound, OverlayError, PaymentError, TransportError
from overlay_node.metrics import Metrics
from overlay_node.net.peers import PeerLink, PeerManager
from overlay_node.protocol.adverts import Endpoints, Filter
from overlay_node.protocol.content import (
    AccessGrant,
    ProviderRecord,
    ReplicaState,
    TagItem,
    decode_provider,
    decode_tag_items,
    encode_provider,
    encode_tag_items,
    sign_grant,
    verify_grant,
)
from overlay_node.protocol.payments import Receipt
from overlay_node.services import content_lineage, content_place
from overlay_node.services.content_blobs import BlobStore
from overlay_node.services.content_common import (
    BAD,
    GRANT,
    HAS,
    MANIFEST,
    OFFER,
    READ,
    REPLICATE,
    ContentMeta,
    NoPeerLink,
    PaymentRequired,
    Progress,
)
from overlay_node.services.content_common import hex_id as _hex_id
from overlay_node.services.content_common import int_field as _int_field
from overlay_node.services.content_common import no_progress as _no_progress
from overlay_node.services.content_receive import ReplicaReceiver
from overlay_node.services.content_repair import Repairer
from overlay_node.services.dht import DhtService, dht_key
from overlay_node.services.streams import STREAM_SERVICE
from overlay_node.store.content import ContentItem, ReplicaRow
from overlay_node.store.db import Store
from overlay_node.store.reports import ConsumptionRow

if TYPE_CHECKING:
    from overlay_node.services.adverts import AdvertService
    from overlay_node.services.payments import Payments

logger = logging.getLogger(__name__)

# the peer-link method names, limits, errors and the progress type live in content_common
__all__ = ["ContentService"]

#: how long :meth:`ContentService.held_item` trusts a cached row, and how many rows it keeps
_HELD_ROW_TTL: Final = 1.0
_HELD_ROWS_MAX: Final = 4096


class ContentTokenMaker(Protocol):
    """What puts UHRP advertisements on chain (``services/overlay_tokens.OverlayTokens``)."""

    async def advertise_content(self, content_hash: bytes, size: int, expiry: int) -> Any: ...

    async def tokens(self, kind: str, name: str | None = None) -> list[Any]: ...


class ContentService:
    """UHRP content of one node (see the module docstring).

    Args:
        identity: the node identity (producer key, record publisher).
        config: the ``[content]`` section.
        store: the node's database (``store.content``).
        dht: the running DHT service.
        peers: the peer manager.
        metrics: the node's instruments.
        blobs_root: ``<data_dir>/blobs``.
        endpoints: this node's endpoints (valid once the node is ready; see :meth:`node_ready`).
        wall_clock: wall-clock seconds for expiries and grants.
        payments: the node's payments, for priced content (none: only free content).
    """

    def __init__(
        self,
        identity: Identity,
        config: ContentSection,
        store: Store,
        dht: DhtService,
        peers: PeerManager,
        metrics: Metrics,
        blobs_root: Path,
        endpoints: Callable[[], Endpoints],
        *,
        wall_clock: Callable[[], float] = wall_time,
        payments: Payments | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        self.store = store
        self.dht = dht
        self.peers = peers
        self.metrics = metrics
        self.blobs = BlobStore(blobs_root)
        self._endpoints = endpoints
        self.wall = wall_clock
        self._ready = trio.Event()
        self._receiver = ReplicaReceiver(self)
        self._repairer = Repairer(self, random.Random())
        self._held_since: dict[bytes, float] = {}
        # hot-path cache of held items' rows (the gateway and holders' reads ask for the same row per request)
        self._held_rows: dict[str, tuple[float, ContentItem]] = {}
        self._nursery: trio.Nursery | None = None
        peers.on_request(OFFER, self._receiver.serve_offer)
        peers.on_transfer(REPLICATE, self._receiver.serve_replicate)
        peers.on_request(MANIFEST, self._serve_manifest)
        peers.on_request(READ, self._serve_read)
        peers.on_request(HAS, self._serve_has)
        peers.on_notice(BAD, self._on_bad)
        peers.on_request(GRANT, self._serve_grant)
        self.payments = payments
        #: puts UHRP advertisements on chain (set by the node once its wallet and overlay engine run)
        self.tokens: ContentTokenMaker | None = None
        #: the node's authenticated HTTP client (``services/auth_fetch.AuthFetch``), for content bought from another
        #: node's gateway (set by the node)
        self.http_client: Any = None
        if payments is not None:
            payments.register_pricer("uhrp:", self._price)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled: gauges, the node record once the node is ready, the repair loop."""
        await self._update_gauges()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._ready.wait()
            await self._announce()
            if self.config.repair_interval > 0:
                nursery.start_soon(self._repairer.loop)
            await trio.sleep_forever()  # the nursery stays open for replications and control operations

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` in the service's nursery (long operations started by the control API).

        Raises:
            RuntimeError: the service is not running.
        """
        if self._nursery is None:
            raise RuntimeError("the content service is not running")
        self._nursery.start_soon(fn)

    def node_ready(self) -> None:
        """Called by the node once its endpoints are known: announce this node for placement."""
        self._ready.set()

    @property
    def identity_key(self) -> str:
        return self.identity.public_key_hex

    async def _announce(self) -> None:
        endpoints = self._endpoints()
        value = encode_provider(
            ProviderRecord(content_id=bytes(32), size=0, swarm=endpoints.swarm[:4], http=endpoints.http)
        )
        try:
            await self.dht.put(dht_key("node", self.identity_key), value, ttl=self.config.provider_ttl)
        except OverlayError as exc:
            logger.warning("content: node record not published: %s", exc)

    async def _update_gauges(self) -> None:
        held = await self.store.content.list(local_only=True)
        self.metrics.content_objects.set(len(held))
        self.metrics.content_bytes.set(sum(i.size for i in held))

    # -- publish -------------------------------------------------------------------------------------------------

    async def publish(
        self,
        path: Path,
        *,
        meta: ContentMeta | None = None,
        replication: int | None = None,
        ttl: float | None = None,
        pinned: bool = True,
        progress: Progress = _no_progress,
        replicate: bool = True,
    ) -> ContentItem:
        """Import ``path`` and publish it with ``meta`` (none: the defaults); replication runs in the background
        (``replicate=False``: not at all).

        Raises:
            BadRequest: a bad file, metadata or lineage; over ``max_object``.
            StorageFull: over the storage budget.
        """
        meta = (meta or ContentMeta()).checked()
        if replication is not None and not 0 <= replication <= 64:
            raise BadRequest("replication must be between 0 and 64")
        if ttl is not None and ttl <= 0:
            raise BadRequest("ttl must be positive seconds")
        parent_ids = meta.parent_ids()
        try:
            size = (await trio.to_thread.run_sync(path.stat)).st_size
        except OSError as exc:
            raise BadRequest(f"cannot read {path}: {exc.strerror}") from None
        await self._receiver.reserve(size)
        try:

            def imported(done: int, total: int) -> None:
                progress({"event": "import", "done": done, "total": total})

            written = await self.blobs.import_file(
                path, chunk_size=self.config.chunk_size, max_size=self.config.max_object, progress=imported
            )
        finally:
            self._receiver.release(size)
        existing = await self.store.content.get(written.content_id.hex())
        item = ContentItem(
            hash=written.content_id.hex(),
            size=written.size,
            content_type=meta.content_type,
            title=meta.title,
            tags=meta.tags,
            price=meta.price,
            expires=int(self.wall() + ttl) if ttl else 0,
            parents=parent_ids,
            relationship=meta.relationship,
            chunk_size=written.plan.chunk_size,
            manifest=written.manifest,
            producer=self.identity_key,
            replication=self.config.replication if replication is None else replication,
            pinned=pinned or (existing.pinned if existing else False),
            local=True,
            published=True,
            created_at=self.wall(),
        )
        stored = await self.hold(item)
        for tag in meta.tags:
            await self._publish_tag(tag, item)
        progress({"event": "published", "hash": item.hash, "uhrp_url": url_for_hash(written.content_id)})
        if self.tokens is not None and item.price == 0:
            outpoint, error = await self.advertise_on_chain(item)
            progress({"event": "token", "token": outpoint, "token_error": error})
        logger.info("published %s (%d bytes, provider record at %d nodes)", item.hash[:16], item.size, stored)
        if replicate and item.replication > 0 and self._nursery is not None:
            self._nursery.start_soon(self._distribute_quietly, item.hash)
        return item

    async def hold(self, item: ContentItem) -> int:
        """Record ``item`` as held here (its row, the row cache, when the copy was taken, the gauges) and publish
        this node's provider record for it; returns how many nodes stored the record."""
        await self.store.content.upsert(item)
        self.forget_row(item.hash)
        self._held_since[bytes.fromhex(item.hash)] = trio.current_time()
        await self._update_gauges()
        stored = await self._publish_provider(item)
        await content_lineage.publish_children(self, item)
        return stored

    async def advertise_on_chain(self, item: ContentItem) -> tuple[str | None, str | None]:
        """Put a UHRP advertisement (BRC-26) for our copy of free ``item`` on chain, unless one of ours is active;
        ``(outpoint, None)``, or ``(None, why not)`` (no funds, no https URL, no token maker, priced content)."""
        if self.tokens is None:
            return None, "this node makes no tokens"
        if item.price > 0:
            return None, "priced content is not advertised on chain (its holders serve it against a grant only)"
        existing = await self.tokens.tokens("UHRP", item.hash)
        if existing:
            return existing[0].outpoint, None
        expiry = item.expires or int(self.wall() + self.config.token_ttl)
        try:
            token = await self.tokens.advertise_content(bytes.fromhex(item.hash), item.size, expiry)
        except (BadRequest, PaymentError) as exc:
            logger.info("no UHRP advertisement for %s: %s", item.hash[:16], exc)
            return None, str(exc)
        return token.outpoint, None

    def advertise_soon(self, item: ContentItem) -> None:
        """:meth:`advertise_on_chain` in the background (a replica just taken)."""
        if self.tokens is not None and item.price == 0 and item.size > 0:

            async def advertise() -> None:
                await self.advertise_on_chain(item)

            self.spawn(advertise)

    async def _distribute_quietly(self, content_hash: str) -> None:
        try:
            await self.distribute(content_hash)
        except OverlayError as exc:
            logger.warning("replication of %s failed: %s", content_hash[:16], exc)

    def _record_ttl(self, item: ContentItem) -> float:
        ttl = self.config.provider_ttl
        if item.expires:
            ttl = min(ttl, item.expires - self.wall())
        return max(1.0, min(ttl, self.dht_max_ttl))

    @property
    def dht_max_ttl(self) -> float:
        return 86_400.0

    async def _publish_provider(self, item: ContentItem) -> int:
        endpoints = self._endpoints()
        record = ProviderRecord(
            content_id=bytes.fromhex(item.hash),
            size=item.size,
            content_type=item.content_type,
            price=item.price,
            producer=bytes.fromhex(item.producer) if item.producer else b"",
            expires=item.expires,
            chunk_size=item.chunk_size,
            swarm=endpoints.swarm[:4],
            http=endpoints.http,
            parents=tuple(bytes.fromhex(p) for p in item.parents),
            relationship=item.relationship,
        )
        outcome = await self.dht.put(dht_key("uhrp", item.hash), encode_provider(record), ttl=self._record_ttl(item))
        return outcome.stored

    async def _publish_tag(self, tag: str, item: ContentItem) -> None:
        mine = [i for i in await self.store.content.list() if i.published and tag in i.tags and i.hash != item.hash]
        items = [item, *mine]
        value = encode_tag_items(
            [
                TagItem(
                    content_id=bytes.fromhex(i.hash),
                    size=i.size,
                    price=i.price,
                    content_type=i.content_type,
                    title=i.title,
                )
                for i in items
            ]
        )
        await self.dht.put(dht_key("tag", tag), value, ttl=self.config.provider_ttl)

    # -- local reads ---------------------------------------------------------------------------------------------

    async def item(self, content: str) -> ContentItem:
        """The metadata of a content id (hex or UHRP URL). Raises NotFound / BadRequest."""
        cid = parse_uhrp(content)
        item = await self.store.content.get(cid.hex())
        if item is None:
            raise NotFound(f"content {cid.hex()} is not known here")
        return item

    async def lineage(self, content: str, depth: int = 3) -> dict[str, Any]:
        """Ancestors and descendants of ``content`` found from here (see :func:`.content_lineage.lineage`)."""
        return await content_lineage.lineage(self, content, depth)

    async def list_items(self) -> list[ContentItem]:
        return await self.store.content.list()

    async def status(self, content: str) -> dict[str, Any]:
        """The metadata and each replica's state as this node knows it (what ``ctl content status`` shows)."""
        item = await self.item(content)
        replicas = await self.store.content.replicas(item.hash)
        return {
            **item.as_dict(),
            "uhrp_url": url_for_hash(bytes.fromhex(item.hash)),
            "replicas": [r.as_dict() for r in replicas],
            "available": sum(r.state == ReplicaState.AVAILABLE for r in replicas),
        }

    # -- providers and addresses ---------------------------------------------------------------------------------

    async def providers(self, content_id: bytes) -> dict[str, ProviderRecord]:
        """Live provider records by holder identity (hex), this node included when it holds the content."""
        out: dict[str, ProviderRecord] = {}
        for record in await self.dht.get(dht_key("uhrp", content_id.hex())):
            try:
                provider = decode_provider(record.value)
            except BadRequest:
                continue
            if provider.content_id == content_id:
                out[record.publisher.hex()] = provider
        return out

    async def link_to(self, identity_key: str, addresses: tuple[str, ...] = ()) -> PeerLink:
        """A link to ``identity_key``: the live one, else dialled by its key (``PeerManager.reach``: ``addresses``
        first, such as a provider record's, then the known peers, its node record and the adverts seen).

        Raises:
            NotFound: no address known. TransportError: every address failed.
        """
        return await self.peers.reach(identity_key, hints=addresses)

    async def ask(
        self, identity_key: str, addresses: tuple[str, ...], method: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """A request to ``identity_key`` over the link the peer manager keeps for it (dialled if need be; a dial
        that crossed the peer's own dial hands back the link both sides keep)."""
        link = await self.link_to(identity_key, addresses)
        return await link.request(method, body, timeout=timeout)

    # -- replication (placing side: content_place; receiving side: content_receive) ------------------------------

    async def distribute(
        self,
        content: str,
        *,
        replication: int | None = None,
        nodes: tuple[str, ...] = (),
        exclude: frozenset[str] = frozenset(),
        progress: Progress = _no_progress,
    ) -> list[ReplicaRow]:
        """Place replicas of local content until ``replication`` are available (default: the content's own).

        Candidates are ``nodes`` when given, else the DHT contacts closest to the content id; nodes already
        providing it count. Returns the replica rows.

        Raises:
            NotFound: the content is not held here. BadRequest: a bad replication factor or node key.
        """
        return await content_place.distribute(
            self, content, replication=replication, nodes=nodes, exclude=exclude, progress=progress
        )

    # -- repair (see content_repair) -----------------------------------------------------------------------------

    async def repair_pass(self) -> dict[str, int]:
        """One repair pass over every content held here (see the module docstring); returns action counts."""
        return await self._repairer.repair_pass()

    @property
    def repair_passes(self) -> int:
        """Repair passes completed so far."""
        return self._repairer.passes

    @property
    def held_since(self) -> Mapping[bytes, float]:
        """When (trio time) each copy held here was taken, for copies taken since this service started."""
        return self._held_since

    # -- serving holders' data -----------------------------------------------------------------------------------

    async def held_item(self, hex_id: str) -> ContentItem | None:
        """The row of content held here (``local``), or None; served from a short-lived cache.

        A row is cached for at most :data:`_HELD_ROW_TTL` seconds and dropped at once by this service's own
        changes (publish, replica kept, drop); callers still check the blob file and the expiry themselves.
        """
        now = trio.current_time()
        hit = self._held_rows.get(hex_id)
        if hit is not None and now - hit[0] < _HELD_ROW_TTL:
            return hit[1]
        item = await self.store.content.get(hex_id)
        if item is None or not item.local:
            self._held_rows.pop(hex_id, None)
            return None
        if len(self._held_rows) >= _HELD_ROWS_MAX:
            self._held_rows.clear()
        self._held_rows[hex_id] = (now, item)
        return item

    def forget_row(self, hex_id: str) -> None:
        """Drop the cached row of ``hex_id`` (after any change to it)."""
        self._held_rows.pop(hex_id, None)

    async def _local_item(self, cid: bytes) -> ContentItem:
        item = await self.held_item(cid.hex())
        if item is None or not item.local:
            raise NotFound(f"content {cid.hex()} is not held here")
        if item.expires and item.expires <= self.wall():
            raise NotFound(f"content {cid.hex()} has expired")
        return item

    def check_access(self, item: ContentItem, consumer: str, grant: object) -> None:
        """Raise unless ``consumer`` may read priced ``item``: free, the producer itself, or a valid grant.

        Raises:
            PaymentRequired: priced content without a valid grant for ``consumer``.
        """
        if item.price <= 0 or consumer == item.producer or (consumer == self.identity_key and item.published):
            return
        if grant is None:
            raise PaymentRequired(f"content {item.hash[:16]} costs {item.price} satoshis: pay the producer first")
        try:
            parsed = AccessGrant.from_wire(grant)
            verify_grant(
                parsed,
                content_id=bytes.fromhex(item.hash),
                consumer=bytes.fromhex(consumer),
                producer=bytes.fromhex(item.producer),
                now=self.wall(),
            )
        except BadRequest as exc:
            raise PaymentRequired(f"access grant refused: {exc}") from None

    async def _serve_manifest(self, link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        cid = _hex_id(body.get("hash"))
        item = await self._local_item(cid)
        self.check_access(item, link.peer_key, body.get("grant"))
        return {
            "size": item.size,
            "chunk_size": item.chunk_size,
            "manifest": item.manifest,
            "content_type": item.content_type,
            "price": item.price,
            "producer": item.producer,
            "title": item.title,
        }

    async def _serve_read(self, link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        cid = _hex_id(body.get("hash"))
        offset = _int_field(body, "offset")
        length = _int_field(body, "length", 1, self.config.read_piece)
        item = await self._local_item(cid)
        self.check_access(item, link.peer_key, body.get("grant"))
        if offset + length > item.size:
            raise BadRequest(f"range {offset}+{length} is past the end ({item.size} bytes)")
        data = await self.blobs.read(cid, offset, length)
        self.metrics.content_transfer_bytes.labels("out").inc(len(data))
        return {"data": data}

    async def _serve_has(self, _link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        cid = _hex_id(body.get("hash"))
        item = await self.store.content.get(cid.hex())
        return {"have": bool(item is not None and item.local and self.blobs.has(cid))}

    async def _on_bad(self, _link: PeerLink, body: dict[str, Any]) -> None:
        cid = _hex_id(body.get("hash"))
        await self.check_local(cid)

    async def check_local(self, cid: bytes) -> bool:
        """Re-hash our copy of ``cid``; a corrupt copy is dropped (record revoked). Returns whether it is good."""
        item = await self.store.content.get(cid.hex())
        if item is None or not item.local:
            return False
        if await self.blobs.verify(cid):
            return True
        logger.warning("content %s: local copy is corrupt; dropping it", cid.hex()[:16])
        self.metrics.content_repairs.labels("drop_corrupt").inc()
        await self.drop_local(item)
        return False

    async def drop_local(self, item: ContentItem) -> None:
        """Delete our copy of ``item`` and revoke our provider record (metadata kept for published content)."""
        cid = bytes.fromhex(item.hash)
        self.forget_row(item.hash)
        # the row first: a crash between the two leaves a stray blob file, never a row that says we hold a copy
        # that is gone
        if item.published:
            await self.store.content.upsert(item.with_(local=False))
        else:
            await self.store.content.delete(item.hash)
        await self.blobs.delete(cid)
        self._held_since.pop(cid, None)
        await self._update_gauges()
        try:
            await self.dht.remove(dht_key("uhrp", item.hash))
        except OverlayError as exc:
            logger.info("content %s: provider record not revoked: %s", item.hash[:16], exc)

    # -- priced content -------------------------------------------------------------------------------------------

    async def _price(self, resource: str, _payer: str, _amount: int | None) -> int:
        item = await self.store.content.get(parse_uhrp(resource.removeprefix("uhrp:")).hex())
        if item is None or not item.published or item.price <= 0:
            raise NotFound(f"{resource} is not priced content of this node")
        return item.price

    async def _serve_grant(self, link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        cid = _hex_id(body.get("hash"))
        receipt = Receipt.from_wire(body.get("receipt"))
        item = await self.store.content.get(cid.hex())
        if item is None or not item.published:
            raise NotFound(f"content {cid.hex()} is not published here")
        if not receipt.verify() or receipt.payee != self.identity_key:
            raise PaymentRequired("the receipt is not one of ours")
        if receipt.payer != link.peer_key or receipt.resource != f"uhrp:{cid.hex()}" or receipt.amount < item.price:
            raise PaymentRequired("the receipt does not pay for this content by this peer")
        expires = int(self.wall() + self.config.grant_ttl)
        grant = sign_grant(self.identity, cid, bytes.fromhex(link.peer_key), expires)
        return {"grant": grant.to_wire()}

    async def grant_for(
        self, content: str, *, max_price: int | None = None, progress: Progress = _no_progress
    ) -> dict[str, Any] | None:
        """The access grant needed to download ``content``: None for free, local or own content; else quote,
        pay the producer (up to ``max_price``) and get its signed grant.

        Raises:
            PaymentRequired: over ``max_price``, or no wallet. PaymentError and link errors from paying.
        """
        cid = parse_uhrp(content)
        item = await self.store.content.get(cid.hex())
        if item is not None and item.local:
            return None
        found = await self.providers(cid)
        priced = [p for p in found.values() if p.price > 0 and p.producer]
        if not priced:
            return None
        provider = priced[0]
        producer = provider.producer.hex()
        if producer == self.identity_key:
            return None
        if max_price is not None and provider.price > max_price:
            raise PaymentRequired(f"content costs {provider.price} satoshis, over --max-price {max_price}")
        if self.payments is None:
            raise PaymentRequired("this node has no wallet to pay for priced content")
        try:
            link = await self.link_to(producer)
        except (NotFound, TransportError) as exc:
            own = found.get(producer)  # the producer's own record names its gateway, the one that sells
            gateway = own.http if own is not None else ""
            raise NoPeerLink(f"no peer link to the producer {producer[:16]}: {exc}", gateway=gateway) from exc
        progress({"event": "paying", "producer": producer, "price": provider.price})
        quote = await self.payments.request_quote(producer, f"uhrp:{cid.hex()}", max_price=max_price)
        receipt = await self.payments.pay(quote)
        answer = await link.request(GRANT, {"hash": cid.hex(), "receipt": receipt.to_wire()})
        grant = answer.get("grant")
        if not isinstance(grant, dict):
            raise BadRequest("the producer answered without a grant")
        progress({"event": "granted", "producer": producer, "txid": receipt.txid})
        chunks = -(-provider.size // provider.chunk_size) if provider.chunk_size > 0 else 0
        bought = ConsumptionRow(
            resource=f"uhrp:{cid.hex()}",
            provider=producer,
            packets=chunks,
            bytes=provider.size,
            txid=receipt.txid,
            consumed_at=self.wall(),
        )
        await self.store.reports.record_consumption(bought)  # what `ctl report` counts as bought per content
        return grant

    # -- search --------------------------------------------------------------------------------------------------

    async def search(
        self,
        *,
        tags: tuple[str, ...] = (),
        content_type: str = "",
        producer: str = "",
        max_price: int | None = None,
        adverts: AdvertService | None = None,
    ) -> list[dict[str, Any]]:
        """Content listed under any of ``tags`` in the DHT (and local metadata) and, given ``adverts``, the streams
        whose ``ls_stream`` adverts name one of them as a capability (found through the ``index:cap:<tag>`` records),
        filtered; each result says its ``kind``, ``content`` or ``stream`` (a stream has no content type: a
        ``content_type`` filter leaves streams out). Without tags, only the content this node knows."""
        wanted = [t for t in (tag.strip() for tag in tags) if t]
        found = await self._tagged_content(wanted) if wanted else await self._known_content()
        if wanted and adverts is not None and not content_type:
            found |= await _tagged_streams(adverts, wanted, max_price)
        out = [
            entry
            for entry in found.values()
            if (not content_type or entry.get("content_type") == content_type)
            and (not producer or entry["producer"] == producer)
            and (max_price is None or entry["price"] <= max_price)
        ]
        out.sort(key=lambda e: (e["price"], e["kind"], e.get("hash") or e["stream_id"], e["producer"]))
        return out

    async def _tagged_content(self, tags: list[str]) -> dict[str, dict[str, Any]]:
        """The content the ``tag:<tag>`` records of ``tags`` (lower case) list, by hash."""
        found: dict[str, dict[str, Any]] = {}
        for tag in dict.fromkeys(t.lower() for t in tags):
            for record in await self.dht.get(dht_key("tag", tag)):
                try:
                    items = decode_tag_items(record.value)
                except BadRequest:
                    continue
                for it in items:
                    entry = found.setdefault(it.content_id.hex(), _content_entry(it.as_dict(), record.publisher.hex()))
                    entry["tags"] = sorted({*entry["tags"], tag})
        return found

    async def _known_content(self) -> dict[str, dict[str, Any]]:
        """The content this node has metadata of, by hash."""
        found: dict[str, dict[str, Any]] = {}
        for item in await self.store.content.list():
            meta = {
                "hash": item.hash,
                "size": item.size,
                "price": item.price,
                "content_type": item.content_type,
                "title": item.title,
            }
            found[item.hash] = {**_content_entry(meta, item.producer), "tags": list(item.tags)}
        return found


def _content_entry(meta: dict[str, Any], producer: str) -> dict[str, Any]:
    """A search result for content: its metadata, producer, UHRP URL and kind."""
    return {
        "kind": "content",
        **meta,
        "producer": producer,
        "tags": [],
        "uhrp_url": url_for_hash(bytes.fromhex(meta["hash"])),
    }


async def _tagged_streams(adverts: AdvertService, tags: list[str], max_price: int | None) -> dict[str, dict[str, Any]]:
    """The streams advertised (``ls_stream`` adverts of one stream each) with any of ``tags`` as a capability, as
    typed or in lower case (stream tags keep their case), by ``stream:<producer>:<id>``."""
    found: dict[str, dict[str, Any]] = {}
    for tag in dict.fromkeys(variant for typed in tags for variant in (typed, typed.lower())):
        for hit in await adverts.discover(None, Filter(capabilities=(tag,), max_price=max_price)):
            advert = hit.advert
            if advert.name != STREAM_SERVICE or not advert.resource:
                continue
            entry = found.setdefault(
                f"stream:{advert.identity_hex}:{advert.resource}",
                {
                    "kind": "stream",
                    "stream_id": advert.resource,
                    "producer": advert.identity_hex,
                    "pricing_model": advert.offer.pricing_model,
                    "price": advert.offer.price,
                    "tags": [],
                    "capabilities": list(advert.offer.capabilities),
                    "expires": advert.expires,
                },
            )
            entry["tags"] = sorted({*entry["tags"], tag})
    return found
