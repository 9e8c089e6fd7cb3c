"""The overlay host's routes on the public http port, with the reference's (overlay-express) shapes and status codes:

- ``POST /submit`` (BRC-22): BEEF body (``application/octet-stream``), ``X-Topics`` as a JSON array or, as py-sdk
  sends it, a comma list; ``x-includes-off-chain-values: true`` makes the body ``VarInt(len) || BEEF || values``.
  Answers the STEAK (200) or ``{"status":"error","message"}`` (400).
- ``POST /lookup`` (BRC-24): ``{"service", "query"}``; the JSON ``output-list`` answer, or with
  ``X-Aggregation: yes`` the binary one (outpoints, then one BEEF V2), ``Content-Type: application/octet-stream``.
- ``GET /listTopicManagers``, ``GET /listLookupServiceProviders``: metadata by name.
- ``GET /getDocumentationForTopicManager?manager=``, ``GET /getDocumentationForLookupServiceProvider?lookupService=``
  (``lookupServices=`` too): markdown.
- ``POST /requestSyncResponse`` (``X-BSV-Topic``, ``{"version", "since", "limit"}``) and ``POST
  /requestForeignGASPNode`` (``{"graphID", "txid", "outputIndex", "metadata"}``): GASP, as overlay-express serves it.

Every route parses and calls the engine once (the engine of the app's node: ``state.node``, ``api/common.py``); a bad
request is a 400 with the reason and changes nothing; an unexpected failure is ``500
{"status":"error","message":"Unexpected error"}`` (and logged). The two hot routes, ``POST /submit`` and ``POST
/lookup``, are ASGI apps themselves (:class:`_Endpoint`: no Request or Response object, no exception wrapper of
Starlette's around them), with the same answers, and :func:`with_hot_routes` puts them in front of the public app
(Starlette's routing and middlewares cost a lookup a tenth of its CPU).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from overlay_node.api.common import Handler, parse_json, read_body, receive_body, served
from overlay_node.chain.formats import Cursor
from overlay_node.chain.refusals import Refusal
from overlay_node.errors import BadRequest, OverlayError
from overlay_node.services.overlay_engine import AnswerOutput, OverlayEngine

logger = logging.getLogger(__name__)

__all__ = ["CORS_HEADERS", "output_list_json", "overlay_routes", "parse_topics", "with_hot_routes"]

#: what overlay-express sends with every answer
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Allow-Methods": "*",
    "Access-Control-Expose-Headers": "*",
    "Access-Control-Allow-Private-Network": "true",
}
#: the same, as the raw header pairs a response carries (added to each answer without a copy of its headers)
_CORS_RAW = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in CORS_HEADERS.items()]
_MAX_TOPICS = 256


class OverlayTarget(Protocol):
    @property
    def overlay(self) -> OverlayEngine: ...

    @property
    def config(self) -> Any: ...


def _node(request: Request) -> OverlayTarget:
    return cast(OverlayTarget, served(request))


def _served(scope: Scope) -> OverlayTarget:
    """:func:`_node` of an :class:`_Endpoint`'s request (``served`` reads the same ``app.state.node``)."""
    return cast(OverlayTarget, scope["app"].state.node)


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (``name`` lower-case, as ASGI gives them), as Starlette's
    ``Headers.get`` reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"status": "error", "message": message}, status_code=status, headers=CORS_HEADERS)


def _failure(exc: Exception, method: str, path: str) -> tuple[str, int]:
    """The reference's error mapping: our refusals (a ``BadRequest`` is 400) are their status with their message,
    anything else is a logged 500 ``Unexpected error``; the answer's ``(message, status)``."""
    if isinstance(exc, OverlayError):
        if exc.http_status < 500:
            return str(exc), exc.http_status
        logger.warning("%s %s failed: %s", method, path, exc)
    else:
        logger.error("%s %s failed", method, path, exc_info=exc)
    return "Unexpected error", 500


