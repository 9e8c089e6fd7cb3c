"""The devnet's HTTP face: ARC's endpoints (``/v1/tx``, ``/v1/txs``, ``/v1/tx/{txid}``, ``/v1/policy``) with
ARC's JSON shapes, plus devnet-only routes (faucet, mine, block headers, BEEF). A thin adapter over
:class:`Ledger`.

Request bodies follow ARC (``pkg/api/handler/parsers.go``): ``text/plain`` hex (one transaction per line for
``/v1/txs``), ``application/json`` ``{"rawTx": hex}`` (a list of them for ``/v1/txs``), or
``application/octet-stream`` bytes (``application/beef`` is taken too); each item may be raw, Extended Format
or BEEF. Refusals are ARC problem objects (``status`` is the HTTP status, ``extraInfo`` says what was wrong)
with our ``code`` and ``message`` fields added.

The handlers are module-level; the ledger and the limits they serve are the app's ``state.devnet``
(:class:`DevnetState`, set by :func:`devnet_app`).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from bsv.hash import hash160
from bsv.keys import PublicKey
from bsv.utils.address import decode_address
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overlay_node import __version__
from overlay_node.chain.formats import parse_stream, parse_submission
from overlay_node.chain.refusals import ArcCode, Refusal
from overlay_node.clock import wall_time
from overlay_node.crypto.scripts import p2pkh_script
from overlay_node.devnet.ledger import Ledger, TxAnswer
from overlay_node.errors import OverlayError
from overlay_node.store.ledger import BlockRecord

_TXID = re.compile(r"^[0-9a-fA-F]{64}$")

Handler = Callable[[Request], Awaitable[Response]]


def timestamp() -> str:
    """Now, as ARC writes it (RFC 3339, UTC)."""
    return datetime.fromtimestamp(wall_time(), UTC).isoformat().replace("+00:00", "Z")


def _problem(exc: OverlayError) -> JSONResponse:
    if not isinstance(exc, Refusal):
        exc_status = exc.http_status
        body = {
            "type": "about:blank",
            "title": type(exc).__name__,
            "status": exc_status,
            "detail": str(exc),
            "instance": None,
            "txid": None,
            "extraInfo": str(exc),
            "timestamp": timestamp(),
            "code": exc.code,
            "message": str(exc),
        }
        return JSONResponse(body, status_code=exc_status)
    return JSONResponse(exc.problem(timestamp()), status_code=exc.http_status)


def _header_json(block: BlockRecord) -> dict[str, Any]:
    return {
        "height": block.height,
        "hash": block.hash,
        "prevHash": block.prev_hash,
        "merkleRoot": block.merkle_root,
        "time": block.time,
        "txCount": block.tx_count,
        "header": block.header.hex(),
    }


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text.strip())
    except ValueError as exc:
        raise Refusal(ArcCode.BAD_REQUEST, f"{what} is not valid hex") from exc


def _txid(request: Request) -> str:
    txid = str(request.path_params["txid"])
    if not _TXID.fullmatch(txid):
        raise Refusal(ArcCode.BAD_REQUEST, f"{txid[:80]!r} is not a txid (64 hex characters)")
    return txid.lower()


@dataclass(frozen=True, slots=True)
class DevnetState:
    """What the handlers serve: the ledger and the app's limits (see :func:`devnet_app`)."""

    ledger: Ledger
    max_body: int
    max_batch: int
    api_key: str


def _state(request: Request) -> DevnetState:
    return cast(DevnetState, request.app.state.devnet)


def _arc(handler: Handler, *, public: bool = False) -> Handler:
    """``handler`` behind the API key (unless ``public``), with our errors answered as ARC problem objects."""

    async def run(request: Request) -> Response:
        try:
            api_key = _state(request).api_key
            if api_key and not public:
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, f"Bearer {api_key}".encode()):
                    raise Refusal(ArcCode.UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer ...)")
            return await handler(request)
        except OverlayError as exc:
            return _problem(exc)

    return run


