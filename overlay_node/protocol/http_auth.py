"""BRC-104 (BRC-103 mutual authentication over HTTP), sans-IO: the ``/.well-known/auth`` messages, the bytes a
general message signs, the server's session table, and the checks both sides make.

Invariants:

1. **Nonces** are 48 bytes: a 16-byte head and ``HMAC`` of it under ``[2, "server hmac"]``, key id = the head read
   as Latin-1 text, written as base64 without padding (64 characters; the TypeScript SDK decodes ``nA + nB`` as one
   string, so a padded nonce would break it). Only a nonce's creator verifies it, so the head's content and the key
   id's text encoding are local choices: a session nonce has a random head and counterparty ``self``; a BRC-105
   derivation prefix (``http_payment.py``) carries its issue time in its head and is bound to its payer
   (counterparty = the payer's identity key).
2. **Request payload** (what the client signs and the server rebuilds from the request it got):
   ``requestId (32 bytes) || VarInt len(method) || method || VarInt len(path) || path || VarInt len(search) ||
   search || VarInt n || n x (VarInt len(key) || key || VarInt len(value) || value) || body``, where an empty path or
   search (``?`` included) is written as VarInt -1 (nine ``ff`` bytes), and the body as ``VarInt len || bytes``, or
   -1 when empty. The headers are ``authorization``, ``content-type`` (parameters cut: ``split(';')[0].trim()``)
   and every ``x-bsv-*`` but ``x-bsv-auth-*``, keys lower-cased and sorted as JavaScript's ``localeCompare`` sorts
   them (ICU root collation: :data:`HEADER_ORDER`). The server hashes the **raw** body bytes.
3. **Response payload**: ``requestId || VarInt status || VarInt n || sorted headers (x-bsv-* but x-bsv-auth-*,
   and authorization) || VarInt len(body) || body``. An empty body is written as length 0, which is what
   AuthFetch checks (the reference middleware writes -1 there, which AuthFetch cannot verify; our client accepts
   both).
4. **Signatures** are BRC-3 under ``[2, "auth message signature"]``: the initial response over
   ``b64dec(nA) || b64dec(nB)`` with key id ``"nA nB"`` and counterparty A; a general message over its payload
   with key id ``"<sender's message nonce> <receiver's session nonce>"`` and counterparty the receiver.
5. **Sessions** (server side) are keyed by the server's session nonce; the table is bounded (least recently used
   dropped first, a session that never carried a verified request before one that did) and a session idle for its
   time to live is gone. A session's claimed identity is only believed once a request signed by that key verifies.
6. **Replays**: every accepted request id is remembered in one bounded first-in-first-out set; a request id seen
   before is refused. When the set forgets an id, the session that carried it is retired (its client handshakes
   again), so no request is ever accepted twice on a live session, whatever the bounds.

Theory of operation: the server feeds the body of ``POST /.well-known/auth`` to :meth:`AuthServer.handle_message`,
every request carrying ``x-bsv-auth-request-id`` to :meth:`AuthServer.verify_request` (with the raw body), and
signs the answer with :meth:`AuthServer.sign_response`. A client makes :func:`initial_request`, checks the answer
with :func:`check_initial_response`, signs each request with :func:`sign_request` and checks each answer with
:func:`verify_response`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

from coincurve import PublicKey

from overlay_node.crypto import brc42
from overlay_node.crypto.bump import varint_bytes
from overlay_node.crypto.keys import Identity, ecdsa_verify_digest, parse_public_key
from overlay_node.errors import BadRequest, RemoteProtocolError

__all__ = [
    "AUTH_PATH",
    "AUTH_VERSION",
    "HEADER_ORDER",
    "NONCE_PROTOCOL",
    "SIGNATURE_PROTOCOL",
    "UNAUTHORIZED_BODY",
    "AuthServer",
    "AuthSession",
    "ClientSession",
    "SessionTable",
    "Verified",
    "check_initial_response",
    "create_nonce",
    "header_sort_key",
    "initial_request",
    "request_payload",
    "response_payload",
    "sign_request",
    "signed_request_headers",
    "signed_response_headers",
    "verify_nonce",
    "verify_response",
]

AUTH_VERSION: Final = "0.1"
AUTH_PATH: Final = "/.well-known/auth"
NONCE_PROTOCOL: Final = (2, "server hmac")
SIGNATURE_PROTOCOL: Final = (2, "auth message signature")
NONCE_BYTES: Final = 48
#: the reference middleware's answer to a request without authentication on a route that needs it
UNAUTHORIZED_BODY: Final = {"status": "error", "code": "UNAUTHORIZED", "message": "Mutual-authentication failed!"}

H_VERSION: Final = "x-bsv-auth-version"
H_IDENTITY: Final = "x-bsv-auth-identity-key"
H_NONCE: Final = "x-bsv-auth-nonce"
H_YOUR_NONCE: Final = "x-bsv-auth-your-nonce"
H_SIGNATURE: Final = "x-bsv-auth-signature"
H_REQUEST_ID: Final = "x-bsv-auth-request-id"
H_MESSAGE_TYPE: Final = "x-bsv-auth-message-type"
H_REQUESTED_CERTIFICATES: Final = "x-bsv-auth-requested-certificates"

#: the order JavaScript's ``localeCompare`` (ICU root collation) gives the characters of header names
HEADER_ORDER: Final = "_-!.'*&#%`^+|~$0123456789abcdefghijklmnopqrstuvwxyz"
_RANK: Final = {c: i for i, c in enumerate(HEADER_ORDER)}

_VARINT_MINUS_ONE: Final = b"\xff" * 9
_MAX_MESSAGE: Final = 64 * 1024
_MAX_PEER_NONCE: Final = 256
_MAX_SIGNATURE: Final = 80
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")

RandomBytes = Callable[[int], bytes]


def _refuse(reason: str, message: str) -> NoReturn:
    raise RemoteProtocolError(message, reason=reason)


# -- nonces ---------------------------------------------------------------------------------------------------


def create_nonce(identity: Identity, *, counterparty: brc42.Counterparty = "self", head: bytes | None = None) -> str:
    """A 48-byte nonce (invariant 1): ``head`` (16 bytes, random by default) and its HMAC, base64 unpadded."""
    head = os.urandom(16) if head is None else head
    if len(head) != 16:
        raise ValueError("a nonce head is 16 bytes")
    mac = brc42.create_hmac(
        identity, head, protocol=NONCE_PROTOCOL, key_id=head.decode("latin-1"), counterparty=counterparty
    )
    return base64.b64encode(head + mac).decode("ascii")


def verify_nonce(identity: Identity, text: object, *, counterparty: brc42.Counterparty = "self") -> bytes | None:
    """The 16-byte head of ``text`` when it is a nonce ``identity`` created for ``counterparty``, else None."""
    if not isinstance(text, str) or len(text) != 64 or _BASE64.fullmatch(text) is None:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    head, mac = raw[:16], raw[16:]
    try:
        valid = brc42.verify_hmac(
            identity, head, mac, protocol=NONCE_PROTOCOL, key_id=head.decode("latin-1"), counterparty=counterparty
        )
    except BadRequest:  # a counterparty that is not a key
        return None
    return head if valid else None


def _b64decode(text: str) -> bytes:
    """Lenient like Node's decoder on well-formed input: padding optional."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


