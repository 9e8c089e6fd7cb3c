"""The UHRP gateway on the public http port: ``GET /uhrp/<hex SHA-256 or UHRP URL>``.

Serves content this node holds, with ``Range`` (one range per request), ``ETag`` = the hex hash (and
``If-None-Match``), the stored content type, ``404`` for content not held here, ``416`` for a range outside the
content, and for priced content:

- the producer's gateway sells it with BRC-105 (``api/http_auth.py``, when ``auth.priced``): :func:`price_of` is
  the pricer, a request that paid (``scope["bsv_payment"]`` for this content) gets the bytes once;
- any gateway serves it to a request with a valid ``X-Access-Grant`` (the JSON grant, as the producer signed it,
  for the authenticated identity, else for the grant's consumer), and to the producer itself;
- otherwise the answer is ``402`` naming the price and the producer, with a signed quote when the request names
  the payer in ``X-Payer`` (an identity key) and this node is the producer.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Scope

from overlay_node.api.http_auth import authenticated_identity, paid_resource
from overlay_node.crypto.uhrp import parse_uhrp
from overlay_node.errors import BadRequest, NotFound, OverlayError
from overlay_node.services.content import ContentService
from overlay_node.services.content_common import PaymentRequired

__all__ = ["gateway_routes", "parse_range", "price_of"]

_RANGE: Final = re.compile(r"^bytes=(\d*)-(\d*)$")
_PIECE: Final = 1024 * 1024
#: bodies up to this size are read in one go (fast path for small objects)
_SMALL: Final = 4 * 1024 * 1024
#: whole objects up to this size are kept in memory once read (content is immutable: the id is its hash)
_CACHED_BODY: Final = 64 * 1024
_CACHE_BUDGET: Final = 16 * 1024 * 1024


class GatewayTarget(Protocol):
    @property
    def content(self) -> ContentService: ...


class RangeNotSatisfiable(OverlayError):
    code = "range_not_satisfiable"
    http_status = 416


class _BodyCache:
    """Bodies of small objects, least recently used dropped first, at most ``budget`` bytes.

    A body is only ever served after the request found the item held and its blob file present, so dropping
    content stops it being served at once; the bytes themselves cannot go stale (content-addressed, verified on
    write).
    """

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._used = 0
        self._bodies: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, cid: bytes) -> bytes | None:
        body = self._bodies.get(cid)
        if body is not None:
            self._bodies.move_to_end(cid)
        return body

    def put(self, cid: bytes, body: bytes) -> None:
        if cid in self._bodies or len(body) > self._budget:
            return
        self._bodies[cid] = body
        self._used += len(body)
        while self._used > self._budget:
            _, dropped = self._bodies.popitem(last=False)
            self._used -= len(dropped)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` of a single ``bytes=`` range, ``None`` without a header.

    Raises:
        BadRequest: malformed or several ranges. RangeNotSatisfiable: outside ``[0, size)``.
    """
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        raise BadRequest(f"unsupported Range header {header[:64]!r}: use one bytes=START-END range")
    first, last = m.group(1), m.group(2)
    if not first and not last:
        raise BadRequest("empty Range")
    if len(first) > 19 or len(last) > 19:
        raise RangeNotSatisfiable(f"range outside the content ({size} bytes)")
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"range outside the content ({size} bytes)")
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"range {start}-{end} outside the content ({size} bytes)")
    return start, min(end, size - 1)


def _grant_consumer(grant_text: str | None, identity: str | None) -> tuple[Any, str]:
    """The grant of ``X-Access-Grant`` and whom it must be for (the authenticated identity, else its own consumer).

    Raises:
        ValueError, AttributeError: not a JSON grant.
    """
    grant = json.loads(grant_text) if grant_text else None
    if identity is not None:
        return grant, identity
    return grant, "" if grant is None else str(grant.get("consumer", ""))


