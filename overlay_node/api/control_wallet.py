"""Control API routes of the wallet and of explicit payments (mounted by the control app):

- ``GET /v1/wallet/balance`` -> ``{satoshis, confirmed, unconfirmed, reserved, coins}``
- ``POST /v1/wallet/faucet {satoshis}`` -> ``{txid, vout, satoshis, balance}`` (devnet only)
- ``GET /v1/wallet/receive`` -> ``{identity_key, pubkey, address, locking_script, derivation}``
- ``GET /v1/wallet/history?limit=N&before=ID`` -> ``{history: [{id, txid, direction, kind, amount, fee,
  counterparty, quote_id, resource, status, detail, created_at, updated_at}, ...]}`` (newest first)
- ``POST /v1/quote {provider, resource, amount?}`` -> the quote (``quote_id``, ``payee``, ``amount``, ...)
- ``POST /v1/pay {quote_id}`` -> the receipt (``txid``, ``amount``, ``quote_id``, ``payee``, ...)
- ``POST /v1/wallet/settlement/wait {txid, timeout?}`` -> ``{txid, state, arc_status}`` once ARC answered

Thin adapters: each calls one method of the wallet, payments or settlement service (the app's node's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overlay_node.api.common import Body, guarded, served
from overlay_node.errors import NotFound, PeerTimeout

if TYPE_CHECKING:
    from overlay_node.services.payments import Payments
    from overlay_node.services.settlement import Settlement
    from overlay_node.services.wallet import Wallet
    from overlay_node.store.wallet import HistoryEntry

__all__ = ["WalletTarget", "history_json", "wallet_routes"]

BODY_LIMIT = 64 * 1024
MAX_HISTORY = 10_000
#: every satoshi there will ever be
MAX_SATOSHIS: Final = 21_000_000 * 100_000_000


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


def _target(request: Request) -> WalletTarget:
    return cast(WalletTarget, served(request))


@guarded
async def balance(request: Request) -> Response:
    return JSONResponse(_target(request).wallet.balance().as_json())


@guarded
async def faucet(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    satoshis = body.integer("satoshis", minimum=1, maximum=MAX_SATOSHIS, digits=True)
    wallet = _target(request).wallet
    paid = await wallet.faucet(satoshis)
    return JSONResponse({**paid, "balance": wallet.balance().as_json()})


@guarded
async def receive(request: Request) -> Response:
    return JSONResponse(_target(request).wallet.receive())


@guarded
async def history(request: Request) -> Response:
    query = Body(dict(request.query_params))
    limit = query.integer("limit", 100, minimum=1, maximum=MAX_HISTORY, digits=True)
    before_id = query.integer("before", None, minimum=1, maximum=2**62, digits=True)
    entries = await _target(request).wallet.history(limit=limit, before_id=before_id)
    return JSONResponse({"history": [history_json(e) for e in entries]})


@guarded
async def quote(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    provider = body.text("provider", max_len=66)
    resource = body.text("resource", max_len=512)
    amount = body.integer("amount", None, minimum=1, maximum=MAX_SATOSHIS, digits=True)
    found = await _target(request).payments.request_quote(provider, resource, amount)
    return JSONResponse(found.as_json())


@guarded
async def pay(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    receipt = await _target(request).payments.pay(body.text("quote_id", max_len=64))
    return JSONResponse(receipt.as_json())


@guarded
async def settlement_wait(request: Request) -> Response:
    body = await Body.read(request, 4096)
    txid = body.text("txid", max_len=64)
    timeout = body.seconds("timeout", 30, maximum=3600)
    with trio.move_on_after(timeout):
        try:
            job = await _target(request).settlement.wait_for(txid, "seen", "mined", "failed", "abandoned")
        except KeyError:
            raise NotFound(f"no settlement job for {txid}") from None
        return JSONResponse({"txid": job.txid, "state": job.state, "arc_status": job.arc_status})
    raise PeerTimeout(f"settlement of {txid} not finished after {body.get('timeout', 30)}s")


def wallet_routes() -> list[Route]:
    """The wallet and payment routes; they serve the app's node's ``wallet``, ``payments`` and ``settlement``."""
    return [
        Route("/v1/wallet/balance", balance, methods=["GET"]),
        Route("/v1/wallet/faucet", faucet, methods=["POST"]),
        Route("/v1/wallet/receive", receive, methods=["GET"]),
        Route("/v1/wallet/history", history, methods=["GET"]),
        Route("/v1/quote", quote, methods=["POST"]),
        Route("/v1/pay", pay, methods=["POST"]),
        Route("/v1/wallet/settlement/wait", settlement_wait, methods=["POST"]),
    ]
