"""Control API routes of the wallet and of explicit payments (mounted by the control app):

- ``GET /v1/wallet/balance`` -> ``{satoshis, confirmed, unconfirmed, reserved, coins}``
- ``POST /v1/wallet/faucet {satoshis}`` -> ``{txid, vout, satoshis, balance}`` (devnet only)
- ``GET /v1/wallet/receive`` -> ``{identity_key, pubkey, address, locking_script, derivation}``
- ``GET /v1/wallet/history?limit=N&before=ID`` -> ``{history: [{id, txid, direction, kind, amount, fee,
  counterparty, quote_id, resource, status, detail, created_at, updated_at}, ...]}`` (newest first)
- ``POST /v1/quote {provider, resource, amount?}`` -> the quote (``quote_id``, ``payee``, ``amount``, ...)
- ``POST /v1/pay {quote_id}`` -> the receipt (``txid``, ``amount``, ``quote_id``, ``payee``, ...)

Thin adapters: each calls one method of the wallet or payments service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overlay_node.api.common import guarded, read_json, require_str
from overlay_node.errors import BadRequest, NotFound, PeerTimeout

if TYPE_CHECKING:
    from overlay_node.services.payments import Payments
    from overlay_node.services.settlement import Settlement
    from overlay_node.services.wallet import Wallet
    from overlay_node.store.wallet import HistoryEntry

__all__ = ["WalletTarget", "history_json", "wallet_routes"]

BODY_LIMIT = 64 * 1024
MAX_HISTORY = 10_000


class WalletTarget(Protocol):
    """What the routes need: the running wallet and payments services."""

    @property
    def wallet(self) -> Wallet: ...

    @property
    def payments(self) -> Payments: ...

    @property
    def settlement(self) -> Settlement: ...


def history_json(entry: HistoryEntry) -> dict[str, Any]:
    """A history entry as the API shows it."""
    return {
        "id": entry.id,
        "txid": entry.txid,
        "direction": entry.direction,
        "kind": entry.kind,
        "amount": entry.amount,
        "fee": entry.fee,
        "counterparty": entry.counterparty,
        "quote_id": entry.quote_id,
        "resource": entry.resource,
        "status": entry.status,
        "detail": entry.detail,
        "created_at": entry.created_at,
        "updated_at": entry.updated_at,
    }


def _int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, str) and value.isdigit() and len(value) <= 18:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"field {name!r} must be an integer in [{lo}, {hi}]")
    return value


def wallet_routes(target: WalletTarget) -> list[Route]:
    """The wallet and payment routes over ``target``."""

    @guarded
    async def balance(_: Request) -> Response:
        return JSONResponse(target.wallet.balance().as_json())

    @guarded
    async def faucet(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        satoshis = _int(body.get("satoshis"), "satoshis", 1, 21_000_000 * 100_000_000)
        paid = await target.wallet.faucet(satoshis)
        return JSONResponse({**paid, "balance": target.wallet.balance().as_json()})

    @guarded
    async def receive(_: Request) -> Response:
        return JSONResponse(target.wallet.receive())

    @guarded
    async def history(request: Request) -> Response:
        limit = _int(request.query_params.get("limit", "100"), "limit", 1, MAX_HISTORY)
        before = request.query_params.get("before")
        before_id = None if before is None else _int(before, "before", 1, 2**62)
        entries = await target.wallet.history(limit=limit, before_id=before_id)
        return JSONResponse({"history": [history_json(e) for e in entries]})

    @guarded
    async def quote(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        provider = require_str(body, "provider", max_len=66)
        resource = require_str(body, "resource", max_len=512)
        raw_amount = body.get("amount")
        amount = None if raw_amount is None else _int(raw_amount, "amount", 1, 21_000_000 * 100_000_000)
        found = await target.payments.request_quote(provider, resource, amount)
        return JSONResponse(found.as_json())

    @guarded
    async def pay(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        quote_id = require_str(body, "quote_id", max_len=64)
        receipt = await target.payments.pay(quote_id)
        return JSONResponse(receipt.as_json())

    @guarded
    async def settlement_wait(request: Request) -> Response:
        body = await read_json(request, 4096)
        txid = require_str(body, "txid", max_len=64)
        timeout = body.get("timeout", 30)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 3600:
            raise BadRequest("field 'timeout' must be a number of seconds in (0, 3600]")
        with trio.move_on_after(float(timeout)):
            try:
                job = await target.settlement.wait_for(txid, "seen", "mined", "failed", "abandoned")
            except KeyError:
                raise NotFound(f"no settlement job for {txid}") from None
            return JSONResponse({"txid": job.txid, "state": job.state, "arc_status": job.arc_status})
        raise PeerTimeout(f"settlement of {txid} not finished after {timeout}s")

    return [
        Route("/v1/wallet/balance", balance, methods=["GET"]),
        Route("/v1/wallet/faucet", faucet, methods=["POST"]),
        Route("/v1/wallet/receive", receive, methods=["GET"]),
        Route("/v1/wallet/history", history, methods=["GET"]),
        Route("/v1/quote", quote, methods=["POST"]),
        Route("/v1/pay", pay, methods=["POST"]),
        Route("/v1/wallet/settlement/wait", settlement_wait, methods=["POST"]),
    ]