# -- payloads -------------------------------------------------------------------------------------------------


def header_sort_key(name: str) -> tuple[int, ...]:
    """The sort key of a lower-case header name in ``localeCompare`` order (invariant 2)."""
    return tuple(_RANK.get(c, 1000 + ord(c)) for c in name)


def _varint(n: int) -> bytes:
    return _VARINT_MINUS_ONE if n < 0 else varint_bytes(n)


def _chunk(data: bytes) -> bytes:
    """``VarInt len || data``, or VarInt -1 when empty."""
    return _varint(len(data)) + data if data else _VARINT_MINUS_ONE


def _headers_block(headers: Sequence[tuple[str, str]]) -> bytes:
    ordered = sorted(headers, key=lambda kv: header_sort_key(kv[0]))
    out = bytearray(_varint(len(ordered)))
    for key, value in ordered:
        k, v = key.encode(), value.encode()
        out += _varint(len(k)) + k + _varint(len(v)) + v
    return bytes(out)


def signed_request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The request headers a payload covers (invariant 2), from ``(name, value)`` pairs in any case: one value per
    name (the first ``content-type`` and ``authorization``; others joined with ``", "`` as Node joins them)."""
    found: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key == "content-type":
            if key not in found:
                found[key] = value.split(";")[0].strip()
        elif key == "authorization":
            found.setdefault(key, value)
        elif key.startswith("x-bsv-") and not key.startswith("x-bsv-auth"):
            found[key] = f"{found[key]}, {value}" if key in found else value
    return list(found.items())


def signed_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The response headers a payload covers (invariant 3): ``x-bsv-*`` but ``x-bsv-auth-*``, and authorization."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if (key.startswith("x-bsv-") or key == "authorization") and not key.startswith("x-bsv-auth"):
            out[key] = f"{out[key]}, {value}" if key in out else value
    return list(out.items())


def request_payload(
    request_id: bytes, method: str, path: str, search: str, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    """The bytes a request's signature covers (invariant 2). ``search`` includes its ``?`` (empty: none);
    ``headers`` are the signed ones (:func:`signed_request_headers`)."""
    return b"".join(
        (
            request_id,
            _varint(len(method)),
            method.encode(),
            _chunk(path.encode()),
            _chunk(search.encode()),
            _headers_block(headers),
            _chunk(body),
        )
    )


def response_payload(
    request_id: bytes, status: int, headers: Sequence[tuple[str, str]], body: bytes, *, empty_as_minus_one: bool = False
) -> bytes:
    """The bytes a response's signature covers (invariant 3); ``headers`` are the signed ones
    (:func:`signed_response_headers`). ``empty_as_minus_one``: write an empty body as -1, as the reference
    middleware does."""
    tail = _varint(len(body)) + body if body or not empty_as_minus_one else _VARINT_MINUS_ONE
    return request_id + _varint(status) + _headers_block(headers) + tail


def _signer_key(identity: Identity, key_id: str, counterparty: str) -> PublicKey:
    return PublicKey(brc42.derive_public_key(identity, SIGNATURE_PROTOCOL, key_id, counterparty))


def _verify(identity: Identity, data: bytes, signature: bytes, key_id: str, counterparty: str) -> bool:
    try:
        pub = _signer_key(identity, key_id, counterparty)
    except BadRequest:
        return False
    return ecdsa_verify_digest(pub, signature, hashlib.sha256(data).digest())


def _sign(identity: Identity, data: bytes, key_id: str, counterparty: str) -> bytes:
    return brc42.create_signature(identity, data, protocol=SIGNATURE_PROTOCOL, key_id=key_id, counterparty=counterparty)


# -- messages -------------------------------------------------------------------------------------------------


def _identity_key(value: object) -> str:
    if not isinstance(value, str):
        _refuse("bad_identity_key", "identityKey missing or not text")
    try:
        return parse_public_key(value).format(compressed=True).hex()
    except BadRequest as exc:
        _refuse("bad_identity_key", f"identityKey: {exc}")


def _peer_nonce(value: object, what: str) -> str:
    """A nonce the other side made (we only need it as base64 text of a sane length)."""
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_PEER_NONCE or _BASE64.fullmatch(value) is None:
        _refuse("bad_nonce", f"{what} must be base64 text of 1-{_MAX_PEER_NONCE} characters")
    try:
        _b64decode(value)
    except (binascii.Error, ValueError):
        _refuse("bad_nonce", f"{what} is not base64")
    return value


def _signature(value: object) -> bytes:
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= _MAX_SIGNATURE
        or not all(type(b) is int and 0 <= b <= 255 for b in value)
    ):
        _refuse("bad_signature", "signature must be an array of byte values")
    return bytes(value)


def _empty_certificates() -> dict[str, Any]:
    return {"certifiers": [], "types": {}}


def initial_request(identity: Identity, nonce: str) -> dict[str, Any]:
    """The client's ``initialRequest`` (not signed)."""
    return {
        "version": AUTH_VERSION,
        "messageType": "initialRequest",
        "identityKey": identity.public_key_hex,
        "initialNonce": nonce,
        "requestedCertificates": _empty_certificates(),
    }