def _answer(handler: Handler) -> Handler:
    """:func:`_failure`'s error mapping around a handler."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        try:
            response = await handler(request)
        except Exception as exc:  # noqa: BLE001 -- the route boundary: _failure logs what is not a refusal
            return _error(*_failure(exc, request.method, request.url.path))
        response.raw_headers += _CORS_RAW  # no handler sets them itself
        return response

    return run


_JSON_TYPE: Final = (b"content-type", b"application/json")
_OCTET_TYPE: Final = (b"content-type", b"application/octet-stream")
#: what ``JSONResponse`` writes an error body with
_ERROR_JSON: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
#: an :class:`_Endpoint`'s handler: ``(scope, receive)`` -> the 200 answer's ``(content-type header, body)``
RawHandler = Callable[[Scope, Receive], Awaitable[tuple[tuple[bytes, bytes], bytes]]]


async def _send(send: Send, status: int, content_type: tuple[bytes, bytes], body: bytes) -> None:
    headers = [content_type, (b"content-length", b"%d" % len(body)), *_CORS_RAW]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Endpoint:
    """A route that is an ASGI app itself (Starlette calls an endpoint that is not a function with the scope as it
    is): what :func:`_answer` does around a handler, without the Request and Response objects and Starlette's
    exception wrapper (a tenth of a lookup's CPU). Only the hot routes are written so."""

    def __init__(self, handler: RawHandler) -> None:
        self._handler = handler
        self.__name__ = handler.__name__  # the route's name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            content_type, body = await self._handler(scope, receive)
        except Exception as exc:  # noqa: BLE001 -- the route boundary: _failure logs what is not a refusal
            message, status = _failure(exc, scope["method"], scope["path"])
            body = _ERROR_JSON.encode({"status": "error", "message": message}).encode()
            await _send(send, status, _JSON_TYPE, body)
            return
        await _send(send, 200, content_type, body)


#: each byte's decimal text: a BEEF as a JSON array of numbers is a join of these (the hot part of every answer)
_BYTE_TEXT = [str(i) for i in range(256)]


def _numbers(data: bytes) -> bytes:
    return ("[" + ",".join(map(_BYTE_TEXT.__getitem__, data)) + "]").encode()


class _NumberTexts:
    """The JSON text of the BEEFs answered lately, by the BEEF's bytes: lookups answer the same outputs again and
    again, and writing a BEEF as numbers is most of what an answer costs. The key is the BEEF itself, so a text is
    never another BEEF's nor stale: which outputs an answer holds, and their BEEFs, are read from the store each
    time. Holds at most ``limit`` bytes (BEEFs and texts), and is emptied when that is reached; a BEEF over
    ``largest`` bytes is written each time."""

    __slots__ = ("_size", "_texts", "largest", "limit")

    def __init__(self, limit: int, largest: int) -> None:
        self.limit = limit
        self.largest = largest
        self._texts: dict[bytes, bytes] = {}
        self._size = 0

    def text(self, data: bytes) -> bytes:
        text = self._texts.get(data)
        if text is None:
            text = _numbers(data)
            if len(data) <= self.largest:
                size = len(data) + len(text)
                if self._size + size > self.limit:
                    self._texts.clear()
                    self._size = 0
                self._texts[data] = text
                self._size += size
        return text


#: a few thousand answers' BEEFs (a 365-byte BEEF is about 1.7 KB with its text)
_BEEF_TEXTS: Final = _NumberTexts(limit=8 * 1024 * 1024, largest=64 * 1024)


def output_list_json(outputs: Sequence[AnswerOutput]) -> bytes:
    """The JSON answer, ``{"type": "output-list", "outputs": [{"beef": [...], "outputIndex", "context"?}]}``, written
    directly: bytes as arrays of numbers, as the reference sends them."""
    texts = _BEEF_TEXTS
    items = []
    for out in outputs:
        item = b'{"beef":' + texts.text(out.beef) + b',"outputIndex":%d' % out.vout
        if out.context:
            item += b',"context":' + _numbers(out.context)
        items.append(item + b"}")
    return b'{"type":"output-list","outputs":[' + b",".join(items) + b"]}"


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_topics(header: str | None) -> list[str]:
    """``X-Topics``: a JSON array of names (what the official TypeScript client sends) or a comma list (py-sdk).

    Raises:
        BadRequest: missing, malformed, or not names.
    """
    if header is None:
        raise BadRequest("Missing x-topics header")
    text = header.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"x-topics is not a JSON array: {exc}") from None
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise BadRequest("x-topics must be a JSON array of topic names")
        topics = [t.strip() for t in value]
    else:
        topics = [t.strip() for t in text.split(",")]
    topics = [t for t in topics if t]
    if not topics:
        raise BadRequest("x-topics names no topic")
    if not all(t.isascii() or _utf8(t) for t in topics):
        # a JSON escape of half a surrogate pair: no text, and an answer naming it could not be written
        raise BadRequest("x-topics names a topic that is not valid UTF-8 text")
    if len(topics) > _MAX_TOPICS:
        raise BadRequest(f"x-topics names more than {_MAX_TOPICS} topics")
    return topics


