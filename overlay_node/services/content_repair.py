"""Repair: keep the replica count of content held here near its target. Each pass deletes expired content (and
revokes its record), counts the live holders with a ``content.has`` check, lets the closest live holder recruit
new replicas when below target, and lets the farthest unpinned holder past ``trim_grace`` drop its copy when
above target + ``trim_margin``.

The :class:`~overlay_node.services.content.ContentService` owns one :class:`Repairer` and runs its loop;
:func:`live_holders` also serves the placing side (:mod:`.content_place`).
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import trio

from overlay_node.errors import OverlayError
from overlay_node.protocol.content import ProviderRecord, rank_by_distance
from overlay_node.services.content_common import HAS
from overlay_node.store.content import ContentItem

if TYPE_CHECKING:
    from overlay_node.services.content import ContentService

__all__ = ["Repairer", "live_holders"]

logger = logging.getLogger(__name__)


async def _is_live(service: ContentService, key: str, provider: ProviderRecord, cid: bytes) -> bool:
    if key == service.identity_key:
        return service.blobs.has(cid)
    timeout = service.config.check_timeout
    try:
        with trio.fail_after(timeout):
            answer = await service.ask(key, provider.swarm, HAS, {"hash": cid.hex()}, timeout)
    except (OverlayError, trio.TooSlowError):
        return False
    return bool(answer.get("have"))


async def live_holders(service: ContentService, cid: bytes, providers: dict[str, ProviderRecord]) -> set[str]:
    """The holders among ``providers`` that answer a ``content.has`` check (concurrently, bounded)."""
    live: set[str] = set()

    async def check(key: str, provider: ProviderRecord) -> None:
        if await _is_live(service, key, provider, cid):
            live.add(key)

    async with trio.open_nursery() as nursery:
        for key, provider in providers.items():
            nursery.start_soon(check, key, provider)
    return live


class Repairer:
    """The repair passes of one content service (one pass at a time).

    Args:
        service: the content service whose held content is repaired.
        rng: the source of the loop's jitter.
    """

    def __init__(self, service: ContentService, rng: random.Random) -> None:
        self._service = service
        self._rng = rng
        self._lock = trio.Lock()
        #: passes completed so far
        self.passes = 0

    async def loop(self) -> None:
        """Run a pass every ``repair_interval`` seconds (jittered by ``repair_jitter``) until cancelled."""
        cfg = self._service.config
        while True:
            spread = cfg.repair_interval * cfg.repair_jitter
            await trio.sleep(max(0.01, cfg.repair_interval + self._rng.uniform(-spread, spread)))
            await self.repair_pass()

    async def repair_pass(self) -> dict[str, int]:
        """One repair pass over every content held here; returns action counts."""
        counts = {"expired": 0, "recruited": 0, "trimmed": 0, "checked": 0}
        async with self._lock:
            for item in await self._service.store.content.list(local_only=True):
                try:
                    await self._repair_one(item, counts)
                except (OverlayError, trio.TooSlowError) as exc:
                    logger.info("repair of %s: %s", item.hash[:16], exc)
        self.passes += 1
        return counts

    async def _repair_one(self, item: ContentItem, counts: dict[str, int]) -> None:
        svc = self._service
        cfg = svc.config
        cid = bytes.fromhex(item.hash)
        counts["checked"] += 1
        if item.expires and item.expires <= svc.wall():
            counts["expired"] += 1
            svc.metrics.content_repairs.labels("expire").inc()
            await svc.drop_local(item)
            if item.published:
                await svc.store.content.delete(item.hash)
                svc.forget_row(item.hash)
            return
        providers = await svc.providers(cid)
        me = svc.identity_key
        providers.setdefault(me, ProviderRecord(content_id=cid, size=item.size))
        live = list(await live_holders(svc, cid, providers))
        replicas = [k for k in live if k != item.producer]
        # what `content status` shows: every holder's last confirmed time, those that stopped answering marked
        # unreachable within one pass, and replicas any node's repair placed (they have provider records)
        holders = [k for k in providers if k not in (me, item.producer)]
        await svc.store.content.confirm_holders(item.hash, holders, replicas, svc.wall())
        target = item.replication
        ranked = rank_by_distance(cid, live)
        logger.debug(
            "repair %s at %s: providers %s live %s replicas %s target %d pinned %s",
            item.hash[:16], me[:8], sorted(k[:8] for k in providers), sorted(k[:8] for k in live),
            sorted(k[:8] for k in replicas), target, item.pinned,
        )  # fmt: skip
        if len(replicas) < target:
            # the closest live holder recruits, so that holders do not all recruit at once
            if ranked and ranked[0] == me:
                rows = await svc.distribute(
                    item.hash, replication=target, exclude=frozenset(k for k in providers if k not in live)
                )
                counts["recruited"] += 1
                svc.metrics.content_repairs.labels("recruit").inc()
                logger.info(
                    "repair %s: %d live replicas of %d; recruited (%d rows)",
                    item.hash[:16],
                    len(replicas),
                    target,
                    len(rows),
                )
        elif len(replicas) > target + cfg.trim_margin and me in replicas and not item.pinned:
            farthest = [k for k in ranked if k in replicas][-1]
            held = trio.current_time() - svc.held_since.get(cid, trio.current_time() - cfg.trim_grace)
            if farthest == me and held >= cfg.trim_grace:
                counts["trimmed"] += 1
                svc.metrics.content_repairs.labels("trim").inc()
                logger.info(
                    "repair %s: %d replicas over target %d; dropping ours", item.hash[:16], len(replicas), target
                )
                await svc.drop_local(item)