@dataclass(frozen=True, slots=True)
class ClientSession:
    """What a client keeps per server after the handshake."""

    server_key: str
    nonce: str  # ours (the server's peerNonce)
    server_nonce: str  # the server's session nonce


def check_initial_response(identity: Identity, nonce: str, message: object) -> ClientSession:
    """Check the server's ``initialResponse`` to our ``initialRequest`` made with ``nonce``.

    Raises:
        RemoteProtocolError: ``bad_handshake``, ``bad_version``, ``bad_identity_key``, ``bad_nonce``,
            ``nonce_mismatch`` or ``bad_signature``.
    """
    if not isinstance(message, dict):
        _refuse("bad_handshake", "the auth answer is not a JSON object")
    if message.get("version") != AUTH_VERSION:
        _refuse("bad_version", f"unsupported auth version {message.get('version')!r:.20}")
    if message.get("messageType") != "initialResponse":
        _refuse("bad_handshake", f"expected an initialResponse, got {message.get('messageType')!r:.40}")
    server_key = _identity_key(message.get("identityKey"))
    if message.get("yourNonce") != nonce:
        _refuse("nonce_mismatch", "the initialResponse does not answer our nonce")
    server_nonce = _peer_nonce(message.get("initialNonce"), "initialNonce")
    signature = _signature(message.get("signature"))
    data = _b64decode(nonce) + _b64decode(server_nonce)
    if not _verify(identity, data, signature, f"{nonce} {server_nonce}", server_key):
        _refuse("bad_signature", f"Unable to verify initial response signature for peer: {server_key}")
    return ClientSession(server_key=server_key, nonce=nonce, server_nonce=server_nonce)


