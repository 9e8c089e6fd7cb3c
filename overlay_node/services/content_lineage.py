"""Content lineage across the network: the children records a holder publishes, and the lineage query.

1. Lineage travels with the content: the producer's parents and relationship are in every holder's provider record
   (``uhrp:<hex>``, fields ``pa`` and ``rl``) and in the replicate header, so a replica keeps them.
2. Every node that holds content with parents publishes, for each parent, a children record under
   ``children:<parent hex>`` listing the content it holds that derives from that parent (newest first, at most
   ``MAX_CHILD_ITEMS``). Records are signed and multi-publisher: each holder has its own, and a DHT read merges them.
3. :func:`lineage` walks both ways from any node: ancestors through the provider records' parents (this node's own
   metadata first), descendants through the children records. A child another node claims counts only when the
   child's own lineage (its provider records, or this node's metadata) names that parent, so a publisher cannot
   graft foreign content under a parent. Each walk stops at ``depth`` and never visits a hash twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from overlay_node.crypto.uhrp import parse_uhrp, url_for_hash
from overlay_node.errors import BadRequest, NotFound, OverlayError
from overlay_node.protocol.content import ChildItem, decode_children, encode_children
from overlay_node.services.dht import dht_key

if TYPE_CHECKING:
    from overlay_node.services.content import ContentService
    from overlay_node.store.content import ContentItem

__all__ = ["MAX_DEPTH", "lineage", "publish_children"]

logger = logging.getLogger(__name__)

#: the deepest walk ``ctl lineage --depth`` may ask for
MAX_DEPTH: Final = 16


@dataclass(frozen=True, slots=True)
class _Known:
    """What the network (or this node) says about one content: its lineage and a few facts for people."""

    hash: str
    parents: tuple[str, ...]
    relationship: str
    producer: str
    size: int | None
    found: bool


async def publish_children(service: ContentService, item: ContentItem) -> None:
    """Publish this node's children record of each parent of ``item`` (every held content deriving from it)."""
    if not item.parents:
        return
    held = [i for i in await service.store.content.list() if i.parents and i.hash != item.hash]
    held.sort(key=lambda i: i.created_at, reverse=True)
    for parent in item.parents:
        siblings = [item, *(i for i in held if parent in i.parents)]
        value = encode_children(
            [ChildItem(content_id=bytes.fromhex(i.hash), relationship=i.relationship) for i in siblings]
        )
        try:
            await service.dht.put(dht_key("children", parent), value, ttl=service.config.provider_ttl)
        except OverlayError as exc:
            logger.warning("content %s: children record of %s not published: %s", item.hash[:16], parent[:16], exc)


async def _known(service: ContentService, hex_id: str) -> _Known:
    """The lineage of ``hex_id``: this node's metadata when it has some, else the producer's provider record (or,
    without one, any holder's: replicas copy the producer's)."""
    item = await service.store.content.get(hex_id)
    if item is not None:
        return _Known(hex_id, item.parents, item.relationship, item.producer, item.size, True)
    best = None
    for publisher, record in (await service.providers(bytes.fromhex(hex_id))).items():
        if best is None or publisher == record.producer.hex():
            best = record
    if best is None:
        return _Known(hex_id, (), "", "", None, False)
    parents = tuple(p.hex() for p in best.parents)
    return _Known(hex_id, parents, best.relationship, best.producer.hex(), best.size, True)


async def _children_of(service: ContentService, hex_id: str) -> list[tuple[str, str]]:
    """The ``(child hash, relationship)`` pairs the children records of ``hex_id`` claim, and the content this node
    holds that derives from it."""
    claimed: dict[str, str] = {}
    for item in await service.store.content.list():
        if hex_id in item.parents:
            claimed[item.hash] = item.relationship
    for record in await service.dht.get(dht_key("children", hex_id)):
        try:
            items = decode_children(record.value)
        except BadRequest:
            continue
        for child in items:
            claimed.setdefault(child.content_id.hex(), child.relationship)
    return sorted(claimed.items())


def _entry(known: _Known, depth: int) -> dict[str, Any]:
    return {
        "hash": known.hash,
        "uhrp_url": url_for_hash(bytes.fromhex(known.hash)),
        "relationship": known.relationship,
        "producer": known.producer,
        "size": known.size,
        "found": known.found,
        "depth": depth,
    }


class _Walk:
    """One lineage query: the facts fetched so far (each hash looked up once) and the flat lists it builds."""

    def __init__(self, service: ContentService, depth: int) -> None:
        self.service = service
        self.depth = depth
        self.facts: dict[str, _Known] = {}
        self.ancestors: list[dict[str, Any]] = []
        self.descendants: list[dict[str, Any]] = []

    async def known(self, hex_id: str) -> _Known:
        if hex_id not in self.facts:
            self.facts[hex_id] = await _known(self.service, hex_id)
        return self.facts[hex_id]

    async def up(self, known: _Known, level: int, seen: set[str]) -> list[dict[str, Any]]:
        """The parents of ``known``, each with its own parents, down to ``self.depth``."""
        out = []
        for parent in known.parents:
            if level > self.depth or parent in seen:
                continue
            seen.add(parent)
            fact = await self.known(parent)
            entry = _entry(fact, level)
            self.ancestors.append(dict(entry))
            entry["parents"] = await self.up(fact, level + 1, seen)
            out.append(entry)
        return out

    async def down(self, hex_id: str, level: int, seen: set[str]) -> list[dict[str, Any]]:
        """The children of ``hex_id`` (each confirmed by its own lineage), each with its children."""
        if level > self.depth:
            return []
        out = []
        for child, _claimed in await _children_of(self.service, hex_id):
            if child in seen:
                continue
            fact = await self.known(child)
            if hex_id not in fact.parents:
                continue  # a claim the child's own lineage does not back
            seen.add(child)
            entry = _entry(fact, level)
            self.descendants.append(dict(entry))
            entry["children"] = await self.down(child, level + 1, seen)
            out.append(entry)
        return out


async def lineage(service: ContentService, content: str, depth: int = 3) -> dict[str, Any]:
    """The ancestors and descendants of ``content`` (hex id or UHRP URL) down to ``depth`` levels each way.

    ``parents`` and ``children`` are trees (each entry has its own ``parents`` / ``children``); ``ancestors`` and
    ``descendants`` list the same entries flat, with their ``depth``.

    Raises:
        BadRequest: not a content id, or ``depth`` outside 1..``MAX_DEPTH``.
        NotFound: neither this node nor the DHT knows the content, and nothing names it as a parent.
    """
    hex_id = parse_uhrp(content).hex()
    if not 1 <= depth <= MAX_DEPTH:
        raise BadRequest(f"depth must be between 1 and {MAX_DEPTH}")
    walk = _Walk(service, depth)
    root = await walk.known(hex_id)
    parents = await walk.up(root, 1, {hex_id})
    children = await walk.down(hex_id, 1, {hex_id})
    if not root.found and not children:
        raise NotFound(f"content {hex_id} is not known here or in the DHT: check the hash (ctl search lists content)")
    return {
        **_entry(root, 0),
        "parents": parents,
        "children": children,
        "ancestors": walk.ancestors,
        "descendants": walk.descendants,
    }
