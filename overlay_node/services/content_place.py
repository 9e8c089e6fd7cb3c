"""Replication, placing side: put replicas of content held here on the nodes closest to its id, and keep each
replica's state (pending, transferring, available, failed) in the store.

The functions take the running :class:`~overlay_node.services.content.ContentService`, whose
:meth:`~overlay_node.services.content.ContentService.distribute` (publish, repair, the control API) calls
:func:`distribute`. The other end of the offer and the transfer is :mod:`.content_receive`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import trio

from overlay_node.errors import BadRequest, NotFound, OverlayError
from overlay_node.net.peers import PeerLink
from overlay_node.protocol.content import ReplicaState, rank_by_distance
from overlay_node.services.content_common import OFFER, REPLICATE, Progress
from overlay_node.services.content_repair import live_holders
from overlay_node.store.content import ContentItem, ReplicaRow

if TYPE_CHECKING:
    from overlay_node.services.content import ContentService

__all__ = ["distribute"]

logger = logging.getLogger(__name__)

#: bytes read from the blob and sent per transfer message
_SEND_STEP: Final = 4 * 1024 * 1024


async def distribute(
    service: ContentService,
    content: str,
    *,
    replication: int | None,
    nodes: tuple[str, ...],
    exclude: frozenset[str],
    progress: Progress,
) -> list[ReplicaRow]:
    """Place replicas of local content until ``replication`` are available (see
    :meth:`ContentService.distribute <overlay_node.services.content.ContentService.distribute>`)."""
    item = await service.item(content)
    if not item.local:
        raise NotFound(f"content {item.hash} is not held here; nothing to distribute")
    target = item.replication if replication is None else replication
    if not 0 <= target <= 64:
        raise BadRequest("replication must be between 0 and 64")
    cid = bytes.fromhex(item.hash)
    me = service.identity_key
    providers = await service.providers(cid)
    now = service.wall()
    others = {k: p for k, p in providers.items() if k != me and k != item.producer and k not in exclude}
    live = await live_holders(service, cid, others)  # a dead holder's record outlives it in the DHT
    if me != item.producer:
        live.add(me)  # a replica holder that recruits counts its own copy
    for key in live:
        await service.store.content.set_replica(item.hash, key, ReplicaState.AVAILABLE, "provider record", now)
    if nodes:
        for key in nodes:
            if len(key) != 66:
                raise BadRequest(f"bad node identity key {key!r}")
        candidates = [k for k in nodes if k not in live]
    else:
        pool = [c.pubkey.hex() for c in service.dht.contacts()]
        candidates = [
            k for k in rank_by_distance(cid, pool) if k not in live and k != item.producer and k not in exclude
        ]
    candidates = [k for k in candidates if k != me]
    need = max(0, target - len(live))
    progress({"event": "placing", "hash": item.hash, "target": target, "have": len(live), "need": need})
    queue = iter(candidates)
    placed: list[str] = []

    async def slot() -> None:
        # each slot places one replica: it walks the shared candidate list until one accepts
        for key in queue:
            if await _place_one(service, item, key, progress):
                placed.append(key)
                return

    if need:
        async with trio.open_nursery() as nursery:
            for _ in range(need):
                nursery.start_soon(slot)
    rows = await service.store.content.replicas(item.hash)
    available = sum(r.state == ReplicaState.AVAILABLE for r in rows)
    progress({"event": "done", "hash": item.hash, "available": available, "target": target})
    return rows


async def _place_one(service: ContentService, item: ContentItem, key: str, progress: Progress) -> bool:
    set_state = service.store.content.set_replica
    await set_state(item.hash, key, ReplicaState.PENDING, "", service.wall())
    progress({"event": "replica", "identity_key": key, "state": "pending"})
    try:
        link = await service.link_to(key)
        answer = await link.request(
            OFFER, {"hash": item.hash, "size": item.size}, timeout=service.config.request_timeout
        )
        if answer.get("have"):
            await set_state(item.hash, key, ReplicaState.AVAILABLE, "already held", service.wall())
            progress({"event": "replica", "identity_key": key, "state": "available"})
            return True
        await set_state(item.hash, key, ReplicaState.TRANSFERRING, "", service.wall())
        progress({"event": "replica", "identity_key": key, "state": "transferring"})
        await _send_blob(service, link, item, key, progress)
    except (OverlayError, trio.TooSlowError) as exc:
        await set_state(item.hash, key, ReplicaState.FAILED, str(exc), service.wall())
        progress({"event": "replica", "identity_key": key, "state": "failed", "detail": str(exc)})
        service.metrics.content_transfers.labels("replicate", "failed").inc()
        logger.info("replica of %s on %s failed: %s", item.hash[:16], key[:16], exc)
        return False
    await set_state(item.hash, key, ReplicaState.AVAILABLE, "verified by holder", service.wall())
    progress({"event": "replica", "identity_key": key, "state": "available"})
    service.metrics.content_transfers.labels("replicate", "ok").inc()
    return True


async def _send_blob(service: ContentService, link: PeerLink, item: ContentItem, key: str, progress: Progress) -> None:
    header = {
        "hash": item.hash,
        "size": item.size,
        "chunk_size": item.chunk_size,
        "content_type": item.content_type,
        "title": item.title,
        "tags": list(item.tags),
        "price": item.price,
        "expires": item.expires,
        "producer": item.producer,
        "replication": item.replication,
        "parents": list(item.parents),
        "relationship": item.relationship,
    }
    cid = bytes.fromhex(item.hash)
    sent = 0
    async with link.open_transfer(REPLICATE, header) as tx:
        while sent < item.size:
            data = await service.blobs.read(cid, sent, _SEND_STEP)
            if not data:
                raise NotFound(f"blob {item.hash[:16]} is shorter than its size")
            await tx.send(data)
            sent += len(data)
            service.metrics.content_transfer_bytes.labels("out").inc(len(data))
            progress({"event": "transfer", "identity_key": key, "done": sent, "total": item.size})
