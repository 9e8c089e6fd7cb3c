"""What the control and public apps share: JSON error bodies and bounded request parsing."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from overlay_node.errors import BadRequest, OverlayError

Handler = Callable[[Request], Awaitable[Response]]


def error_response(exc: OverlayError) -> JSONResponse:
    """The one mapping of our errors to HTTP: ``{"status":"error","code":...,"message":...}``."""
    return JSONResponse({"status": "error", "code": exc.code, "message": str(exc)}, status_code=exc.http_status)


def guarded(handler: Handler) -> Handler:
    """Turn an OverlayError raised by ``handler`` into its JSON error response."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except OverlayError as exc:
            return error_response(exc)

    return run


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing bodies over ``limit`` bytes before reading them whole.

    Raises:
        BadRequest: too large (declared or sent), or the client went away before it was complete.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadRequest(f"request body too large (limit {limit} bytes)")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BadRequest(f"request body too large (limit {limit} bytes)")
    except ClientDisconnect:
        raise BadRequest("client disconnected before the body was complete") from None
    return bytes(body)


def parse_json(body: bytes) -> Any:
    """``body`` as JSON; deep nesting and numbers of thousands of digits are bad JSON too (Python refuses them with
    RecursionError and ValueError).

    Raises:
        BadRequest: not JSON (the reason, cut short).
    """
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}") from None


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refusing bodies over ``limit`` bytes before reading them whole."""
    body = await read_body(request, limit)
    if not body:
        return {}
    value = parse_json(body)
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


def require_str(body: dict[str, Any], key: str, *, max_len: int = 4096) -> str:
    """A non-empty string field of a request body."""
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise BadRequest(f"field {key!r} must be a non-empty string of at most {max_len} characters")
    return value


async def _http_exception(request: Request, exc: Exception) -> Response:
    from starlette.exceptions import HTTPException

    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return JSONResponse({"status": "error", "code": code, "message": str(detail)}, status_code=status)


#: pass as ``exception_handlers`` to Starlette so that routing errors are JSON too
HTTP_EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    404: _http_exception,
    405: _http_exception,
}
