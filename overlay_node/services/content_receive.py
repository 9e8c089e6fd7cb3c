"""Replication, receiving side: answer a peer's ``content.offer`` (size, storage budget and limits checked before
any byte moves), take the ``content.replicate`` transfer into the blob store (size and SHA-256 verified before a
byte is kept), record the replica and publish this node's provider record for it.

:class:`ReplicaReceiver` also keeps the storage budget's reservations, which publishing takes too. The
:class:`~overlay_node.services.content.ContentService` owns one and registers its two handlers; the other end of
the offer and the transfer is :mod:`.content_place`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from overlay_node.errors import BadRequest, Conflict
from overlay_node.metrics import Metrics
from overlay_node.net.peers import PeerLink
from overlay_node.net.transfers import TransferReceiver
from overlay_node.protocol.content import MAX_CONTENT_TYPE, ChunkPlan, ProviderRecord
from overlay_node.services.content_blobs import Written
from overlay_node.services.content_common import MAX_TAG_LEN, MAX_TAGS, MAX_TITLE, StorageFull, hex_id, int_field
from overlay_node.store.content import ContentItem

if TYPE_CHECKING:
    from overlay_node.services.content import ContentService

__all__ = ["ReplicaReceiver"]

logger = logging.getLogger(__name__)


class ReplicaReceiver:
    """The receiving side of replication for one content service, and its storage budget.

    Args:
        service: the content service whose store, blobs and records the replicas go to.
    """

    def __init__(self, service: ContentService) -> None:
        self._service = service
        #: bytes promised to imports and transfers under way (not yet counted by the store)
        self.reserved = 0
        #: content ids being received now (a second offer of one is refused)
        self.receiving: set[bytes] = set()

    async def check_offer(self, cid: bytes, size: int) -> bool:
        """True when already held; raises when the offer is refused."""
        svc = self._service
        if size > svc.config.max_object:
            raise BadRequest(f"offered content of {size} bytes is over the limit of {svc.config.max_object}")
        existing = await svc.store.content.get(cid.hex())
        if existing is not None and existing.local and svc.blobs.has(cid):
            return True
        if cid in self.receiving:
            raise Conflict(f"content {cid.hex()[:16]} is being received already")
        used = await svc.store.content.local_bytes()
        if used + self.reserved + size > svc.config.storage_budget:
            raise StorageFull(f"storage budget full: {used + self.reserved} of {svc.config.storage_budget} bytes used")
        return False

    async def reserve(self, size: int) -> None:
        """Reserve ``size`` bytes of the storage budget (give them back with :meth:`release`).

        Raises:
            StorageFull: the budget cannot take ``size`` more bytes.
        """
        budget = self._service.config.storage_budget
        used = await self._service.store.content.local_bytes()
        if used + self.reserved + size > budget:
            raise StorageFull(f"storage budget full: {used + self.reserved} of {budget} used")
        self.reserved += size

    def release(self, size: int) -> None:
        """Give back ``size`` bytes reserved with :meth:`reserve`."""
        self.reserved -= size

    async def serve_offer(self, _link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        """``content.offer``: ``{"have": bool}``, or a refusal (limit, budget, already being received)."""
        cid = hex_id(body.get("hash"))
        size = int_field(body, "size")
        return {"have": await self.check_offer(cid, size)}

    async def serve_replicate(self, link: PeerLink, header: dict[str, Any], rx: TransferReceiver) -> None:
        """``content.replicate``: receive, verify and keep one replica (a held one is drained and ignored)."""
        svc = self._service
        cid = hex_id(header.get("hash"))
        size = int_field(header, "size")
        chunk_size = int_field(header, "chunk_size", 1, 1 << 40)
        plan = ChunkPlan(size=size, chunk_size=chunk_size)
        meta = _replica_meta(header)
        if await self.check_offer(cid, size):
            return await _drain(rx)
        self.receiving.add(cid)
        self.reserved += size
        try:
            written = await svc.blobs.receive(_counted(rx, svc.metrics), content_id=cid, plan=plan)
        except BadRequest:
            svc.metrics.content_transfers.labels("receive", "rejected").inc()
            raise
        finally:
            self.reserved -= size
            self.receiving.discard(cid)
        await self._keep(written, meta)
        logger.info("replica of %s from %s verified and kept", cid.hex()[:16], link.peer_key[:16])

    async def _keep(self, written: Written, meta: dict[str, Any]) -> None:
        svc = self._service
        item = ContentItem(
            hash=written.content_id.hex(),
            size=written.size,
            content_type=meta["content_type"],
            title=meta["title"],
            tags=meta["tags"],
            price=meta["price"],
            expires=meta["expires"],
            parents=meta["parents"],
            relationship=meta["relationship"],
            chunk_size=written.plan.chunk_size,
            manifest=written.manifest,
            producer=meta["producer"],
            replication=meta["replication"],
            pinned=False,
            local=True,
            published=False,
            created_at=svc.wall(),
        )
        svc.metrics.content_transfers.labels("receive", "ok").inc()  # verified by the blob store
        await svc.hold(item)
        svc.advertise_soon(item)


def _replica_meta(header: dict[str, Any]) -> dict[str, Any]:
    """The metadata an offer carries, checked (a replica keeps the producer's title, tags, price, expiry)."""
    ct = header.get("content_type", "application/octet-stream")
    title = header.get("title", "")
    tags = header.get("tags", [])
    producer = header.get("producer", "")
    if not isinstance(ct, str) or not ct or len(ct) > MAX_CONTENT_TYPE:
        raise BadRequest("bad content type in offer")
    if not isinstance(title, str) or len(title) > MAX_TITLE:
        raise BadRequest("bad title in offer")
    if not isinstance(tags, list) or len(tags) > MAX_TAGS or not all(isinstance(t, str) for t in tags):
        raise BadRequest("bad tags in offer")
    if not isinstance(producer, str) or len(producer) not in (0, 66):
        raise BadRequest("bad producer in offer")
    parents, relationship = _replica_lineage(header)
    return {
        "parents": parents,
        "relationship": relationship,
        "content_type": ct,
        "title": title,
        "tags": tuple(str(t)[:MAX_TAG_LEN] for t in tags),
        "price": int_field(header, "price") if "price" in header else 0,
        "expires": int_field(header, "expires") if "expires" in header else 0,
        "producer": producer,
        "replication": int_field(header, "replication", 0, 64) if "replication" in header else 0,
    }


def _replica_lineage(header: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """The lineage an offer carries (the producer's parents and relationship), checked like a provider record's."""
    parents = header.get("parents", [])
    relationship = header.get("relationship", "")
    if not isinstance(parents, list) or not all(isinstance(p, str) and len(p) == 64 for p in parents):
        raise BadRequest("bad parents in offer")
    if not isinstance(relationship, str):
        raise BadRequest("bad relationship in offer")
    try:
        ids = tuple(bytes.fromhex(p) for p in parents)
    except ValueError:
        raise BadRequest("bad parents in offer") from None
    ProviderRecord(content_id=bytes(32), size=0, parents=ids, relationship=relationship)  # the same limits
    return tuple(p.hex() for p in ids), relationship


async def _drain(rx: TransferReceiver) -> None:
    async for _ in rx:
        pass


async def _counted(rx: TransferReceiver, metrics: Metrics) -> AsyncIterator[bytes]:
    async for data in rx:
        if not isinstance(data, bytes):
            raise BadRequest("transfer chunk is not bytes")
        metrics.content_transfer_bytes.labels("in").inc(len(data))
        yield data
