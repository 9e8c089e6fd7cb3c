"""Who may read content through this node's gateway, and the content operations the control API runs as one step.

- The gateway (``api/gateway.py``) serves only content held here: :func:`servable` (held, its blob present, not
  expired). Priced content goes to the producer itself, to a request that paid for it (BRC-105), and to the holder
  of a valid access grant (``X-Access-Grant``: the JSON grant the producer signed, for the authenticated identity,
  else for the grant's own consumer); :func:`gateway_refusal` says why anyone else is refused, with the price,
  the producer and, when this node is the producer and the request names its payer, a signed quote.
- :func:`gateway_price` is the BRC-105 pricer's answer for the same content: what a request must pay, None when
  it must not (free, not the producer's, asked by the producer, or a valid grant).
- :func:`publish` (publish, then optionally wait for the replicas) and :func:`distribute` (place replicas, then
  report the status) are what ``/v1/content/publish`` and ``/v1/content/distribute`` run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlay_node.crypto.uhrp import url_for_hash
from overlay_node.errors import OverlayError
from overlay_node.protocol.content import ReplicaState
from overlay_node.services.content_common import ContentMeta, PaymentRequired, Progress

if TYPE_CHECKING:
    from overlay_node.services.content import ContentService
    from overlay_node.store.content import ContentItem, ReplicaRow

__all__ = ["GatewayRefusal", "distribute", "gateway_price", "gateway_refusal", "grant_holder", "publish", "servable"]


@dataclass(frozen=True, slots=True)
class GatewayRefusal:
    """Why a gateway request may not read priced content: the error (``402``) and what the answer adds to it
    (``price``, ``producer``, ``resource`` and, when one could be issued, ``quote``)."""

    error: PaymentRequired
    details: dict[str, Any]


def grant_holder(grant_text: str | None, identity: str | None) -> tuple[Any, str]:
    """The grant of ``X-Access-Grant`` and whom it must be for (the authenticated identity, else its own consumer).

    Raises:
        ValueError, AttributeError: not a JSON grant.
    """
    grant = json.loads(grant_text) if grant_text else None
    if identity is not None:
        return grant, identity
    return grant, "" if grant is None else str(grant.get("consumer", ""))


async def servable(service: ContentService, cid: bytes) -> ContentItem | None:
    """The item of content this node can serve (held, its blob present, not expired), else None."""
    item = await service.held_item(cid.hex())
    if (
        item is None
        or not item.local
        or not service.blobs.has(cid)
        or (item.expires and item.expires <= service.wall())
    ):
        return None
    return item


def gateway_refusal(
    service: ContentService,
    item: ContentItem,
    *,
    paid: str | None,
    identity: str | None,
    payer: str,
    grant_text: str | None,
) -> GatewayRefusal | None:
    """None when a gateway request may read ``item``, else why not.

    Args:
        paid: the resource the request paid for (BRC-105), if any.
        identity: the identity the request was authenticated with (BRC-104), if any.
        payer: the identity key of ``X-Payer`` ("" without one): whom a quote is for when not authenticated.
        grant_text: ``X-Access-Grant``, if given.
    """
    resource = f"uhrp:{item.hash}"
    if item.price <= 0 or paid == resource:
        return None
    consumer = identity or payer
    try:
        grant, holder = grant_holder(grant_text, identity)
        service.check_access(item, consumer if grant is None else holder, grant)
        return None
    except (PaymentRequired, ValueError, AttributeError) as exc:
        details: dict[str, Any] = {"price": item.price, "producer": item.producer, "resource": resource}
        if consumer and service.payments is not None and item.published:
            try:
                details["quote"] = service.payments.issue_quote(consumer, resource, item.price).as_json()
            except OverlayError:
                pass
        error = exc if isinstance(exc, PaymentRequired) else PaymentRequired("malformed access grant")
        return GatewayRefusal(error, details)


async def gateway_price(
    service: ContentService, cid: bytes, *, identity: str | None, grant_text: str | None
) -> tuple[int, str] | None:
    """What a gateway request for ``cid`` must pay with BRC-105: ``(price, "uhrp:<hex>")`` for priced content this
    node produced, held here and live, asked for by someone else without a valid grant; None for everything else
    (the gateway then answers as usual)."""
    hex_id = cid.hex()
    item = await service.held_item(hex_id)
    if item is None or item.price <= 0 or not item.published or item.producer != service.identity_key:
        return None
    if (item.expires and item.expires <= service.wall()) or not service.blobs.has(cid):
        return None
    if identity == item.producer:
        return None
    if grant_text:
        try:
            grant, consumer = grant_holder(grant_text, identity)
            service.check_access(item, consumer, grant)
            return None
        except (PaymentRequired, ValueError, AttributeError):
            pass
    return item.price, f"uhrp:{hex_id}"


async def publish(
    service: ContentService,
    path: Path,
    *,
    wait: bool,
    progress: Progress,
    replication: int | None = None,
    ttl: float | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """Publish ``path`` (``replication``, ``ttl``: :meth:`ContentService.publish`'s; ``meta``: the fields of its
    :class:`ContentMeta`) and report it with its UHRP URL and its on-chain token (``token``, ``token_error``); with
    ``wait``, place the replicas before answering (``replicas``, and ``replicas_placed`` of ``replicas_wanted``)
    instead of in the background."""
    token: dict[str, Any] = {"token": None, "token_error": None}

    def tracking(event: dict[str, Any]) -> None:
        if event.get("event") == "token":
            token.update(token=event.get("token"), token_error=event.get("token_error"))
        progress(event)

    item = await service.publish(
        path, meta=ContentMeta(**meta), replication=replication, ttl=ttl, progress=tracking, replicate=not wait
    )
    out = {**item.as_dict(), "uhrp_url": url_for_hash(bytes.fromhex(item.hash)), **token}
    if wait:
        rows: list[ReplicaRow] = []
        if item.replication > 0:
            rows = await service.distribute(item.hash, progress=progress)
            out["replicas"] = [r.as_dict() for r in rows]
        out |= _placed(rows, item.replication)
    return out


async def distribute(
    service: ContentService, content: str, *, replication: int | None, nodes: tuple[str, ...], progress: Progress
) -> dict[str, Any]:
    """Place replicas of ``content`` (:meth:`ContentService.distribute`), then report its status with the rows and
    how many replicas are placed of those wanted."""
    rows = await service.distribute(content, replication=replication, nodes=nodes, progress=progress)
    status = await service.status(content)
    wanted = status["replication"] if replication is None else replication
    return status | {"replicas": [r.as_dict() for r in rows]} | _placed(rows, wanted)


def _placed(rows: list[ReplicaRow], wanted: int) -> dict[str, int]:
    """``replicas_placed`` (replicas available on other nodes) and ``replicas_wanted``: the CLI tells the user, and
    ends with an error, when fewer were placed than wanted."""
    return {"replicas_placed": sum(r.state == ReplicaState.AVAILABLE for r in rows), "replicas_wanted": wanted}