def _split_off_chain(body: bytes) -> tuple[bytes, bytes]:
    cur = Cursor(body)
    try:
        beef = cur.take(cur.varint())
    except Refusal as exc:
        raise BadRequest(f"the body is not VarInt(length) || BEEF || off-chain values: {exc.extra_info}") from None
    return beef, body[cur.pos :]


#: ``X-Topics`` values read before and their topics (a client names the same topics in every submission)
_TOPICS_SEEN: dict[str, tuple[str, ...]] = {}
_TOPICS_SEEN_MAX = 64
#: the STEAK's encoder, made once (``json.dumps`` with options, as ``JSONResponse`` calls it, makes one per call)
_STEAK_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _topics(header: str | None) -> tuple[str, ...]:
    """:func:`parse_topics`, remembered for the last few distinct headers."""
    if header is not None:
        known = _TOPICS_SEEN.get(header)
        if known is not None:
            return known
    topics = tuple(parse_topics(header))
    if len(_TOPICS_SEEN) >= _TOPICS_SEEN_MAX:
        _TOPICS_SEEN.clear()
    _TOPICS_SEEN[header or ""] = topics
    return topics


async def submit(scope: Scope, receive: Receive) -> tuple[tuple[bytes, bytes], bytes]:
    topics = _topics(_header(scope, b"x-topics"))
    content_type = _header(scope, b"content-type") or ""
    if content_type != "application/octet-stream" and (
        content_type.split(";")[0].strip().lower() != "application/octet-stream"
    ):
        raise BadRequest("the body must be BEEF bytes sent as Content-Type: application/octet-stream")
    node = _served(scope)
    declared = _header(scope, b"content-length")
    body = await receive_body(receive, declared, node.config.overlay.max_submit_bytes)
    off_chain: bytes | None = None
    if (_header(scope, b"x-includes-off-chain-values") or "").lower() == "true":
        body, off_chain = _split_off_chain(body)
    if not body:
        raise BadRequest("the body is empty: send the transaction's BEEF")
    # the server's only connection (``net/http_server.py``, rule 9): no other client's request waits to begin
    sole = scope.get("connections") == 1
    steak = await node.overlay.submit(body, topics, off_chain=off_chain, sole=sole)
    return _JSON_TYPE, _STEAK_JSON.encode(steak).encode()


async def lookup(scope: Scope, receive: Receive) -> tuple[tuple[bytes, bytes], bytes]:
    node = _served(scope)
    body = await receive_body(receive, _header(scope, b"content-length"), node.config.overlay.max_lookup_bytes)
    question = parse_json(body) if body else None
    if not isinstance(question, dict) or not isinstance(question.get("service"), str) or "query" not in question:
        raise BadRequest('Invalid request: body must contain "service" (string) and "query" fields')
    outputs = await node.overlay.lookup(question["service"], question["query"])
    if (_header(scope, b"x-aggregation") or "").lower() == "yes":
        return _OCTET_TYPE, OverlayEngine.aggregate(outputs)
    return _JSON_TYPE, output_list_json(outputs)


@_answer
async def list_topic_managers(request: Request) -> Response:
    return JSONResponse(_node(request).overlay.list_topic_managers())


