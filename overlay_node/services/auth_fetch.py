"""An AuthFetch-like HTTP client on trio (httpx): BRC-104 mutual authentication and BRC-105 payments, the client
half of what ``api/http_auth.py`` serves (and of the reference auth and payment middlewares).

Theory of operation (``protocol/http_auth.py`` holds the message rules):
1. Per origin, the first request makes a session: ``POST <origin>/.well-known/auth`` with an ``initialRequest``; the
   ``initialResponse`` is checked (our nonce answered, the server's signature over both nonces) and the server's
   identity and nonce kept. Concurrent first requests to one origin share one handshake.
2. Each request is signed over its payload (method, path as sent, query, the signed headers, the body) with the
   ``x-bsv-auth-*`` headers; the answer must be signed by the session's server for that request id, else it is
   refused (an answer without auth headers is "the server did not authenticate"). A ``401`` without auth headers
   means the server forgot the session: one new handshake and one retry.
3. A signed ``402`` with BRC-105 headers is paid from the node's wallet when the caller allows it
   (:meth:`~overlay_node.services.payments.Payments.pay_over_http`: output 0 to the BRC-29 key of the prefix, written
   ahead, committed by ``x-bsv-payment-satoshis-paid``, released on a refusal) and the request sent again, signed,
   with ``x-bsv-payment``. One payment per call; a second 402 is a refusal.
4. Answers are read whole, up to ``max_response`` bytes (the signature covers the whole body).

:class:`AuthTransport` puts this under any ``httpx.AsyncClient`` (``httpx.AsyncClient(transport=...)``): requests go
out plain, and to an origin that answered one of them ``401`` without auth headers (the reference's answer on a
route that needs authentication) they go signed from then on, the refused one sent again at once. A GASP client
built on it (``POST /requestSyncResponse``, ``/requestForeignGASPNode``) thus works with hosts that require
authentication on those routes (ours by default, ``auth.require``) and with hosts that do not (the reference).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import trio

from overlay_node.crypto.keys import Identity
from overlay_node.errors import (
    BadRequest,
    ConnectionLost,
    DialError,
    OverlayError,
    PaymentError,
    PeerTimeout,
    RemoteProtocolError,
    TransportError,
)
from overlay_node.metrics import Metrics, instrument
from overlay_node.protocol.http_auth import (
    AUTH_PATH,
    ClientSession,
    check_initial_response,
    create_nonce,
    initial_request,
    sign_request,
    verify_response,
)
from overlay_node.protocol.http_payment import H_PAYMENT, H_VERSION, parse_payment_required
from overlay_node.services.payments import Payments

__all__ = ["AuthFetch", "AuthResponse", "AuthTransport"]

logger = logging.getLogger(__name__)

_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_HANDSHAKE_LIMIT: Final = 64 * 1024

#: ``on_payment(event)``: ``{"event": "paying", "payee", "satoshis", "url"}`` then ``{"event": "paid", "txid"}``
PaymentProgress = Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class AuthResponse:
    """A verified answer: status, headers (lower-case names), body, the server's identity, and the payment made
    for it (if any)."""

    status: int
    headers: dict[str, str]
    body: bytes
    server_key: str
    paid_satoshis: int = 0
    paid_txid: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


class AuthFetch:
    """The node's authenticated HTTP client. Run it with ``await nursery.start(client.run)`` (it owns an httpx
    client until cancelled).

    Args:
        identity: the node's key (our side of every session; the payer of 402s).
        metrics: the node's instruments.
        payments: pays 402s (None: a 402 is returned as it is).
        verify: how HTTPS servers are verified (``Node.https_verify``).
        timeout: seconds for each HTTP exchange.
        max_response: the largest answer read.
    """

    def __init__(
        self,
        identity: Identity,
        metrics: Metrics,
        *,
        payments: Payments | None,
        verify: Any = True,
        timeout: float = 30.0,
        max_response: int = 64 * 1024 * 1024,
    ) -> None:
        self._identity = identity
        self._payments = payments
        self._verify = verify
        self._timeout = timeout
        self._max_response = max_response
        self._client: httpx.AsyncClient | None = None
        self._sessions: dict[str, ClientSession] = {}
        self._locks: dict[str, trio.Lock] = {}
        from prometheus_client import Counter

        self._requests = instrument(
            metrics,
            Counter,
            "overlay_http_client_requests",
            "Authenticated HTTP requests sent, by outcome",
            ["outcome"],
        )
        self._payments_made = instrument(
            metrics, Counter, "overlay_http_client_payments", "BRC-105 payments made, by outcome", ["outcome"]
        )
        self.stats: dict[str, int] = {"requests": 0, "handshakes": 0, "paid": 0, "refused": 0, "satoshis_paid": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the HTTP client until cancelled."""
        async with httpx.AsyncClient(timeout=httpx.Timeout(self._timeout), verify=self._verify) as client:
            self._client = client
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._client = None

    def status(self) -> dict[str, Any]:
        return {**self.stats, "sessions": len(self._sessions)}

    def forget(self, origin: str) -> None:
        """Drop the session with ``origin`` (the next request handshakes again)."""
        self._sessions.pop(_origin(httpx.URL(origin)), None)

    # -- the exchange -----------------------------------------------------------------------------------------

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        pay: bool = True,
        max_price: int | None = None,
        on_payment: PaymentProgress | None = None,
    ) -> AuthResponse:
        """Send an authenticated request and return the verified answer (any status), paying a 402 first when
        ``pay`` (and the price is at most ``max_price``, if given).

        Raises:
            BadRequest: a bad URL.
            DialError, ConnectionLost, PeerTimeout: the server cannot be reached or did not answer.
            RemoteProtocolError: the server's handshake or answer does not verify (``reason`` says why).
            PaymentError: over ``max_price``, refused by the server, or the wallet cannot pay.
        """
        target = _url(url)
        method = method.upper()
        sent_headers = dict(headers or {})
        if body is None and method in _BODY_METHODS:
            is_json = any(k.lower() == "content-type" and "application/json" in v for k, v in sent_headers.items())
            body = b"{}" if is_json else b""
        answer = await self._exchange(target, method, sent_headers, body or b"")
        if answer.status != 402 or not pay or self._payments is None or H_VERSION not in answer.headers:
            return answer  # (a 402 without BRC-105 headers is not an offer to sell: the caller reads it)
        request = parse_payment_required(answer.headers)
        if max_price is not None and request.satoshis > max_price:
            self._payments_made.labels("over_max_price").inc()
            raise PaymentError(f"{url} costs {request.satoshis} satoshis, over the maximum {max_price}")
        if on_payment is not None:
            on_payment({"event": "paying", "payee": answer.server_key, "satoshis": request.satoshis, "url": url})

        async def retry(payment: str) -> AuthResponse:
            # a 401 without auth headers comes from the auth layer, before the payment is looked at: sending it again
            # on a fresh session cannot pay twice
            return await self._exchange(target, method, {**sent_headers, H_PAYMENT: payment}, body or b"")

        try:
            paid, txid = await self._payments.pay_over_http(answer.server_key, request, url, retry)
        except PaymentError:
            self._payments_made.labels("refused").inc()
            self.stats["refused"] += 1
            raise
        except OverlayError:
            self._payments_made.labels("unknown").inc()
            raise
        if paid.headers.get("x-bsv-payment-satoshis-paid") is None:  # neither paid nor refused: see pay_over_http
            self._payments_made.labels("unknown").inc()
            return paid
        self._payments_made.labels("paid").inc()
        self.stats["paid"] += 1
        self.stats["satoshis_paid"] += request.satoshis
        paid.paid_satoshis, paid.paid_txid = request.satoshis, txid
        if on_payment is not None:
            on_payment({"event": "paid", "txid": txid, "satoshis": request.satoshis})
        return paid

    async def fetch_plain(self, url: str, *, method: str = "GET") -> AuthResponse:
        """An unauthenticated request (for a server that does not speak BRC-104; ``server_key`` is empty)."""
        status, headers, data = await self._send(method.upper(), _url(url), [], b"")
        return AuthResponse(status=status, headers=dict(headers), body=data, server_key="")

    async def _exchange(
        self, url: httpx.URL, method: str, headers: dict[str, str], body: bytes, *, retry: bool = True
    ) -> AuthResponse:
        origin = _origin(url)
        for attempt in (0, 1):
            session = await self._session(origin)
            raw_path = url.raw_path.split(b"?", 1)[0] or b"/"
            search = "?" + url.query.decode("ascii") if url.query else ""
            request_id, auth = sign_request(
                self._identity,
                session,
                method=method,
                path=raw_path.decode("ascii"),
                search=search,
                headers=list(headers.items()),
                body=body,
            )
            status, got, data = await self._send(method, url, [*headers.items(), *auth], body)
            self.stats["requests"] += 1
            try:
                verify_response(self._identity, session, request_id, status, got, data)
            except RemoteProtocolError as exc:
                if exc.reason == "unauthenticated" and status == 401 and attempt == 0 and retry:
                    # the server forgot our session (restart, expiry, eviction): handshake again, once
                    self._sessions.pop(origin, None)
                    continue
                self._requests.labels(exc.reason).inc()
                if exc.reason == "unauthenticated" and data:  # the server's own words (a refusal's JSON)
                    preview = data[:300].decode("utf-8", "replace")
                    raise RemoteProtocolError(f"{exc}: {preview}", reason=exc.reason) from None
                raise
            self._requests.labels("ok").inc()
            return AuthResponse(status=status, headers=dict(got), body=data, server_key=session.server_key)
        raise RemoteProtocolError("the server refused a fresh session", reason="unauthenticated")  # pragma: no cover

    async def _session(self, origin: str) -> ClientSession:
        session = self._sessions.get(origin)
        if session is not None:
            return session
        lock = self._locks.setdefault(origin, trio.Lock())
        async with lock:
            session = self._sessions.get(origin)
            if session is not None:
                return session
            nonce = create_nonce(self._identity)
            status, _, data = await self._send(
                "POST",
                httpx.URL(origin + AUTH_PATH),
                [("content-type", "application/json")],
                json.dumps(initial_request(self._identity, nonce), separators=(",", ":")).encode(),
                limit=_HANDSHAKE_LIMIT,
            )
            if status != 200:
                raise RemoteProtocolError(
                    f"{origin}{AUTH_PATH} answered HTTP {status}: {data[:200].decode('utf-8', 'replace')}",
                    reason="bad_handshake",
                )
            try:
                message = json.loads(data)
            except (ValueError, RecursionError):
                raise RemoteProtocolError("the auth answer is not JSON", reason="bad_handshake") from None
            session = check_initial_response(self._identity, nonce, message)
            self._sessions[origin] = session
            self.stats["handshakes"] += 1
            return session

    async def _send(
        self, method: str, url: httpx.URL, headers: list[tuple[str, str]], body: bytes, *, limit: int | None = None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        if self._client is None:
            raise TransportError("the authenticated HTTP client is not running")
        cap = self._max_response if limit is None else limit
        try:
            async with self._client.stream(method, url, headers=headers, content=body or None) as response:
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > cap:
                        raise RemoteProtocolError(f"the answer is larger than {cap} bytes", reason="too_large")
                pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers.raw]
                return response.status_code, pairs, bytes(data)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise DialError(f"cannot reach {url.host}:{url.port}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise PeerTimeout(f"{url.host} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise ConnectionLost(f"{url.host}: {exc}") from exc


def _url(url: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise BadRequest(f"bad URL {url[:200]!r}: {exc}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise BadRequest(f"bad URL {url[:200]!r}: expected http(s)://host[:port]/path")
    return target


def _origin(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port is not None else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{port}"


_HOP_BY_HOP: Final = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade"})


class AuthTransport(httpx.AsyncBaseTransport):
    """An httpx transport over :class:`AuthFetch` (see the module docstring): plain first, BRC-104 for the origins
    that ask for it (``always``: every request signed). It never pays (a 402 is returned as it is).

    Errors are httpx's (``ConnectError``, ``ReadTimeout``, ``ReadError``, ``RemoteProtocolError``: an answer that does
    not verify), so that code written for httpx handles them as it handles any transport failure.
    """

    def __init__(self, fetch: AuthFetch, *, always: bool = False) -> None:
        self._fetch = fetch
        self._always = always
        self._signed: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        origin = _origin(request.url)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            if not self._always and origin not in self._signed:
                status, pairs, data = await self._fetch._send(request.method, request.url, list(headers.items()), body)
                if status != 401 or any(k.startswith("x-bsv-") for k, _ in pairs):
                    return httpx.Response(status, headers=_entity(pairs), content=data, request=request)
                self._signed.add(origin)  # the route needs authentication: sign from now on
            answer = await self._fetch._exchange(request.url, request.method, headers, body)
        except DialError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except PeerTimeout as exc:
            raise httpx.ReadTimeout(str(exc), request=request) from exc
        except RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except TransportError as exc:
            raise httpx.ReadError(str(exc), request=request) from exc
        pairs = _entity(list(answer.headers.items()))
        return httpx.Response(answer.status, headers=pairs, content=answer.body, request=request)


def _entity(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers for a response rebuilt around a body already read and decoded."""
    return [(k, v) for k, v in pairs if k not in ("content-length", "content-encoding", "transfer-encoding")]
