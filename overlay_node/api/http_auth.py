"""BRC-104 and BRC-105 on the public http port: two ASGI middlewares around the public app, and the node's state
for them (:class:`HttpAuth`: the session table, the counters of ``ctl status`` and ``/metrics``).

- :class:`AuthMiddleware` (outer) answers ``POST /.well-known/auth`` (the handshake, ``protocol/http_auth.py``). A
  request carrying ``x-bsv-auth-request-id`` has its body read whole (``auth.max_body``), its signature checked over
  the payload rebuilt from the request as it came (method, raw path, query, signed headers, raw body), and then
  goes on with ``scope["bsv_auth"]`` (:class:`~overlay_node.protocol.http_auth.Verified`); the answer is buffered
  (``auth.max_response``), signed and sent with the ``x-bsv-auth-*`` headers. A refused request gets the
  reference's ``401 {"status":"error","code":"ERR_AUTH_FAILED","description"}`` and reaches no route. A request
  without auth headers goes on untouched, except to an ``auth.require`` path: ``401 UNAUTHORIZED`` (the reference's
  body). Unauthenticated answers never carry ``x-bsv-*`` headers: nothing here adds any to them.
- :class:`PaymentMiddleware` (inner, BRC-105) asks the pricer what the request costs (priced content on the gateway,
  ``/lookup`` when ``auth.lookup_price`` > 0); a priced request that is not authenticated gets the ``401``; one
  without ``x-bsv-payment`` a ``402`` with a fresh derivation prefix; one with it goes through
  ``Payments.accept_http_payment`` (the peer-link payment checks, recorded durably before the answer) and then on to
  the route with ``scope["bsv_payment"]``, its answer carrying ``x-bsv-payment-satoshis-paid``; a refused payment
  gets the reference's ``400`` and changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from overlay_node.config import AuthSection
from overlay_node.crypto.keys import Identity
from overlay_node.errors import OverlayError, RemoteProtocolError
from overlay_node.metrics import Metrics, instrument
from overlay_node.protocol.http_auth import (
    AUTH_PATH,
    H_REQUEST_ID,
    UNAUTHORIZED_BODY,
    AuthServer,
    Verified,
    signed_request_headers,
)
from overlay_node.protocol.http_payment import (
    H_PAID,
    H_PAYMENT,
    H_PREFIX,
    H_REQUIRED,
    H_VERSION,
    PAYMENT_VERSION,
    refusal,
    refusal_code,
    required_body,
)
from overlay_node.services.payments import Payments

__all__ = [
    "AuthMiddleware",
    "HttpAuth",
    "PaymentMiddleware",
    "Pricer",
    "authenticated_identity",
    "paid_resource",
    "protect",
    "route_pricer",
]

logger = logging.getLogger(__name__)

#: ``await pricer(scope)`` -> ``(satoshis, resource)`` for a request that must be paid, else None
Pricer = Callable[[Scope], Awaitable[tuple[int, str] | None]]

_REQUEST_ID: Final = H_REQUEST_ID.encode()
_PAYMENT: Final = H_PAYMENT.encode()
_CORS: Final = (
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-headers", b"*"),
    (b"access-control-allow-methods", b"*"),
    (b"access-control-expose-headers", b"*"),
)
_AUTH_MESSAGE_LIMIT: Final = 64 * 1024


def authenticated_identity(scope: Scope) -> str | None:
    """The identity key a request was authenticated with (BRC-104), or None."""
    verified = scope.get("bsv_auth")
    return verified.identity_key if isinstance(verified, Verified) else None


def paid_resource(scope: Scope) -> str | None:
    """The resource a request paid for (BRC-105), or None."""
    paid = scope.get("bsv_payment")
    return paid.resource if isinstance(paid, HttpPaid) else None


@dataclass(frozen=True, slots=True)
class HttpPaid:
    """What ``scope["bsv_payment"]`` holds for a request paid with BRC-105."""

    payer: str
    resource: str
    satoshis: int
    txid: str


class HttpAuth:
    """The node's BRC-104/105 server state: the session table and the counters.

    Args:
        identity: the node's key (signs handshakes and answers, issues prefixes).
        config: the ``[auth]`` section.
        metrics: the node's instruments.
        payments: takes BRC-105 payments (None: priced requests are answered 500 ``ERR_SERVER_MISCONFIGURED``).
        clock: monotonic seconds (session expiry).
    """

    def __init__(
        self,
        identity: Identity,
        config: AuthSection,
        metrics: Metrics,
        payments: Payments | None,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.config = config
        self.payments = payments
        self.server = AuthServer(
            identity,
            max_sessions=config.max_sessions,
            session_ttl=config.session_ttl,
            max_seen=config.max_seen_requests,
        )
        self.clock = clock
        self._exact = frozenset(p for p in config.require if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in config.require if p.endswith("*"))
        from prometheus_client import Counter, Gauge

        self._handshakes = instrument(
            metrics, Counter, "overlay_http_auth_handshakes", "BRC-104 handshakes answered, by outcome", ["outcome"]
        )
        self._requests = instrument(
            metrics, Counter, "overlay_http_auth_requests", "BRC-104 authenticated requests verified", []
        )
        self._refusals = instrument(
            metrics, Counter, "overlay_http_auth_refusals", "BRC-104 requests refused, by reason", ["reason"]
        )
        self._sessions = instrument(metrics, Gauge, "overlay_http_auth_sessions", "BRC-104 sessions kept", [])
        self._payments = instrument(
            metrics, Counter, "overlay_http_payments", "BRC-105 payments on the http port, by outcome", ["outcome"]
        )
        self._payment_refusals = instrument(
            metrics, Counter, "overlay_http_payment_refusals", "BRC-105 payments refused, by code", ["code"]
        )
        self.stats: dict[str, Any] = {
            "handshakes": 0,
            "handshakes_refused": 0,
            "authenticated": 0,
            "refusals": {},
            "payment_required": 0,
            "payments_accepted": 0,
            "payments_refused": {},
            "satoshis_received": 0,
        }

    def requires(self, path: str) -> bool:
        """Whether ``path`` needs an authenticated request (``auth.require``)."""
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))

    def status(self) -> dict[str, Any]:
        """The block ``ctl status`` shows."""
        table = self.server.sessions
        return {
            "enabled": self.config.enabled,
            "sessions": len(table),
            "proven_sessions": table.proven,
            **self.stats,
            "refusals": dict(self.stats["refusals"]),
            "payments_refused": dict(self.stats["payments_refused"]),
        }

    # -- counting

    def handshake(self, ok: bool) -> None:
        self._handshakes.labels("ok" if ok else "refused").inc()
        self.stats["handshakes" if ok else "handshakes_refused"] += 1
        self._sessions.set(len(self.server.sessions))

    def verified(self) -> None:
        self._requests.inc()
        self.stats["authenticated"] += 1
        self._sessions.set(len(self.server.sessions))

    def refused(self, reason: str) -> None:
        self._refusals.labels(reason).inc()
        self.stats["refusals"][reason] = self.stats["refusals"].get(reason, 0) + 1

    def payment_required(self) -> None:
        self._payments.labels("required").inc()
        self.stats["payment_required"] += 1

    def payment_accepted(self, satoshis: int) -> None:
        self._payments.labels("accepted").inc()
        self.stats["payments_accepted"] += 1
        self.stats["satoshis_received"] += satoshis

    def payment_refused(self, code: str) -> None:
        self._payments.labels("refused").inc()
        self._payment_refusals.labels(code).inc()
        self.stats["payments_refused"][code] = self.stats["payments_refused"].get(code, 0) + 1


def route_pricer(gateway: Pricer, lookup_price: int) -> Pricer:
    """The public port's pricer: ``gateway`` for ``GET``/``HEAD /uhrp/...`` (priced content), ``lookup_price`` for
    ``POST /lookup`` when above 0; everything else is free."""

    async def price(scope: Scope) -> tuple[int, str] | None:
        path = scope["path"]
        if path.startswith("/uhrp/") and scope["method"] in ("GET", "HEAD"):
            return await gateway(scope)
        if lookup_price > 0 and path == "/lookup" and scope["method"] == "POST":
            return lookup_price, "lookup"
        return None

    return price


def protect(app: ASGIApp, auth: HttpAuth, pricer: Pricer | None = None) -> ASGIApp:
    """``app`` behind BRC-104 (and BRC-105 when ``auth.priced`` and a ``pricer`` is given), as ``[auth]`` says."""
    if not auth.config.enabled:
        return app
    if auth.config.priced and pricer is not None:
        app = PaymentMiddleware(app, auth, pricer)
    return AuthMiddleware(app, auth)


# -- plumbing -------------------------------------------------------------------------------------------------


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class BodyTooLarge(Exception):
    pass


class _TooLarge(Exception):
    """Raised into the route when its answer grows past ``auth.max_response``."""


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and (not value.isdigit() or int(value) > limit):
            raise BodyTooLarge
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyTooLarge  # the client went away: nothing to answer
        body += message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            return bytes(body)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


# -- BRC-104 --------------------------------------------------------------------------------------------------


class AuthMiddleware:
    """BRC-104 in front of an ASGI app (see the module docstring)."""

    def __init__(self, app: ASGIApp, auth: HttpAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == AUTH_PATH:
            await self._handshake(scope, receive, send)
            return
        if _header(scope, _REQUEST_ID) is None:
            if scope["method"] != "OPTIONS" and self.auth.requires(scope["path"]):
                self.auth.refused("unauthenticated")
                await _send_json(send, 401, dict(UNAUTHORIZED_BODY))
                return
            await self.app(scope, receive, send)
            return
        await self._authenticated(scope, receive, send)

    async def _handshake(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 200, "headers": [*_CORS, (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["method"] != "POST":
            body = {"status": "error", "code": "method_not_allowed", "message": "use POST"}
            await _send_json(send, 405, body, [(b"allow", b"POST, OPTIONS")])
            return
        try:
            body_bytes = await _read_body(scope, receive, _AUTH_MESSAGE_LIMIT)
            answer, headers = self.auth.server.handle_message(body_bytes, self.auth.clock())
        except BodyTooLarge:
            self.auth.handshake(False)
            await _send_json(send, 413, {"status": "error", "code": "ERR_AUTH_FAILED", "description": "too large"})
            return
        except RemoteProtocolError as exc:
            self.auth.handshake(False)
            await _send_json(send, 400, {"status": "error", "code": "ERR_AUTH_FAILED", "description": str(exc)}, _CORS)
            return
        self.auth.handshake(True)
        extra = [(k.encode(), v.encode()) for k, v in headers]
        await _send_json(send, 200, answer, [*extra, *_CORS])

    async def _authenticated(self, scope: Scope, receive: Receive, send: Send) -> None:
        checked = await self._verify(scope, receive, send)
        if checked is None:
            return
        verified, body = checked
        auth = self.auth
        answer = _BufferedAnswer(auth.config.max_response, head=scope["method"] == "HEAD")
        try:
            await self.app({**scope, "bsv_auth": verified}, _Replay(body, receive), answer.send)
        except _TooLarge:
            pass
        start = answer.start
        if start is None:
            logger.error("%s %s: the application returned without an answer", scope["method"], scope["path"])
            failed = {"status": "error", "code": "ERR_INTERNAL_SERVER_ERROR", "description": "no answer"}
            await _send_json(send, 500, failed)
            return
        if answer.overflow:
            auth.refused("response_too_large")
            description = f"the answer is larger than auth.max_response ({auth.config.max_response} bytes)"
            failed = {"status": "error", "code": "ERR_RESPONSE_SIGNING_FAILED", "description": description}
            await _send_json(send, 500, failed)
            return
        await self._send_signed(scope, send, verified, start, b"".join(answer.chunks))

    async def _verify(self, scope: Scope, receive: Receive, send: Send) -> tuple[Verified, bytes] | None:
        """Read the body and check the request's signature over it: the verified request and its body, or None
        once the refusal (413 or 401) is sent."""
        auth = self.auth
        try:
            body = await _read_body(scope, receive, auth.config.max_body)
        except BodyTooLarge:
            auth.refused("body_too_large")
            description = f"the request body is over {auth.config.max_body} bytes"
            await _send_json(send, 413, {"status": "error", "code": "ERR_BODY_TOO_LARGE", "description": description})
            return None
        pairs = [(k.decode("latin-1"), v.decode("utf-8", "replace")) for k, v in scope["headers"]]
        auth_headers: dict[str, str] = {}
        for key, value in pairs:
            lower = key.lower()
            if lower.startswith("x-bsv-auth"):
                auth_headers.setdefault(lower, value)
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = bytes(raw_path).split(b"?", 1)[0].decode("latin-1")
        query = scope.get("query_string", b"")
        try:
            verified = auth.server.verify_request(
                auth_headers,
                method=scope["method"],
                path=path,
                search="?" + query.decode("latin-1") if query else "",
                signed_headers=signed_request_headers(pairs),
                body=body,
                now=auth.clock(),
            )
        except RemoteProtocolError as exc:
            auth.refused(exc.reason)
            await _send_json(send, 401, {"status": "error", "code": "ERR_AUTH_FAILED", "description": str(exc)})
            return None
        auth.verified()
        return verified, body

    async def _send_signed(self, scope: Scope, send: Send, verified: Verified, start: Message, answer: bytes) -> None:
        """The route's answer with the ``x-bsv-auth-*`` signature headers (and the CORS ones it lacks)."""
        status = int(start["status"])
        keep_length = scope["method"] == "HEAD" or status in (204, 304)
        headers: list[tuple[bytes, bytes]] = []
        for key, value in start.get("headers", []):
            lower = bytes(key).lower()
            if lower.startswith(b"x-bsv-auth") or lower == b"transfer-encoding":
                continue
            if lower == b"content-length" and not keep_length:
                continue
            headers.append((lower, bytes(value)))
        text_headers = [(k.decode("latin-1"), v.decode("utf-8", "replace")) for k, v in headers]
        signature = self.auth.server.sign_response(verified, status, text_headers, answer)
        present = {k for k, _ in headers}
        headers += [(k.encode(), v.encode()) for k, v in signature]
        headers += [(k, v) for k, v in _CORS if k not in present]
        if not keep_length:
            headers.append((b"content-length", str(len(answer)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


class _Replay:
    """The route's ``receive``: the body already read (once), then the connection's own ``receive``."""

    __slots__ = ("_body", "_receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def __call__(self) -> Message:
        body = self._body
        if body is None:
            return await self._receive()
        self._body = None
        return {"type": "http.request", "body": body, "more_body": False}


class _BufferedAnswer:
    """The route's ``send``: keeps its answer (up to ``limit`` bytes) so that it can be signed whole."""

    __slots__ = ("_head", "_limit", "_size", "chunks", "overflow", "start")

    def __init__(self, limit: int, *, head: bool) -> None:
        self._limit = limit
        self._head = head
        self._size = 0
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        #: the answer grew (or was declared) larger than ``limit``
        self.overflow = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            declared = next((v for k, v in message.get("headers", []) if bytes(k).lower() == b"content-length"), b"")
            if not self._head and declared.isdigit() and int(declared) > self._limit:
                self.overflow = True
                raise _TooLarge  # stop the route now rather than read what cannot be signed
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            self._size += len(chunk)
            if self._size > self._limit:
                self.overflow = True
                self.chunks.clear()
                raise _TooLarge
            if chunk:
                self.chunks.append(bytes(chunk))


# -- BRC-105 --------------------------------------------------------------------------------------------------


class PaymentMiddleware:
    """BRC-105 in front of an ASGI app, behind :class:`AuthMiddleware` (see the module docstring)."""

    def __init__(self, app: ASGIApp, auth: HttpAuth, pricer: Pricer) -> None:
        self.app = app
        self.auth = auth
        self.pricer = pricer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        priced = await self.pricer(scope)
        if priced is None:
            await self.app(scope, receive, send)
            return
        price, resource = priced
        auth = self.auth
        payer = authenticated_identity(scope)
        if payer is None:
            auth.refused("unauthenticated")
            await _send_json(send, 401, dict(UNAUTHORIZED_BODY))
            return
        payments = auth.payments
        if payments is None:
            body = {
                "status": "error",
                "code": "ERR_SERVER_MISCONFIGURED",
                "description": "this node takes no payments",
            }
            await _send_json(send, 500, body)
            return
        header = _header(scope, _PAYMENT)
        if header is None:
            auth.payment_required()
            headers = [
                (H_VERSION.encode(), PAYMENT_VERSION.encode()),
                (H_REQUIRED.encode(), str(price).encode()),
                (H_PREFIX.encode(), payments.http_prefix(payer).encode()),
            ]
            await _send_json(send, 402, required_body(price), headers)
            return
        try:
            receipt = await payments.accept_http_payment(payer, resource, price, header.decode("utf-8", "replace"))
        except OverlayError as exc:
            if exc.http_status >= 500:  # our fault (the store): nothing was recorded, the payer may retry
                logger.warning("BRC-105 payment for %s could not be checked: %s", resource, exc)
                auth.payment_refused("ERR_PAYMENT_INTERNAL")
                body = {"status": "error", "code": "ERR_PAYMENT_INTERNAL", "description": str(exc)}
                await _send_json(send, 500, body)
                return
            code = refusal_code(exc)
            auth.payment_refused(code)
            await _send_json(send, 400, refusal(exc))
            return
        auth.payment_accepted(price)
        paid = HttpPaid(payer=payer, resource=resource, satoshis=price, txid=receipt.txid)

        async def paid_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (H_PAID.encode(), str(price).encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app({**scope, "bsv_payment": paid}, receive, paid_send)
