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
{"status":"error","message":"Unexpected error"}`` (and logged).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from typing import Any, Final, Protocol, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overlay_node.api.common import Handler, parse_json, read_body, served
from overlay_node.chain.formats import Cursor
from overlay_node.chain.refusals import Refusal
from overlay_node.errors import BadRequest, OverlayError
from overlay_node.services.overlay_engine import AnswerOutput, OverlayEngine

logger = logging.getLogger(__name__)

__all__ = ["CORS_HEADERS", "output_list_json", "overlay_routes", "parse_topics"]

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


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"status": "error", "message": message}, status_code=status, headers=CORS_HEADERS)


def _answer(handler: Handler) -> Handler:
    """The reference's error mapping around a handler: our refusals are 400 with their message, anything else
    is a logged 500 ``Unexpected error``."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        try:
            response = await handler(request)
        except BadRequest as exc:
            return _error(str(exc))
        except OverlayError as exc:
            if exc.http_status < 500:
                return _error(str(exc), exc.http_status)
            logger.warning("%s %s failed: %s", request.method, request.url.path, exc)
            return _error("Unexpected error", 500)
        except Exception:
            logger.exception("%s %s failed", request.method, request.url.path)
            return _error("Unexpected error", 500)
        response.raw_headers += _CORS_RAW  # no handler sets them itself
        return response

    return run


#: each byte's decimal text: a BEEF as a JSON array of numbers is a join of these (the hot part of every answer)
_BYTE_TEXT = [str(i) for i in range(256)]


def _numbers(data: bytes) -> str:
    return "[" + ",".join(map(_BYTE_TEXT.__getitem__, data)) + "]"


def output_list_json(outputs: Sequence[AnswerOutput]) -> bytes:
    """The JSON answer, ``{"type": "output-list", "outputs": [{"beef": [...], "outputIndex", "context"?}]}``, written
    directly: bytes as arrays of numbers, as the reference sends them."""
    items = []
    for out in outputs:
        item = f'{{"beef":{_numbers(out.beef)},"outputIndex":{out.vout}'
        if out.context:
            item += f',"context":{_numbers(out.context)}'
        items.append(item + "}")
    return ('{"type":"output-list","outputs":[' + ",".join(items) + "]}").encode()


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


@_answer
async def submit(request: Request) -> Response:
    headers = request.headers
    topics = _topics(headers.get("x-topics"))
    content_type = headers.get("content-type", "")
    if content_type != "application/octet-stream" and (
        content_type.split(";")[0].strip().lower() != "application/octet-stream"
    ):
        raise BadRequest("the body must be BEEF bytes sent as Content-Type: application/octet-stream")
    node = _node(request)
    body = await read_body(request, node.config.overlay.max_submit_bytes)
    off_chain: bytes | None = None
    if headers.get("x-includes-off-chain-values", "").lower() == "true":
        body, off_chain = _split_off_chain(body)
    if not body:
        raise BadRequest("the body is empty: send the transaction's BEEF")
    # the server's only connection (``net/http_server.py``, rule 9): no other client's request waits to begin
    sole = request.scope.get("connections") == 1
    steak = await node.overlay.submit(body, topics, off_chain=off_chain, sole=sole)
    return Response(_STEAK_JSON.encode(steak).encode(), media_type="application/json")


@_answer
async def lookup(request: Request) -> Response:
    node = _node(request)
    body = await read_body(request, node.config.overlay.max_lookup_bytes)
    question = parse_json(body) if body else None
    if not isinstance(question, dict) or not isinstance(question.get("service"), str) or "query" not in question:
        raise BadRequest('Invalid request: body must contain "service" (string) and "query" fields')
    outputs = await node.overlay.lookup(question["service"], question["query"])
    if request.headers.get("x-aggregation", "").lower() == "yes":
        return Response(OverlayEngine.aggregate(outputs), media_type="application/octet-stream")
    return Response(output_list_json(outputs), media_type="application/json")


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


_ROUTES: list[tuple[str, Handler, str]] = [
    ("/submit", submit, "POST"),
    ("/lookup", lookup, "POST"),
    ("/listTopicManagers", list_topic_managers, "GET"),
    ("/listLookupServiceProviders", list_lookup_services, "GET"),
    ("/getDocumentationForTopicManager", topic_documentation, "GET"),
    ("/getDocumentationForLookupServiceProvider", service_documentation, "GET"),
    ("/requestSyncResponse", sync_response, "POST"),
    ("/requestForeignGASPNode", foreign_node, "POST"),
]


def overlay_routes() -> list[Route]:
    """The routes (each with its CORS preflight); they serve the app's node's ``overlay`` (mounted on the public
    app)."""
    paths = [Route(path, handler, methods=[method]) for path, handler, method in _ROUTES]
    return [*paths, *(Route(path, preflight, methods=["OPTIONS"]) for path, _, _ in _ROUTES)]
