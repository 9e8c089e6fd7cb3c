"""Control routes for UHRP content: publish, distribute, status, list, access, search, repair.

Long operations (publish, distribute, access) answer with NDJSON: progress events as they happen, then one
``{"event": "result", ...}`` or ``{"event": "error", "code": ..., "message": ...}`` line. The operation runs in
the content service's nursery, so a client that goes away does not cut a replication short.

Each route reads its body (``api/common.py``'s :class:`~overlay_node.api.common.Body`) and makes one call: to the
content service of the app's node, to ``services/content_access.py`` (publish with its optional wait for the
replicas, distribute with the status after it) or to ``services/content_fetch.py`` (access).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from overlay_node.api.common import Body, guarded, served
from overlay_node.api.control_adverts import AdvertsTarget
from overlay_node.crypto.uhrp import url_for_hash
from overlay_node.errors import OverlayError
from overlay_node.services import content_access
from overlay_node.services.content import ContentService
from overlay_node.services.content_common import Progress
from overlay_node.services.content_fetch import access as access_content

__all__ = ["ContentTarget", "content_routes"]

BODY_LIMIT = 64 * 1024
#: progress events buffered per stream; beyond it, progress events (never the result) are dropped
EVENT_BUFFER = 1024


class ContentTarget(Protocol):
    @property
    def content(self) -> ContentService: ...


def _content(request: Request) -> ContentService:
    return cast(ContentTarget, served(request)).content


def ndjson(service: ContentService, op: Callable[[Progress], Awaitable[dict[str, Any]]]) -> StreamingResponse:
    """Run ``op`` in the service's nursery and stream its progress events and result as NDJSON."""
    send, receive = trio.open_memory_channel[dict[str, Any]](EVENT_BUFFER)

    def progress(event: dict[str, Any]) -> None:
        try:
            send.send_nowait(event)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # a slow reader misses progress events, never the result

    async def runner() -> None:
        async with send:
            try:
                final = {"event": "result", **await op(progress)}
            except OverlayError as exc:
                final = {"event": "error", "code": exc.code, "message": str(exc), "exit_code": exc.exit_code}
            try:
                await send.send(final)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    service.spawn(runner)

    async def lines() -> AsyncIterator[bytes]:
        async with receive:
            async for event in receive:
                yield (json.dumps(event) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@guarded
async def publish(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    path = body.abs_path("path")
    options: dict[str, Any] = {
        "title": body.text("title", "", max_len=256),
        "tags": tuple(body.strings("tags", max_items=16)),
        "content_type": body.text("content_type", "application/octet-stream", max_len=128),
        "price": body.integer("price", None) or 0,
        "replication": body.integer("replication", None),
        "ttl": body.positive("ttl"),
        "parents": tuple(body.strings("parents", max_items=16)),
        "relationship": body.text("relationship", "", max_len=32),
    }
    wait = body.get("wait", False) is True
    service = _content(request)

    async def op(progress: Progress) -> dict[str, Any]:
        return await content_access.publish(service, path, wait=wait, progress=progress, **options)

    return ndjson(service, op)


@guarded
async def distribute(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    content = body.text("hash", max_len=128)
    replication = body.integer("replication", None)
    nodes = tuple(body.strings("nodes", max_items=64))
    service = _content(request)
    await service.item(content)  # a clear 404 before the stream starts

    async def op(progress: Progress) -> dict[str, Any]:
        return await content_access.distribute(
            service, content, replication=replication, nodes=nodes, progress=progress
        )

    return ndjson(service, op)


@guarded
async def status(request: Request) -> Response:
    return JSONResponse(await _content(request).status(request.path_params["content"]))


@guarded
async def listing(request: Request) -> Response:
    items = await _content(request).list_items()
    return JSONResponse({"content": [i.as_dict() | {"uhrp_url": url_for_hash(bytes.fromhex(i.hash))} for i in items]})


@guarded
async def access(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    content = body.text("content", max_len=2048)
    output = body.abs_path("output")
    max_price = body.integer("max_price", None)
    service = _content(request)

    async def op(progress: Progress) -> dict[str, Any]:
        result = await access_content(service, content, output, max_price=max_price, progress=progress)
        return result.as_dict()

    return ndjson(service, op)


@guarded
async def search(request: Request) -> Response:
    """Content by tag records, and streams by their adverts' capabilities (each result has its ``kind``)."""
    body = await Body.read(request, BODY_LIMIT)
    results = await _content(request).search(
        tags=tuple(body.strings("tags", max_items=16)),
        content_type=body.text("content_type", "", max_len=128),
        producer=body.text("producer", "", max_len=66),
        max_price=body.integer("max_price", None),
        adverts=cast(AdvertsTarget, served(request)).adverts,
    )
    return JSONResponse({"results": results})


@guarded
async def repair(request: Request) -> Response:
    return JSONResponse(await _content(request).repair_pass())


def content_routes() -> list[Route]:
    """The ``/v1/content...`` routes; they serve the app's node's ``content``."""
    return [
        Route("/v1/content", listing, methods=["GET"]),
        Route("/v1/content/publish", publish, methods=["POST"]),
        Route("/v1/content/distribute", distribute, methods=["POST"]),
        Route("/v1/content/access", access, methods=["POST"]),
        Route("/v1/content/search", search, methods=["POST"]),
        Route("/v1/content/repair", repair, methods=["POST"]),
        Route("/v1/content/{content}/status", status, methods=["GET"]),
    ]
