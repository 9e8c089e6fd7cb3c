"""Control routes for the overlay host: ``/v1/overlay/submit``, ``/v1/overlay/lookup``, ``/v1/overlay/topics``,
``/v1/overlay/history``, ``/v1/overlay/sync``. Each parses its body and makes one engine call; outputs are shown
with the fields their token decodes to (:func:`overlay_node.topics.describe.describe_output`)."""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overlay_node.api.common import guarded, read_json, require_str
from overlay_node.chain.formats import parse_submission
from overlay_node.chain.refusals import Refusal
from overlay_node.errors import BadRequest
from overlay_node.services.overlay_engine import AnswerOutput, OverlayEngine
from overlay_node.services.overlay_sync import OverlaySync
from overlay_node.topics.describe import describe_output
from overlay_node.topics.plugins import SUBMIT_MODES

__all__ = ["overlay_control_routes"]

_BODY_LIMIT = 48 * 1024 * 1024
_MAX_DEPTH = 1000


class OverlayTarget(Protocol):
    @property
    def overlay(self) -> OverlayEngine: ...

    @property
    def overlay_sync(self) -> OverlaySync: ...


def _beef(body: dict[str, Any]) -> bytes:
    hex_text, b64_text = body.get("beef_hex"), body.get("beef_b64")
    try:
        if isinstance(hex_text, str):
            return bytes.fromhex(hex_text.strip())
        if isinstance(b64_text, str):
            return base64.b64decode(b64_text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise BadRequest(f"the BEEF is not valid hex or base64: {exc}") from None
    raise BadRequest("give the transaction as 'beef_hex' or 'beef_b64'")


def _outpoint(text: str) -> tuple[str, int]:
    txid, sep, vout = text.strip().rpartition(".")
    if not sep or len(txid) != 64 or not vout.isdigit():
        raise BadRequest(f"bad outpoint {text!r}: expected TXID.VOUT")
    try:
        bytes.fromhex(txid)
    except ValueError:
        raise BadRequest(f"bad outpoint {text!r}: the txid is not hex") from None
    return txid.lower(), int(vout)


def output_json(out: AnswerOutput) -> dict[str, Any]:
    """An answered output for people and scripts: outpoint, BEEF, context and what its locking script decodes to."""
    item: dict[str, Any] = {"txid": out.txid, "outputIndex": out.vout, "beef_hex": out.beef.hex()}
    if out.context:
        item["context_hex"] = out.context.hex()
    try:
        subject = next(t for t in parse_submission(out.beef).txs if t.txid == out.txid)
        output = subject.outputs[out.vout]
    except (Refusal, StopIteration, IndexError):
        item["decoded"] = None
        return item
    item["satoshis"] = output.satoshis
    item["decoded"] = describe_output(output.script)
    return item


async def submit(node: OverlayTarget, request: Request) -> Response:
    body = await read_json(request, _BODY_LIMIT)
    topics = body.get("topics")
    if not isinstance(topics, list) or not topics or not all(isinstance(t, str) for t in topics):
        raise BadRequest("field 'topics' must be a non-empty list of topic names")
    mode = body.get("mode", "current-tx")
    if mode not in SUBMIT_MODES:
        raise BadRequest(f"field 'mode' must be one of {', '.join(SUBMIT_MODES)}")
    beef = _beef(body)
    txid = None
    try:
        txid = parse_submission(beef).subject.txid
    except Refusal:
        pass  # the engine says what is wrong with it
    steak = await node.overlay.submit(beef, topics, mode=mode)
    return JSONResponse({"txid": txid, "steak": steak})


async def lookup(node: OverlayTarget, request: Request) -> Response:
    body = await read_json(request, 1024 * 1024)
    service = require_str(body, "service", max_len=64)
    if "query" not in body:
        raise BadRequest("field 'query' is required (any JSON value)")
    outputs = await node.overlay.lookup(service, body["query"])
    return JSONResponse({"service": service, "outputs": [output_json(o) for o in outputs]})


async def topics(node: OverlayTarget, request: Request) -> Response:
    counts, indexed = await node.overlay.counts()
    managers = {
        name: {**meta, "outputs": counts.get(name, (0, 0))[0], "unspent": counts.get(name, (0, 0))[1]}
        for name, meta in node.overlay.list_topic_managers().items()
    }
    services = {
        name: {**meta, "indexed": indexed.get(name, 0)} for name, meta in node.overlay.list_lookup_services().items()
    }
    return JSONResponse({"topic_managers": managers, "lookup_services": services})


async def history(node: OverlayTarget, request: Request) -> Response:
    body = await read_json(request, 4096)
    txid, vout = _outpoint(require_str(body, "outpoint", max_len=100))
    depth = body.get("depth", 1)
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= _MAX_DEPTH:
        raise BadRequest(f"field 'depth' must be an integer from 0 to {_MAX_DEPTH}")
    nodes, beef = await node.overlay.history(txid, vout, depth)
    if beef is None:
        raise BadRequest(f"{txid}.{vout} is not an output this node's topics hold")
    return JSONResponse(
        {"outpoint": f"{txid}.{vout}", "depth": depth, "history": [n.as_json() for n in nodes], "beef_hex": beef.hex()}
    )


async def sync(node: OverlayTarget, request: Request) -> Response:
    body = await read_json(request, 64 * 1024)
    topics, hosts = body.get("topics", []), body.get("hosts", [])
    for name, value in (("topics", topics), ("hosts", hosts)):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or len(value) > 256:
            raise BadRequest(f"field {name!r} must be a list of strings")
    reports = await node.overlay_sync.sync_all(topics or None, hosts or None)
    return JSONResponse({"reports": [r.as_json() for r in reports]})


def overlay_control_routes(node: OverlayTarget) -> list[Route]:
    """The routes; mounted on the control app."""

    def route(path: str, handler: Callable[[OverlayTarget, Request], Awaitable[Response]], method: str) -> Route:
        return Route(path, guarded(functools.partial(handler, node)), methods=[method])

    return [
        route("/v1/overlay/submit", submit, "POST"),
        route("/v1/overlay/lookup", lookup, "POST"),
        route("/v1/overlay/topics", topics, "GET"),
        route("/v1/overlay/history", history, "POST"),
        route("/v1/overlay/sync", sync, "POST"),
    ]