def sign_request(
    identity: Identity,
    session: ClientSession,
    *,
    method: str,
    path: str,
    search: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    request_id: bytes | None = None,
    nonce: str | None = None,
) -> tuple[bytes, list[tuple[str, str]]]:
    """Sign a request (invariants 2 and 4): its request id and the ``x-bsv-auth-*`` headers to send with it.
    ``headers``: the request's headers (only the signed ones count, :func:`signed_request_headers`)."""
    request_id = os.urandom(32) if request_id is None else request_id
    nonce = base64.b64encode(os.urandom(32)).decode() if nonce is None else nonce
    payload = request_payload(request_id, method, path, search, signed_request_headers(headers), body)
    signature = _sign(identity, payload, f"{nonce} {session.server_nonce}", session.server_key)
    return request_id, [
        (H_VERSION, AUTH_VERSION),
        (H_IDENTITY, identity.public_key_hex),
        (H_NONCE, nonce),
        (H_YOUR_NONCE, session.server_nonce),
        (H_SIGNATURE, signature.hex()),
        (H_REQUEST_ID, base64.b64encode(request_id).decode()),
    ]


def verify_response(
    identity: Identity,
    session: ClientSession,
    request_id: bytes,
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
) -> None:
    """Check a server's signed answer to our request ``request_id`` (invariants 3 and 4).

    Raises:
        RemoteProtocolError: ``unauthenticated`` (no auth headers: the server did not sign), ``bad_identity_key``
            (another server), ``nonce_mismatch``, ``bad_request_id`` or ``bad_signature``.
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    got = {k.lower(): v for k, v in pairs}
    if not all(got.get(h, "").strip() for h in (H_VERSION, H_IDENTITY, H_SIGNATURE)):
        _refuse("unauthenticated", f"the HTTP {status} answer lacks the BSV auth headers")
    if got[H_VERSION] != AUTH_VERSION:
        _refuse("bad_version", f"unsupported auth version {got[H_VERSION]!r:.20}")
    if _identity_key(got[H_IDENTITY]) != session.server_key:
        _refuse("bad_identity_key", "the answer is signed by another identity than the session's")
    if got.get(H_YOUR_NONCE) != session.nonce:
        _refuse("nonce_mismatch", "the answer names another session")
    echoed = got.get(H_REQUEST_ID)
    try:
        if echoed is None or _b64decode(echoed) != request_id:
            _refuse("bad_request_id", "the answer is for another request")
    except (binascii.Error, ValueError):
        _refuse("bad_request_id", "the answer's request id is not base64")
    nonce = got.get(H_NONCE, "")
    signature_hex = got[H_SIGNATURE]
    if _HEX.fullmatch(signature_hex) is None or len(signature_hex) > 2 * _MAX_SIGNATURE:
        _refuse("bad_signature", "the answer's signature is not hex")
    signature = bytes.fromhex(signature_hex)
    signed = signed_response_headers(pairs)
    key_id = f"{nonce} {session.nonce}"
    for minus_one in (False, True) if not body else (False,):
        payload = response_payload(request_id, status, signed, body, empty_as_minus_one=minus_one)
        if _verify(identity, payload, signature, key_id, session.server_key):
            return
    _refuse("bad_signature", f"Invalid signature in the answer from {session.server_key}")


# -- the server's sessions ------------------------------------------------------------------------------------


@dataclass(slots=True)
class AuthSession:
    """One client session of the server (invariant 5)."""

    nonce: str  # ours: what the client sends as x-bsv-auth-your-nonce
    peer_nonce: str  # the client's: what we answer as x-bsv-auth-your-nonce
    peer_key: str  # the identity the client claimed (proven by its first verified request)
    created: float
    last_used: float
    proven: bool = False
    requests: int = 0


class SessionTable:
    """The server's sessions, bounded, with idle expiry and the replay set (invariants 5 and 6).

    ``now`` is any monotonic clock in seconds.
    """

    def __init__(self, *, max_sessions: int, ttl: float, max_seen: int) -> None:
        if max_sessions < 1 or max_seen < 1 or ttl <= 0:
            raise ValueError("session table bounds must be positive")
        self.max_sessions = max_sessions
        self.ttl = ttl
        self.max_seen = max_seen
        # least recently used first; unproven sessions apart, so that they go first
        self._fresh: OrderedDict[str, AuthSession] = OrderedDict()
        self._proven: OrderedDict[str, AuthSession] = OrderedDict()
        self._seen: OrderedDict[bytes, str] = OrderedDict()  # request id -> session nonce
        self.evicted = 0
        self.expired = 0
        self.retired = 0

    def __len__(self) -> int:
        return len(self._fresh) + len(self._proven)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._fresh or nonce in self._proven

    @property
    def proven(self) -> int:
        return len(self._proven)

    @property
    def seen(self) -> int:
        return len(self._seen)

    def add(self, session: AuthSession, now: float) -> None:
        """Add a new (unproven) session, dropping expired and, beyond the bound, least recently used ones."""
        self._purge(now)
        self._fresh[session.nonce] = session
        while len(self) > self.max_sessions:
            # the oldest unproven session, unless the new one is the only one: then the oldest proven
            table = self._fresh if len(self._fresh) > 1 or not self._proven else self._proven
            table.popitem(last=False)
            self.evicted += 1

    def get(self, nonce: str, now: float) -> AuthSession | None:
        """The live session of ``nonce`` (marked used), or None (unknown, evicted or expired)."""
        table = self._proven if nonce in self._proven else self._fresh
        session = table.get(nonce)
        if session is None:
            return None
        if now - session.last_used > self.ttl:
            del table[nonce]
            self.expired += 1
            return None
        session.last_used = now
        table.move_to_end(nonce)
        return session

    def accept(self, session: AuthSession, request_id: bytes, now: float) -> bool:
        """Record a verified request of ``session``: False (nothing recorded) when ``request_id`` was seen before."""
        if request_id in self._seen:
            return False
        self._seen[request_id] = session.nonce
        session.requests += 1
        session.last_used = now
        if not session.proven:
            session.proven = True
            self._fresh.pop(session.nonce, None)
            self._proven[session.nonce] = session
        while len(self._seen) > self.max_seen:
            _, owner = self._seen.popitem(last=False)
            if self.remove(owner):
                self.retired += 1
        return True

    def remove(self, nonce: str) -> bool:
        """Drop a session; whether it was there."""
        return self._fresh.pop(nonce, None) is not None or self._proven.pop(nonce, None) is not None

    def _purge(self, now: float) -> None:
        for table in (self._fresh, self._proven):
            while table:
                oldest = next(iter(table.values()))
                if now - oldest.last_used <= self.ttl:
                    break
                table.popitem(last=False)
                self.expired += 1


# -- the server -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out: who sent it, on which session, with which request id."""

    identity_key: str
    session: AuthSession
    request_id: bytes
    request_id_text: str = field(default="")