@_answer
async def list_lookup_services(request: Request) -> Response:
    return JSONResponse(_node(request).overlay.list_lookup_services())


@_answer
async def topic_documentation(request: Request) -> Response:
    name = request.query_params.get("manager", "")
    return Response(_node(request).overlay.topic_documentation(name), media_type="text/markdown")


@_answer
async def service_documentation(request: Request) -> Response:
    params = request.query_params
    name = params.get("lookupService") or params.get("lookupServices") or ""
    return Response(_node(request).overlay.service_documentation(name), media_type="text/markdown")


def _json_object(body: bytes) -> dict[str, Any]:
    value = parse_json(body) if body else None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


#: the largest count, score or index the GASP routes take: JavaScript's largest exact integer (what a reference
#: client can send), well inside what the store can compare with
_MAX_COUNT: Final = 2**53


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= _MAX_COUNT:
        raise BadRequest(f"{what} must be a non-negative whole number (at most 2**53)")
    if value != int(value):
        raise BadRequest(f"{what} must be a non-negative whole number")
    return int(value)


@_answer
async def sync_response(request: Request) -> Response:
    """GASP: the unspent outputs of the topic named by ``X-BSV-Topic`` since a score (the reference's shape)."""
    topic = request.headers.get("x-bsv-topic", "")
    if not topic:
        raise BadRequest("Missing x-bsv-topic header")
    query = _json_object(await read_body(request, 4096))
    since = _count(query.get("since", 0), "since")
    limit = None if query.get("limit") is None else _count(query["limit"], "limit")
    utxos = await _node(request).overlay.sync_response(topic, since, limit)
    return JSONResponse({"UTXOList": utxos, "since": since})


@_answer
async def foreign_node(request: Request) -> Response:
    """GASP: one transaction of an output's graph."""
    query = _json_object(await read_body(request, 4096))
    graph_id, txid, vout = query.get("graphID"), query.get("txid"), query.get("outputIndex")
    if not isinstance(graph_id, str) or not isinstance(txid, str) or len(graph_id) > 80 or len(txid) != 64:
        raise BadRequest("the body must name graphID (TXID.VOUT), txid and outputIndex")
    return JSONResponse(await _node(request).overlay.gasp_node(graph_id, txid, _count(vout, "outputIndex")))


async def preflight(_request: Request) -> Response:
    return Response(status_code=200, headers=CORS_HEADERS)


_ROUTES: list[tuple[str, Handler | _Endpoint, str]] = [
    ("/submit", _Endpoint(submit), "POST"),
    ("/lookup", _Endpoint(lookup), "POST"),
    ("/listTopicManagers", list_topic_managers, "GET"),
    ("/listLookupServiceProviders", list_lookup_services, "GET"),
    ("/getDocumentationForTopicManager", topic_documentation, "GET"),
    ("/getDocumentationForLookupServiceProvider", service_documentation, "GET"),
    ("/requestSyncResponse", sync_response, "POST"),
    ("/requestForeignGASPNode", foreign_node, "POST"),
]


class _HotRoutes:
    """See :func:`with_hot_routes`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._endpoints = {path: e for path, e, method in _ROUTES if isinstance(e, _Endpoint) and method == "POST"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self._endpoints.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self.app  # what Starlette sets, and where the endpoint finds the node
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def with_hot_routes(app: ASGIApp) -> ASGIApp:
    """``app`` (the public Starlette app, which mounts :func:`overlay_routes`) with the hot routes, ``POST /submit``
    and ``POST /lookup``, answered in front of it, without Starlette's routing; every other request (those paths'
    CORS preflight and other methods too) goes to ``app``. Wrap it before the BRC-104/105 middlewares
    (``api/http_auth.py``), which see every request as before."""
    return _HotRoutes(app)


def overlay_routes() -> list[Route]:
    """The routes (each with its CORS preflight); they serve the app's node's ``overlay`` (mounted on the public
    app)."""
    paths = [Route(path, handler, methods=[method]) for path, handler, method in _ROUTES]
    return [*paths, *(Route(path, preflight, methods=["OPTIONS"]) for path, _, _ in _ROUTES)]