async def price_of(service: ContentService, scope: Scope) -> tuple[int, str] | None:
    """What a gateway request must pay with BRC-105 (the ``PaymentMiddleware`` pricer): ``(price, "uhrp:<hex>")``
    for priced content this node produced, held here and live, asked for by someone else without a valid grant;
    None for everything else (the route then answers as usual)."""
    try:
        cid = parse_uhrp(scope["path"].removeprefix("/uhrp/"))
    except BadRequest:
        return None
    hex_id = cid.hex()
    item = await service.held_item(hex_id)
    if item is None or item.price <= 0 or not item.published or item.producer != service.identity_key:
        return None
    if (item.expires and item.expires <= service.wall()) or not service.blobs.has(cid):
        return None
    identity = authenticated_identity(scope)
    if identity == item.producer:
        return None
    grant_text = next((v.decode("utf-8", "replace") for k, v in scope["headers"] if k == b"x-access-grant"), None)
    if grant_text:
        try:
            grant, consumer = _grant_consumer(grant_text, identity)
            service.check_access(item, consumer, grant)
            return None
        except (PaymentRequired, ValueError, AttributeError):
            pass
    return item.price, f"uhrp:{hex_id}"


def gateway_routes(node: GatewayTarget) -> list[Route]:
    """The gateway route over ``node.content``."""
    small_bodies = _BodyCache(_CACHE_BUDGET)

    def error(exc: OverlayError, headers: dict[str, str] | None = None, **extra: Any) -> Response:
        node.content.metrics.gateway_requests.labels(str(exc.http_status)).inc()
        body = {"status": "error", "code": exc.code, "message": str(exc), **extra}
        return JSONResponse(body, status_code=exc.http_status, headers=headers)

    async def get(request: Request) -> Response:
        service = node.content
        try:
            cid = parse_uhrp(request.path_params["content"])
        except BadRequest as exc:
            return error(exc)
        hex_id = cid.hex()
        item = await service.held_item(hex_id)
        if (
            item is None
            or not item.local
            or not service.blobs.has(cid)
            or (item.expires and item.expires <= service.wall())
        ):
            return error(NotFound(f"content {hex_id} is not held here"))
        if item.price > 0 and paid_resource(request.scope) != f"uhrp:{hex_id}":
            grant_text = request.headers.get("x-access-grant")
            identity = authenticated_identity(request.scope)
            consumer = identity or request.headers.get("x-payer", "")
            try:
                grant, holder = _grant_consumer(grant_text, identity)
                service.check_access(item, consumer if grant is None else holder, grant)
            except (PaymentRequired, ValueError, AttributeError) as exc:
                extra: dict[str, Any] = {"price": item.price, "producer": item.producer, "resource": f"uhrp:{hex_id}"}
                if consumer and service.payments is not None and item.published:
                    try:
                        extra["quote"] = service.payments.issue_quote(consumer, f"uhrp:{hex_id}", item.price).as_json()
                    except OverlayError:
                        pass
                required = exc if isinstance(exc, PaymentRequired) else PaymentRequired("malformed access grant")
                return error(required, **extra)
        etag = f'"{hex_id}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
        if request.headers.get("if-none-match") == etag:
            service.metrics.gateway_requests.labels("304").inc()
            return Response(status_code=304, headers=headers)
        try:
            span = parse_range(request.headers.get("range"), item.size)
        except RangeNotSatisfiable as exc:
            return error(exc, headers={"Content-Range": f"bytes */{item.size}"})
        except BadRequest as exc:
            return error(exc)
        status = 200
        start, end = 0, item.size - 1
        if span is not None:
            start, end = span
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{item.size}"
        length = end - start + 1 if item.size else 0
        service.metrics.gateway_requests.labels(str(status)).inc()
        if request.method == "HEAD":
            headers["Content-Length"] = str(length)
            return Response(status_code=status, headers=headers, media_type=item.content_type)
        if length <= _SMALL:
            if not length:
                data = b""
            elif item.size <= _CACHED_BODY:
                whole = small_bodies.get(cid)
                if whole is None:
                    whole = await service.blobs.read(cid, 0, item.size)
                    small_bodies.put(cid, whole)
                data = whole[start : end + 1] if status == 206 else whole
            else:
                data = await service.blobs.read(cid, start, length)
            return Response(data, status_code=status, headers=headers, media_type=item.content_type)

        async def body() -> AsyncIterator[bytes]:
            pos = start
            while pos <= end:
                data = await service.blobs.read(cid, pos, min(_PIECE, end - pos + 1))
                if not data:
                    return
                pos += len(data)
                yield data

        headers["Content-Length"] = str(length)
        return StreamingResponse(body(), status_code=status, headers=headers, media_type=item.content_type)

    return [Route("/uhrp/{content:path}", get, methods=["GET", "HEAD"])]
