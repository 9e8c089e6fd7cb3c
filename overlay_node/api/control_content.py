"""Control routes for UHRP content: publish, distribute, status, list, access, search, repair.

Long operations (publish, distribute, access) answer with NDJSON: progress events as they happen, then one
``{"event": "result", ...}`` or ``{"event": "error", "code": ..., "message": ...}`` line. The operation runs in
the content service's nursery, so a client that goes away does not cut a replication short.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from overlay_node.api.common import guarded, read_json, require_str
from overlay_node.crypto.uhrp import url_for_hash
from overlay_node.errors import BadRequest, OverlayError
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


def _opt_str(body: dict[str, Any], key: str, default: str = "", *, max_len: int = 4096) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or len(value) > max_len:
        raise BadRequest(f"field {key!r} must be a string of at most {max_len} characters")
    return value


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"field {key!r} must be a non-negative integer")
    return value


def _opt_num(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise BadRequest(f"field {key!r} must be a positive number")
    return float(value)


def _opt_list(body: dict[str, Any], key: str, *, max_items: int = 64) -> tuple[str, ...]:
    value = body.get(key, [])
    if not isinstance(value, list) or len(value) > max_items or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"field {key!r} must be a list of at most {max_items} strings")
    return tuple(value)


def _abs_path(body: dict[str, Any], key: str) -> Path:
    path = Path(require_str(body, key))
    if not path.is_absolute():
        raise BadRequest(f"field {key!r} must be an absolute path (the CLI resolves it)")
    return path


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


def content_routes(node: ContentTarget) -> list[Route]:
    """The ``/v1/content...`` routes over ``node.content``."""

    @guarded
    async def publish(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        path = _abs_path(body, "path")
        kwargs: dict[str, Any] = {
            "title": _opt_str(body, "title", max_len=256),
            "tags": _opt_list(body, "tags", max_items=16),
            "content_type": _opt_str(body, "content_type", "application/octet-stream", max_len=128),
            "price": _opt_int(body, "price") or 0,
            "replication": _opt_int(body, "replication"),
            "ttl": _opt_num(body, "ttl"),
            "parents": _opt_list(body, "parents", max_items=16),
            "relationship": _opt_str(body, "relationship", max_len=32),
        }
        wait = body.get("wait", False) is True
        service = node.content

        async def op(progress: Progress) -> dict[str, Any]:
            token: dict[str, Any] = {"token": None, "token_error": None}

            def tracking(event: dict[str, Any]) -> None:
                if event.get("event") == "token":
                    token.update(token=event.get("token"), token_error=event.get("token_error"))
                progress(event)

            item = await service.publish(path, progress=tracking, replicate=not wait, **kwargs)
            out = {**item.as_dict(), "uhrp_url": url_for_hash(bytes.fromhex(item.hash)), **token}
            if wait and item.replication > 0:
                rows = await service.distribute(item.hash, progress=progress)
                out["replicas"] = [r.as_dict() for r in rows]
            return out

        return ndjson(service, op)

    @guarded
    async def distribute(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        content = require_str(body, "hash", max_len=128)
        replication = _opt_int(body, "replication")
        nodes = _opt_list(body, "nodes")
        service = node.content
        await service.item(content)  # a clear 404 before the stream starts

        async def op(progress: Progress) -> dict[str, Any]:
            rows = await service.distribute(content, replication=replication, nodes=nodes, progress=progress)
            return await service.status(content) | {"replicas": [r.as_dict() for r in rows]}

        return ndjson(service, op)

    @guarded
    async def status(request: Request) -> Response:
        return JSONResponse(await node.content.status(request.path_params["content"]))

    @guarded
    async def listing(_: Request) -> Response:
        items = await node.content.list_items()
        return JSONResponse(
            {"content": [i.as_dict() | {"uhrp_url": url_for_hash(bytes.fromhex(i.hash))} for i in items]}
        )

    @guarded
    async def access(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        content = require_str(body, "content", max_len=2048)
        output = _abs_path(body, "output")
        max_price = _opt_int(body, "max_price")
        service = node.content

        async def op(progress: Progress) -> dict[str, Any]:
            result = await access_content(service, content, output, max_price=max_price, progress=progress)
            return result.as_dict()

        return ndjson(service, op)

    @guarded
    async def search(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        results = await node.content.search(
            tags=_opt_list(body, "tags", max_items=16),
            content_type=_opt_str(body, "content_type", max_len=128),
            producer=_opt_str(body, "producer", max_len=66),
            max_price=_opt_int(body, "max_price"),
        )
        return JSONResponse({"results": results})

    @guarded
    async def repair(_: Request) -> Response:
        return JSONResponse(await node.content.repair_pass())

    return [
        Route("/v1/content", listing, methods=["GET"]),
        Route("/v1/content/publish", publish, methods=["POST"]),
        Route("/v1/content/distribute", distribute, methods=["POST"]),
        Route("/v1/content/access", access, methods=["POST"]),
        Route("/v1/content/search", search, methods=["POST"]),
        Route("/v1/content/repair", repair, methods=["POST"]),
        Route("/v1/content/{content}/status", status, methods=["GET"]),
    ]