class AuthServer:
    """The server half of BRC-104 (see the module docstring). ``now`` arguments are monotonic seconds."""

    def __init__(
        self,
        identity: Identity,
        *,
        max_sessions: int,
        session_ttl: float,
        max_seen: int,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self.identity = identity
        self.sessions = SessionTable(max_sessions=max_sessions, ttl=session_ttl, max_seen=max_seen)
        self._random = random_bytes

    # -- /.well-known/auth

    def handle_message(self, body: bytes, now: float) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """Answer a non-general message (the body of ``POST /.well-known/auth``): the JSON answer and its headers.

        Only ``initialRequest`` is served: this node requests no certificates and holds none to show.

        Raises:
            RemoteProtocolError: ``bad_handshake`` (not a JSON object, too large, an unsupported message type),
                ``bad_version``, ``bad_identity_key`` or ``bad_nonce``.
        """
        if len(body) > _MAX_MESSAGE:
            _refuse("bad_handshake", f"auth message larger than {_MAX_MESSAGE} bytes")
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            _refuse("bad_handshake", "the auth message is not JSON")
        if not isinstance(message, dict):
            _refuse("bad_handshake", "the auth message is not a JSON object")
        version = message.get("version")
        if version != AUTH_VERSION:
            _refuse(
                "bad_version",
                f"Invalid or unsupported message auth version! Received: {str(version)[:20]}, expected: {AUTH_VERSION}",
            )
        kind = message.get("messageType")
        if kind != "initialRequest":
            _refuse("bad_handshake", f"unsupported message type {str(kind)[:40]!r}: this server takes initialRequest")
        if not isinstance(message.get("identityKey"), str) or not message.get("initialNonce"):
            _refuse("bad_handshake", "Missing required fields in initialRequest message.")
        peer_key = _identity_key(message["identityKey"])
        peer_nonce = _peer_nonce(message["initialNonce"], "initialNonce")
        nonce = create_nonce(self.identity, head=self._random(16))
        data = _b64decode(peer_nonce) + _b64decode(nonce)
        signature = _sign(self.identity, data, f"{peer_nonce} {nonce}", peer_key)
        self.sessions.add(
            AuthSession(nonce=nonce, peer_nonce=peer_nonce, peer_key=peer_key, created=now, last_used=now), now
        )
        answer = {
            "version": AUTH_VERSION,
            "messageType": "initialResponse",
            "identityKey": self.identity.public_key_hex,
            "initialNonce": nonce,
            "yourNonce": peer_nonce,
            "requestedCertificates": _empty_certificates(),
            "signature": list(signature),
        }
        headers = [
            (H_VERSION, AUTH_VERSION),
            (H_MESSAGE_TYPE, "initialResponse"),
            (H_IDENTITY, self.identity.public_key_hex),
            (H_NONCE, nonce),
            (H_YOUR_NONCE, peer_nonce),
            (H_SIGNATURE, signature.hex()),
            (H_REQUESTED_CERTIFICATES, json.dumps(_empty_certificates(), separators=(",", ":"))),
        ]
        return answer, headers

    # -- general messages

    def verify_request(
        self,
        headers: Mapping[str, str],
        *,
        method: str,
        path: str,
        search: str,
        signed_headers: Sequence[tuple[str, str]],
        body: bytes,
        now: float,
    ) -> Verified:
        """Check a request that carries ``x-bsv-auth-request-id`` (``headers``: lower-case names, one value each;
        ``signed_headers``: :func:`signed_request_headers` of the request's headers; ``body``: the raw bytes).

        Raises:
            RemoteProtocolError: ``bad_headers`` (one missing or malformed), ``bad_version``, ``no_session`` (unknown,
                evicted or expired: the client handshakes again), ``identity_mismatch`` (another identity than the
                session's), ``bad_signature``, ``replay`` (the request id was accepted before).
        """
        request_id_text = headers.get(H_REQUEST_ID, "")
        try:
            request_id = _b64decode(request_id_text) if _BASE64.fullmatch(request_id_text) else b""
        except (binascii.Error, ValueError):
            request_id = b""
        if len(request_id) != 32:
            _refuse("bad_headers", "x-bsv-auth-request-id must be base64 of 32 bytes")
        version = headers.get(H_VERSION)
        if version != AUTH_VERSION:
            _refuse(
                "bad_version",
                f"Invalid or unsupported message auth version! Received: {str(version)[:20]}, expected: {AUTH_VERSION}",
            )
        nonce = headers.get(H_NONCE, "")
        your_nonce = headers.get(H_YOUR_NONCE, "")
        signature_hex = headers.get(H_SIGNATURE, "")
        if not 0 < len(nonce) <= _MAX_PEER_NONCE or not 0 < len(your_nonce) <= _MAX_PEER_NONCE:
            _refuse("bad_headers", "x-bsv-auth-nonce and x-bsv-auth-your-nonce are required")
        if _HEX.fullmatch(signature_hex) is None or len(signature_hex) > 2 * _MAX_SIGNATURE:
            _refuse("bad_headers", "x-bsv-auth-signature must be a hex DER signature")
        try:
            claimed = parse_public_key(headers.get(H_IDENTITY, "")).format(compressed=True).hex()
        except BadRequest:
            _refuse("bad_headers", "x-bsv-auth-identity-key must be a compressed public key")
        session = self.sessions.get(your_nonce, now)
        if session is None:
            _refuse("no_session", f"Session not found for nonce: {your_nonce[:64]}")
        if claimed != session.peer_key:
            _refuse("identity_mismatch", f"the session of nonce {your_nonce[:16]}… belongs to another identity")
        payload = request_payload(request_id, method, path, search, signed_headers, body)
        if not _verify(self.identity, payload, bytes.fromhex(signature_hex), f"{nonce} {session.nonce}", claimed):
            _refuse("bad_signature", f"Invalid signature in generalMessage from {claimed}")
        if not self.sessions.accept(session, request_id, now):
            _refuse("replay", f"Replayed request: request id {request_id_text[:44]} was already used")
        return Verified(
            identity_key=claimed,
            session=session,
            request_id=request_id,
            request_id_text=base64.b64encode(request_id).decode(),
        )

    def sign_response(
        self, verified: Verified, status: int, headers: Iterable[tuple[str, str]], body: bytes
    ) -> list[tuple[str, str]]:
        """The ``x-bsv-auth-*`` headers that sign an answer to ``verified`` (invariants 3 and 4); ``headers`` are
        every header of the answer (only the signed ones count)."""
        nonce = base64.b64encode(self._random(32)).decode()
        session = verified.session
        payload = response_payload(verified.request_id, status, signed_response_headers(headers), body)
        signature = _sign(self.identity, payload, f"{nonce} {session.peer_nonce}", session.peer_key)
        return [
            (H_VERSION, AUTH_VERSION),
            (H_IDENTITY, self.identity.public_key_hex),
            (H_NONCE, nonce),
            (H_YOUR_NONCE, session.peer_nonce),
            (H_SIGNATURE, signature.hex()),
            (H_REQUEST_ID, verified.request_id_text),
        ]
