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

Who may read what is decided in ``services/content_access.py``; this module reads the request (the content id, the
BRC-104/105 scope, the headers: an ``X-Access-Grant`` that is not bounded JSON is answered ``400``) and writes the
answer. The content served is the app's node's (``state.node``).

Memory: a body is streamed from the blob store one piece (:data:`_PIECE`) at a time, read when the client can take
it, so a client that asks and does not read holds one piece at most; only objects of up to :data:`_CACHED_BODY`
bytes are read whole, into the shared cache. The blob store checked each object's hash when it was written (its
file is named by that hash and never rewritten), and a request is served only once the item is found held, live
and its blob present (:func:`~overlay_node.services.content_access.servable`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Scope

from overlay_node.api.common import parse_json, served
from overlay_node.api.http_auth import authenticated_identity, paid_resource
from overlay_node.crypto.uhrp import parse_uhrp
from overlay_node.errors import BadRequest, NotFound, OverlayError
from overlay_node.services.content import ContentService
from overlay_node.services.content_access import gateway_price, gateway_refusal, servable

if TYPE_CHECKING:
    from overlay_node.store.content import ContentItem

__all__ = ["Gateway", "gateway_routes", "parse_range", "price_of"]

_RANGE: Final = re.compile(r"^bytes=(\d*)-(\d*)$")
#: bytes read from the blob store at once, and sent before the next piece is read
_PIECE: Final = 256 * 1024
#: whole objects up to this size are read in one go and kept in memory (content is immutable: the id is its hash)
_CACHED_BODY: Final = 64 * 1024
_CACHE_BUDGET: Final = 16 * 1024 * 1024
#: the largest ``X-Access-Grant`` read (a signed grant is a few hundred bytes)
_GRANT_LIMIT: Final = 16 * 1024


class GatewayTarget(Protocol):
    @property
    def content(self) -> ContentService: ...


def _content(request: Request) -> ContentService:
    return cast(GatewayTarget, served(request)).content


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
    m = _RANGE.fullmatch(header.strip())
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


async def price_of(service: ContentService, scope: Scope) -> tuple[int, str] | None:
    """What a gateway request must pay with BRC-105 (the ``PaymentMiddleware`` pricer): ``(price, "uhrp:<hex>")``
    for priced content this node produced, held here and live, asked for by someone else without a valid grant;
    None for everything else (the route then answers as usual)."""
    try:
        cid = parse_uhrp(scope["path"].removeprefix("/uhrp/"))
    except BadRequest:
        return None
    grant_text = next((v.decode("utf-8", "replace") for k, v in scope["headers"] if k == b"x-access-grant"), None)
    try:
        _check_grant(grant_text)
    except BadRequest:
        return None  # the route answers 400
    return await gateway_price(service, cid, identity=authenticated_identity(scope), grant_text=grant_text)


def _check_grant(grant_text: str | None) -> None:
    """Refuse an ``X-Access-Grant`` that is not bounded JSON (too large, too deep, huge numbers, not JSON) before
    anything parses it.

    Raises:
        BadRequest: what is wrong with it.
    """
    if grant_text is not None:
        parse_json(grant_text, what="X-Access-Grant", limit=_GRANT_LIMIT)


def _error(service: ContentService, exc: OverlayError, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    service.metrics.gateway_requests.labels(str(exc.http_status)).inc()
    body = {"status": "error", "code": exc.code, "message": str(exc), **extra}
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


class Gateway:
    """``GET``/``HEAD /uhrp/{content}``: one per app, keeping the bodies of small objects it served."""

    def __init__(self) -> None:
        self.bodies = _BodyCache(_CACHE_BUDGET)

    async def get(self, request: Request) -> Response:
        service = _content(request)
        grant_text = request.headers.get("x-access-grant")
        try:
            cid = parse_uhrp(request.path_params["content"])
            _check_grant(grant_text)
        except BadRequest as exc:
            return _error(service, exc)
        item = await servable(service, cid)
        if item is None:
            return _error(service, NotFound(f"content {cid.hex()} is not held here"))
        refused = gateway_refusal(
            service,
            item,
            paid=paid_resource(request.scope),
            identity=authenticated_identity(request.scope),
            payer=request.headers.get("x-payer", ""),
            grant_text=grant_text,
        )
        if refused is not None:
            return _error(service, refused.error, **refused.details)
        return await self._answer(request, service, cid, item)

    async def _answer(self, request: Request, service: ContentService, cid: bytes, item: ContentItem) -> Response:
        """The content (or the range asked for), its headers, or ``304`` when the client has it."""
        etag = f'"{cid.hex()}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
        if request.headers.get("if-none-match") == etag:
            service.metrics.gateway_requests.labels("304").inc()
            return Response(status_code=304, headers=headers)
        try:
            span = parse_range(request.headers.get("range"), item.size)
        except RangeNotSatisfiable as exc:
            return _error(service, exc, headers={"Content-Range": f"bytes */{item.size}"})
        except BadRequest as exc:
            return _error(service, exc)
        start, end, status = 0, item.size - 1, 200
        if span is not None:
            (start, end), status = span, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{item.size}"
        length = end - start + 1 if item.size else 0
        service.metrics.gateway_requests.labels(str(status)).inc()
        if request.method == "HEAD":
            headers["Content-Length"] = str(length)
            return Response(status_code=status, headers=headers, media_type=item.content_type)
        if item.size <= _CACHED_BODY:
            data = await self._small(service, cid, item, start, length)
            return Response(data, status_code=status, headers=headers, media_type=item.content_type)
        headers["Content-Length"] = str(length)
        pieces = _pieces(service, cid, start, end)
        return StreamingResponse(pieces, status_code=status, headers=headers, media_type=item.content_type)

    async def _small(self, service: ContentService, cid: bytes, item: ContentItem, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` of a small object, whole from (or into) the cache."""
        if not length:
            return b""
        whole = self.bodies.get(cid)
        if whole is None:
            whole = await service.blobs.read(cid, 0, item.size)
            self.bodies.put(cid, whole)
        return whole if length == item.size else whole[start : start + length]


async def _pieces(service: ContentService, cid: bytes, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes ``start`` to ``end`` (inclusive), one piece at a time: the next piece is read once the server took the
    last one, which it does when the client's socket takes it."""
    pos = start
    while pos <= end:
        data = await service.blobs.read(cid, pos, min(_PIECE, end - pos + 1))
        if not data:
            return
        pos += len(data)
        yield data


def gateway_routes() -> list[Route]:
    """The gateway route, with a fresh body cache; it serves the app's node's ``content``."""
    return [Route("/uhrp/{content:path}", Gateway().get, methods=["GET", "HEAD"])]