async def _read_body(request: Request) -> bytes:
    """The body, at most ``max_body`` bytes; one a little larger (up to twice) is read to its end before it is
    refused, so that the client gets the answer cleanly."""
    max_body = _state(request).max_body
    drain_limit = 2 * max_body
    too_large = Refusal(ArcCode.TOO_LARGE, f"request body larger than {max_body} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > drain_limit):
        raise too_large  # not worth reading: the connection closes after the answer
    body = bytearray()
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > drain_limit:
                raise too_large
            if seen <= max_body:
                body += chunk
    except ClientDisconnect:
        # the client went away mid-body: nothing was applied, and nobody is left to answer
        raise Refusal(ArcCode.BAD_REQUEST, "client disconnected before the body was complete") from None
    if seen > max_body:
        raise too_large
    if not body:
        raise Refusal(ArcCode.BAD_REQUEST, "no transaction found - empty request body")
    return bytes(body)


async def _transaction_bytes(request: Request, *, many: bool) -> bytes:
    """The transaction(s) of the body, as bytes, whatever ARC content type carried them."""
    body = await _read_body(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in ("application/octet-stream", "application/beef"):
        return body
    if media == "text/plain":
        text = _text(body)
        if many:
            return b"".join(_hex(line, "a line of the body") for line in text.splitlines() if line.strip())
        return _hex(text, "the body")
    if media == "application/json":
        return _json_transactions(body, many=many)
    raise Refusal(
        ArcCode.BAD_REQUEST,
        f"given content-type {media or '(none)'} does not match any of the allowed content-types "
        "(text/plain, application/json, application/octet-stream)",
    )


def _json_transactions(body: bytes, *, many: bool) -> bytes:
    """``{"rawTx": hex}`` (a list of them with ``many``) as bytes."""
    value = _json(body)
    items = value if many else [value]
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("rawTx"), str) for i in items):
        shape = '[{"rawTx": hex}, ...]' if many else '{"rawTx": hex}'
        raise Refusal(ArcCode.BAD_REQUEST, f"request body must be {shape}")
    return b"".join(_hex(i["rawTx"], "rawTx") for i in items)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refusal(ArcCode.BAD_REQUEST, f"request body is not valid JSON: {exc}") from exc


async def post_tx(request: Request) -> Response:
    submission = parse_submission(await _transaction_bytes(request, many=False))
    (answer,) = await _state(request).ledger.submit([submission])
    if isinstance(answer, Refusal):
        return _problem(answer)
    return JSONResponse(answer.as_arc(timestamp()))


async def post_txs(request: Request) -> Response:
    state = _state(request)
    submissions = parse_stream(await _transaction_bytes(request, many=True), max_items=state.max_batch)
    answers = await state.ledger.submit(submissions)
    now = timestamp()
    return JSONResponse([a.problem(now) if isinstance(a, Refusal) else a.as_arc(now) for a in answers])


async def get_tx(request: Request) -> Response:
    answer: TxAnswer = await _state(request).ledger.status(_txid(request))
    return JSONResponse(answer.as_arc(timestamp()))


async def get_beef(request: Request) -> Response:
    txid = _txid(request)
    beef = await _state(request).ledger.beef(txid)
    return JSONResponse({"txid": txid, "beef": beef.hex(), "timestamp": timestamp()})


async def policy(request: Request) -> Response:
    return JSONResponse({"policy": _state(request).ledger.policy.as_arc(), "timestamp": timestamp()})


async def health(_: Request) -> Response:
    return JSONResponse({"healthy": True, "version": f"overlay-node devnet {__version__}", "reason": None})


async def faucet(request: Request) -> Response:
    value = _json(await _read_body(request))
    if not isinstance(value, dict):
        raise Refusal(ArcCode.BAD_REQUEST, 'request body must be {"address" or "pubkey", "satoshis"}')
    satoshis = value.get("satoshis")
    if not isinstance(satoshis, int) or isinstance(satoshis, bool):
        raise Refusal(ArcCode.BAD_REQUEST, "satoshis must be an integer")
    payout = await _state(request).ledger.faucet(_faucet_script(value), satoshis)
    return JSONResponse(
        {
            "txid": payout.txid,
            "vout": payout.vout,
            "satoshis": payout.satoshis,
            "lockingScript": payout.locking_script.hex(),
            "rawTx": payout.raw.hex(),
            "beef": payout.beef.hex(),
            "txStatus": "SEEN_ON_NETWORK",
            "timestamp": timestamp(),
        }
    )


