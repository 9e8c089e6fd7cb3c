"""The UHRP gateway on the public http port: ``GET /uhrp/<hex SHA-256 or UHRP URL>``.

Serves content this node holds, with ``Range`` (one range per request), ``ETag`` = the hex hash (and
``If-None-Match``), the stored content type, ``404`` for content not held here, ``416`` for a range outside the
content, and ``402`` for priced content: the answer names the price and the producer, and carries a signed quote
when the request names the payer in ``X-Payer`` (an identity key). Priced content is served over HTTP only to a
request with a valid ``X-Access-Grant`` (the JSON grant, as the producer signed it).
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

from overlay_node.crypto.uhrp import parse_uhrp
from overlay_node.errors import BadRequest, NotFound, OverlayError
from overlay_node.services.content import ContentService
from overlay_node.services.content_common import PaymentRequired

__all__ = ["gateway_routes", "parse_range"]

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
        if item.price > 0:
            grant_text = request.headers.get("x-access-grant")
            consumer = request.headers.get("x-payer", "")
            try:
                grant = json.loads(grant_text) if grant_text else None
                service.check_access(item, consumer if grant is None else str(grant.get("consumer", "")), grant)
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
