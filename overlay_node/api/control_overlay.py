"""Control routes for the overlay host: ``/v1/overlay/submit``, ``/v1/overlay/lookup``, ``/v1/overlay/topics``,
``/v1/overlay/history``, ``/v1/overlay/sync``. Each parses its body and makes one engine call; outputs are shown
with the fields their token decodes to (:func:`overlay_node.topics.describe.describe_output`)."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Protocol, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overlay_node.api.common import Body, guarded, served
from overlay_node.chain.formats import parse_submission
from overlay_node.chain.refusals import Refusal
from overlay_node.errors import BadRequest
from overlay_node.services.overlay_engine import AnswerOutput, OverlayEngine
from overlay_node.services.overlay_sync import OverlaySync
from overlay_node.topics.describe import describe_output
from overlay_node.topics.plugins import SUBMIT_MODES

__all__ = ["OverlayControlTarget", "output_json", "overlay_control_routes"]

_BODY_LIMIT = 48 * 1024 * 1024
_MAX_DEPTH = 1000


class OverlayControlTarget(Protocol):
    @property
    def overlay(self) -> OverlayEngine: ...

    @property
    def overlay_sync(self) -> OverlaySync: ...


def _target(request: Request) -> OverlayControlTarget:
    return cast(OverlayControlTarget, served(request))


def _beef(body: Body) -> bytes:
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
    # str.isdigit takes "²", which int() refuses; an output index is a 32-bit number
    if not sep or len(txid) != 64 or not (vout.isascii() and vout.isdigit() and len(vout) <= 10):
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


@guarded
async def submit(request: Request) -> Response:
    body = await Body.read(request, _BODY_LIMIT)
    topics = body.strings("topics", required=True, min_items=1, expected="a non-empty list of topic names")
    mode = body.get("mode", "current-tx")
    if mode not in SUBMIT_MODES:
        raise body.refuse("mode", f"one of {', '.join(SUBMIT_MODES)}")
    beef = _beef(body)
    txid = None
    try:
        txid = parse_submission(beef).subject.txid
    except Refusal:
        pass  # the engine says what is wrong with it
    steak = await _target(request).overlay.submit(beef, topics, mode=mode)
    return JSONResponse({"txid": txid, "steak": steak})


@guarded
async def lookup(request: Request) -> Response:
    body = await Body.read(request, 1024 * 1024)
    service = body.text("service", max_len=64)
    if "query" not in body:
        raise BadRequest("field 'query' is required (any JSON value)")
    outputs = await _target(request).overlay.lookup(service, body.get("query"))
    return JSONResponse({"service": service, "outputs": [output_json(o) for o in outputs]})


@guarded
async def topics(request: Request) -> Response:
    engine = _target(request).overlay
    counts, indexed = await engine.counts()
    managers = {
        name: {**meta, "outputs": counts.get(name, (0, 0))[0], "unspent": counts.get(name, (0, 0))[1]}
        for name, meta in engine.list_topic_managers().items()
    }
    services = {name: {**meta, "indexed": indexed.get(name, 0)} for name, meta in engine.list_lookup_services().items()}
    return JSONResponse({"topic_managers": managers, "lookup_services": services})


@guarded
async def history(request: Request) -> Response:
    body = await Body.read(request, 4096)
    txid, vout = _outpoint(body.text("outpoint", max_len=100))
    depth = body.integer("depth", 1, maximum=_MAX_DEPTH, expected=f"an integer from 0 to {_MAX_DEPTH}")
    nodes, beef = await _target(request).overlay.history(txid, vout, depth)
    if beef is None:
        raise BadRequest(f"{txid}.{vout} is not an output this node's topics hold")
    return JSONResponse(
        {"outpoint": f"{txid}.{vout}", "depth": depth, "history": [n.as_json() for n in nodes], "beef_hex": beef.hex()}
    )


@guarded
async def sync(request: Request) -> Response:
    body = await Body.read(request, 64 * 1024)
    topics = body.strings("topics", max_items=256, blank=False, expected="a list of strings")
    hosts = body.strings("hosts", max_items=256, blank=False, expected="a list of strings")
    reports = await _target(request).overlay_sync.sync_all(topics or None, hosts or None)
    return JSONResponse({"reports": [r.as_json() for r in reports]})


def overlay_control_routes() -> list[Route]:
    """The routes; they serve the app's node's ``overlay`` and ``overlay_sync`` (mounted on the control app)."""
    return [
        Route("/v1/overlay/submit", submit, methods=["POST"]),
        Route("/v1/overlay/lookup", lookup, methods=["POST"]),
        Route("/v1/overlay/topics", topics, methods=["GET"]),
        Route("/v1/overlay/history", history, methods=["POST"]),
        Route("/v1/overlay/sync", sync, methods=["POST"]),
    ]
