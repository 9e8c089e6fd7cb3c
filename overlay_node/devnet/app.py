"""The devnet's HTTP face: ARC's endpoints (``/v1/tx``, ``/v1/txs``, ``/v1/tx/{txid}``, ``/v1/policy``) with
ARC's JSON shapes, plus devnet-only routes (faucet, mine, block headers, BEEF). A thin adapter over
:class:`Ledger`.

Request bodies follow ARC (``pkg/api/handler/parsers.go``): ``text/plain`` hex (one transaction per line for
``/v1/txs``), ``application/json`` ``{"rawTx": hex}`` (a list of them for ``/v1/txs``), or
``application/octet-stream`` bytes (``application/beef`` is taken too); each item may be raw, Extended Format
or BEEF. Refusals are ARC problem objects (``status`` is the HTTP status, ``extraInfo`` says what was wrong)
with our ``code`` and ``message`` fields added.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

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
    if not _TXID.match(txid):
        raise Refusal(ArcCode.BAD_REQUEST, f"{txid[:80]!r} is not a txid (64 hex characters)")
    return txid.lower()


def devnet_app(ledger: Ledger, *, max_body: int, max_batch: int, api_key: str = "") -> Starlette:
    """The devnet ARC app over ``ledger``.

    Args:
        ledger: the started ledger.
        max_body: the largest request body accepted, in bytes (larger ones get 413).
        max_batch: the most transactions one ``/v1/txs`` request may carry.
        api_key: when not empty, every ``/v1`` route but health requires ``Authorization: Bearer <api_key>``.
    """
    expected_auth = f"Bearer {api_key}".encode()
    drain_limit = 2 * max_body

    def route(handler: Handler, *, public: bool = False) -> Handler:
        async def run(request: Request) -> Response:
            try:
                if api_key and not public:
                    given = request.headers.get("authorization", "").encode()
                    if not hmac.compare_digest(given, expected_auth):
                        raise Refusal(ArcCode.UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer ...)")
                return await handler(request)
            except OverlayError as exc:
                return _problem(exc)

        return run

    async def read_body(request: Request) -> bytes:
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
        # a body a little too large is read to its end first, so that the client gets the answer cleanly
        if seen > max_body:
            raise too_large
        if not body:
            raise Refusal(ArcCode.BAD_REQUEST, "no transaction found - empty request body")
        return bytes(body)

    async def transaction_bytes(request: Request, *, many: bool) -> bytes:
        body = await read_body(request)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media in ("application/octet-stream", "application/beef"):
            return body
        if media == "text/plain":
            text = _text(body)
            if many:
                return b"".join(_hex(line, "a line of the body") for line in text.splitlines() if line.strip())
            return _hex(text, "the body")
        if media == "application/json":
            try:
                value = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise Refusal(ArcCode.BAD_REQUEST, f"request body is not valid JSON: {exc}") from exc
            items = value if many else [value]
            if not isinstance(items, list) or not all(
                isinstance(i, dict) and isinstance(i.get("rawTx"), str) for i in items
            ):
                shape = '[{"rawTx": hex}, ...]' if many else '{"rawTx": hex}'
                raise Refusal(ArcCode.BAD_REQUEST, f"request body must be {shape}")
            return b"".join(_hex(i["rawTx"], "rawTx") for i in items)
        raise Refusal(
            ArcCode.BAD_REQUEST,
            f"given content-type {media or '(none)'} does not match any of the allowed content-types "
            "(text/plain, application/json, application/octet-stream)",
        )

    async def post_tx(request: Request) -> Response:
        submission = parse_submission(await transaction_bytes(request, many=False))
        (answer,) = await ledger.submit([submission])
        if isinstance(answer, Refusal):
            return _problem(answer)
        return JSONResponse(answer.as_arc(timestamp()))

    async def post_txs(request: Request) -> Response:
        submissions = parse_stream(await transaction_bytes(request, many=True), max_items=max_batch)
        answers = await ledger.submit(submissions)
        now = timestamp()
        return JSONResponse([a.problem(now) if isinstance(a, Refusal) else a.as_arc(now) for a in answers])

    async def get_tx(request: Request) -> Response:
        answer: TxAnswer = await ledger.status(_txid(request))
        return JSONResponse(answer.as_arc(timestamp()))

    async def get_beef(request: Request) -> Response:
        txid = _txid(request)
        return JSONResponse({"txid": txid, "beef": (await ledger.beef(txid)).hex(), "timestamp": timestamp()})

    async def policy(_: Request) -> Response:
        return JSONResponse({"policy": ledger.policy.as_arc(), "timestamp": timestamp()})

    async def health(_: Request) -> Response:
        return JSONResponse({"healthy": True, "version": f"overlay-node devnet {__version__}", "reason": None})

    async def faucet(request: Request) -> Response:
        body = await read_body(request)
        try:
            value = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Refusal(ArcCode.BAD_REQUEST, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise Refusal(ArcCode.BAD_REQUEST, 'request body must be {"address" or "pubkey", "satoshis"}')
        satoshis = value.get("satoshis")
        if not isinstance(satoshis, int) or isinstance(satoshis, bool):
            raise Refusal(ArcCode.BAD_REQUEST, "satoshis must be an integer")
        payout = await ledger.faucet(_faucet_script(value), satoshis)
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

    async def mine(_: Request) -> Response:
        block = await ledger.mine()
        assert block is not None  # only_if_pending is False
        return JSONResponse({"blockHeight": block.height, "blockHash": block.hash, "txids": list(block.txids)})

    async def chaintip(_: Request) -> Response:
        return JSONResponse(_header_json(await ledger.chaintip()))

    async def header(request: Request) -> Response:
        raw = str(request.path_params["height"])
        if not raw.isdigit() or len(raw) > 10:
            raise Refusal(ArcCode.BAD_REQUEST, f"{raw[:20]!r} is not a block height")
        return JSONResponse(_header_json(await ledger.header(int(raw))))

    async def not_found(request: Request, exc: Exception) -> Response:
        return _problem(Refusal(ArcCode.NOT_FOUND, f"no route {request.method} {request.url.path}"))

    async def bad_method(request: Request, exc: Exception) -> Response:
        problem = Refusal(ArcCode.BAD_REQUEST, f"{request.method} is not allowed on {request.url.path}").problem(
            timestamp()
        )
        problem["status"] = 405
        return JSONResponse(problem, status_code=405)

    return Starlette(
        routes=[
            Route("/v1/health", route(health, public=True), methods=["GET"]),
            Route("/v1/policy", route(policy), methods=["GET"]),
            Route("/v1/tx", route(post_tx), methods=["POST"]),
            Route("/v1/txs", route(post_txs), methods=["POST"]),
            Route("/v1/tx/{txid}", route(get_tx), methods=["GET"]),
            Route("/v1/tx/{txid}/beef", route(get_beef), methods=["GET"]),
            Route("/v1/faucet", route(faucet), methods=["POST"]),
            Route("/v1/mine", route(mine), methods=["POST"]),
            Route("/v1/chaintip", route(chaintip), methods=["GET"]),
            Route("/v1/headers/{height}", route(header), methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: bad_method},
    )


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