async def mine(request: Request) -> Response:
    block = await _state(request).ledger.mine()
    assert block is not None  # only_if_pending is False
    return JSONResponse({"blockHeight": block.height, "blockHash": block.hash, "txids": list(block.txids)})


async def chaintip(request: Request) -> Response:
    return JSONResponse(_header_json(await _state(request).ledger.chaintip()))


async def header(request: Request) -> Response:
    raw = str(request.path_params["height"])
    if not raw.isdigit() or len(raw) > 10:
        raise Refusal(ArcCode.BAD_REQUEST, f"{raw[:20]!r} is not a block height")
    return JSONResponse(_header_json(await _state(request).ledger.header(int(raw))))


async def _not_found(request: Request, _exc: Exception) -> Response:
    return _problem(Refusal(ArcCode.NOT_FOUND, f"no route {request.method} {request.url.path}"))


async def _bad_method(request: Request, _exc: Exception) -> Response:
    problem = Refusal(ArcCode.BAD_REQUEST, f"{request.method} is not allowed on {request.url.path}").problem(
        timestamp()
    )
    problem["status"] = 405
    return JSONResponse(problem, status_code=405)


_ROUTES = [
    Route("/v1/health", _arc(health, public=True), methods=["GET"]),
    Route("/v1/policy", _arc(policy), methods=["GET"]),
    Route("/v1/tx", _arc(post_tx), methods=["POST"]),
    Route("/v1/txs", _arc(post_txs), methods=["POST"]),
    Route("/v1/tx/{txid}", _arc(get_tx), methods=["GET"]),
    Route("/v1/tx/{txid}/beef", _arc(get_beef), methods=["GET"]),
    Route("/v1/faucet", _arc(faucet), methods=["POST"]),
    Route("/v1/mine", _arc(mine), methods=["POST"]),
    Route("/v1/chaintip", _arc(chaintip), methods=["GET"]),
    Route("/v1/headers/{height}", _arc(header), methods=["GET"]),
]


def devnet_app(ledger: Ledger, *, max_body: int, max_batch: int, api_key: str = "") -> Starlette:
    """The devnet ARC app over ``ledger``.

    Args:
        ledger: the started ledger.
        max_body: the largest request body accepted, in bytes (larger ones get 413).
        max_batch: the most transactions one ``/v1/txs`` request may carry.
        api_key: when not empty, every ``/v1`` route but health requires ``Authorization: Bearer <api_key>``.
    """
    app = Starlette(routes=list(_ROUTES), exception_handlers={404: _not_found, 405: _bad_method})
    app.state.devnet = DevnetState(ledger, max_body, max_batch, api_key)
    return app


def _text(body: bytes) -> str:
    try:
        return body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise Refusal(ArcCode.BAD_REQUEST, "text/plain body must be hex") from exc


def _faucet_script(value: dict[str, Any]) -> bytes:
    """The P2PKH script a faucet request names by ``address`` or ``pubkey``."""
    address, pubkey = value.get("address"), value.get("pubkey")
    if (address is None) == (pubkey is None):
        raise Refusal(ArcCode.BAD_REQUEST, "give exactly one of address or pubkey")
    if isinstance(address, str) and len(address) <= 64:
        try:
            pubkey_hash, _network = decode_address(address)
        except ValueError as exc:
            raise Refusal(ArcCode.BAD_REQUEST, f"address {address!r} is not a P2PKH address: {exc}") from exc
        return p2pkh_script(bytes(pubkey_hash))
    if isinstance(pubkey, str) and len(pubkey) <= 130:
        raw = _hex(pubkey, "pubkey")
        try:
            PublicKey(raw)
        except (ValueError, TypeError, AssertionError) as exc:
            raise Refusal(ArcCode.BAD_REQUEST, f"pubkey is not a valid public key: {exc}") from exc
        return p2pkh_script(bytes(hash160(raw)))
    raise Refusal(ArcCode.BAD_REQUEST, "address and pubkey must be strings")
