"""The BRC-103 mutual-authentication handshake of a peer link, sans-IO.

Invariants:

1. Two JSON text messages, field names as BRC-103 (ts-sdk ``AuthMessage``): the initiator A sends
   ``initialRequest {version "0.1", messageType, identityKey, initialNonce, requestedCertificates}`` (unsigned); the
   responder B answers ``initialResponse {version, messageType, identityKey, initialNonce, yourNonce,
   requestedCertificates, signature}``.
2. Nonces are 48 bytes: 16 random bytes followed by ``HMAC`` of them under ``[2, "server hmac"]``, key id = the
   16 bytes read as Latin-1 text, counterparty ``self``; written as base64 without padding (64 characters). Only a
   nonce's creator verifies it (:func:`verify_nonce`), so the key-id text encoding is a local choice.
3. B signs ``b64dec(nA) || b64dec(nB)`` with BRC-3 under ``[2, "auth message signature"]``, key id ``"nA nB"``,
   counterparty A. A checks that ``yourNonce`` is its own nonce (equal and HMAC-valid), then the signature with
   counterparty B. Only B signs: A proves its key later, with its first MAC'd frame (see ``session.py``).
4. Every field is checked for presence, type and length; each failure raises
   :class:`~overlay_node.errors.RemoteProtocolError` with a distinct ``reason``: ``bad_handshake`` (not JSON,
   wrong shape or messageType), ``bad_version``, ``bad_identity_key``, ``bad_nonce``, ``nonce_mismatch``,
   ``bad_signature``, ``unexpected_identity`` (the dialer expected another key), ``self_link`` (our own key).

Theory of operation: the initiator builds :class:`HandshakeInitiator`, sends
:meth:`~HandshakeInitiator.initial_request`, and feeds the answer to :meth:`~HandshakeInitiator.receive_response`;
the responder feeds the request to :meth:`HandshakeResponder.receive_request`, which returns the response text.
Both end with a :class:`HandshakeResult` from which the session derives its keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NoReturn

from overlay_node.crypto import brc42
from overlay_node.crypto.keys import Identity, parse_public_key
from overlay_node.errors import BadRequest, LocalProtocolError, RemoteProtocolError

__all__ = [
    "AUTH_VERSION",
    "MAX_HANDSHAKE_MESSAGE",
    "NONCE_BYTES",
    "NONCE_PROTOCOL",
    "SIGNATURE_PROTOCOL",
    "HandshakeInitiator",
    "HandshakeResponder",
    "HandshakeResult",
    "InitialRequest",
    "InitialResponse",
    "RandomBytes",
    "create_nonce",
    "decode_nonce",
    "signature_payload",
    "verify_nonce",
]

AUTH_VERSION: Final = "0.1"
NONCE_BYTES: Final = 48
NONCE_TEXT_LEN: Final = 64
NONCE_PROTOCOL: Final = (2, "server hmac")
SIGNATURE_PROTOCOL: Final = (2, "auth message signature")
#: the largest handshake message we parse (certificate requests included)
MAX_HANDSHAKE_MESSAGE: Final = 16 * 1024
_MAX_CERT_ITEMS: Final = 64
_MAX_SIGNATURE_LEN: Final = 80

RandomBytes = Callable[[int], bytes]


def _fail(reason: str, message: str) -> NoReturn:
    raise RemoteProtocolError(message, reason=reason)


# -- nonces ---------------------------------------------------------------------------------------------------


def create_nonce(identity: Identity, random_bytes: RandomBytes = os.urandom) -> str:
    """A fresh 48-byte BRC-103 session nonce (16 random bytes + HMAC), base64 without padding."""
    head = random_bytes(16)
    mac = brc42.create_hmac(identity, head, protocol=NONCE_PROTOCOL, key_id=head.decode("latin-1"))
    return base64.b64encode(head + mac).decode("ascii")


def decode_nonce(text: object) -> bytes:
    """The 48 bytes of a nonce in canonical form (64 base64 characters, no padding).

    Raises:
        RemoteProtocolError: reason ``bad_nonce``.
    """
    if type(text) is not str or len(text) != NONCE_TEXT_LEN:
        _fail("bad_nonce", f"nonce must be {NONCE_TEXT_LEN} base64 characters")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        _fail("bad_nonce", "nonce is not base64")
    if len(raw) != NONCE_BYTES:  # pragma: no cover - 64 valid base64 characters without padding are 48 bytes
        _fail("bad_nonce", f"nonce must be {NONCE_BYTES} bytes")
    return raw


def verify_nonce(identity: Identity, text: str) -> bool:
    """Whether ``text`` is a nonce that ``identity`` created (its HMAC checks out)."""
    try:
        raw = decode_nonce(text)
    except RemoteProtocolError:
        return False
    head, mac = raw[:16], raw[16:]
    return brc42.verify_hmac(identity, head, mac, protocol=NONCE_PROTOCOL, key_id=head.decode("latin-1"))


def signature_payload(initiator_nonce: str, responder_nonce: str) -> tuple[bytes, str]:
    """The data and key id of the responder's signature: ``b64dec(nA) || b64dec(nB)`` and ``"nA nB"``."""
    return decode_nonce(initiator_nonce) + decode_nonce(responder_nonce), f"{initiator_nonce} {responder_nonce}"


# -- messages -------------------------------------------------------------------------------------------------


def _empty_certificates() -> dict[str, Any]:
    return {"certifiers": [], "types": {}}


def _parse_json(message: str | bytes, expected_type: str) -> dict[str, Any]:
    if not isinstance(message, str):
        _fail("bad_handshake", f"expected the {expected_type} as a JSON text message, got binary data")
    if len(message) > MAX_HANDSHAKE_MESSAGE:
        _fail("bad_handshake", f"{expected_type} larger than {MAX_HANDSHAKE_MESSAGE} characters")
    try:
        obj = json.loads(message)
    except (ValueError, RecursionError):
        _fail("bad_handshake", f"{expected_type} is not valid JSON")
    if type(obj) is not dict:
        _fail("bad_handshake", f"{expected_type} must be a JSON object")
    if "version" not in obj:
        _fail("bad_handshake", f"{expected_type} lacks version")
    if obj["version"] != AUTH_VERSION:
        _fail("bad_version", f"unsupported auth version {obj['version']!r:.20} (expected {AUTH_VERSION!r})")
    if obj.get("messageType") != expected_type:
        _fail("bad_handshake", f"expected messageType {expected_type!r}, got {obj.get('messageType')!r:.40}")
    return obj


def _identity_key(obj: dict[str, Any]) -> str:
    key = obj.get("identityKey")
    if type(key) is not str:
        _fail("bad_identity_key", "identityKey missing or not text")
    try:
        return parse_public_key(key).format(compressed=True).hex()
    except BadRequest as exc:
        _fail("bad_identity_key", f"identityKey: {exc}")


def _certificates(obj: dict[str, Any]) -> dict[str, Any]:
    """``requestedCertificates``: optional; if present ``{certifiers: [str], types: {str: [str]}}``."""
    value = obj.get("requestedCertificates")
    if value is None:
        return _empty_certificates()
    ok = (
        type(value) is dict
        and type(value.get("certifiers", [])) is list
        and type(value.get("types", {})) is dict
        and len(value.get("certifiers", [])) <= _MAX_CERT_ITEMS
        and len(value.get("types", {})) <= _MAX_CERT_ITEMS
        and all(type(c) is str for c in value.get("certifiers", []))
        and all(
            type(fields) is list and all(type(f) is str for f in fields) for fields in value.get("types", {}).values()
        )
    )
    if not ok:
        _fail("bad_handshake", "requestedCertificates must be {certifiers: [text], types: {text: [text]}}")
    return {"certifiers": list(value.get("certifiers", [])), "types": dict(value.get("types", {}))}


@dataclass(frozen=True, slots=True, kw_only=True)
class InitialRequest:
    """BRC-103 ``initialRequest`` (sent by the initiator, not signed)."""

    identity_key: str
    initial_nonce: str
    requested_certificates: dict[str, Any] = field(default_factory=_empty_certificates)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": AUTH_VERSION,
                "messageType": "initialRequest",
                "identityKey": self.identity_key,
                "initialNonce": self.initial_nonce,
                "requestedCertificates": self.requested_certificates,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, message: str | bytes) -> InitialRequest:
        """Parse and validate. Raises RemoteProtocolError (see the module's reasons)."""
        obj = _parse_json(message, "initialRequest")
        key = _identity_key(obj)
        nonce = obj.get("initialNonce")
        decode_nonce(nonce)
        assert isinstance(nonce, str)
        return cls(identity_key=key, initial_nonce=nonce, requested_certificates=_certificates(obj))


@dataclass(frozen=True, slots=True, kw_only=True)
class InitialResponse:
    """BRC-103 ``initialResponse`` (sent by the responder, signed over both nonces)."""

    identity_key: str
    initial_nonce: str
    your_nonce: str
    signature: bytes
    requested_certificates: dict[str, Any] = field(default_factory=_empty_certificates)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": AUTH_VERSION,
                "messageType": "initialResponse",
                "identityKey": self.identity_key,
                "initialNonce": self.initial_nonce,
                "yourNonce": self.your_nonce,
                "requestedCertificates": self.requested_certificates,
                "signature": list(self.signature),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, message: str | bytes) -> InitialResponse:
        """Parse and validate the shape (not the signature). Raises RemoteProtocolError."""
        obj = _parse_json(message, "initialResponse")
        key = _identity_key(obj)
        nonce, your_nonce = obj.get("initialNonce"), obj.get("yourNonce")
        decode_nonce(nonce)
        decode_nonce(your_nonce)
        assert isinstance(nonce, str)
        assert isinstance(your_nonce, str)
        sig = obj.get("signature")
        if (
            type(sig) is not list
            or not 0 < len(sig) <= _MAX_SIGNATURE_LEN
            or not all(type(b) is int and 0 <= b <= 255 for b in sig)
        ):
            _fail("bad_handshake", "signature must be an array of byte values")
        return cls(
            identity_key=key,
            initial_nonce=nonce,
            your_nonce=your_nonce,
            signature=bytes(sig),
            requested_certificates=_certificates(obj),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeResult:
    """What both sides know once the handshake messages are checked."""

    role: Literal["initiator", "responder"]
    local_key: bytes
    peer_key: bytes
    initiator_nonce: bytes
    responder_nonce: bytes

    @property
    def peer_key_hex(self) -> str:
        return self.peer_key.hex()

    @property
    def initiator_key(self) -> bytes:
        return self.local_key if self.role == "initiator" else self.peer_key

    @property
    def responder_key(self) -> bytes:
        return self.peer_key if self.role == "initiator" else self.local_key


# -- the two roles --------------------------------------------------------------------------------------------


class HandshakeInitiator:
    """The dialing side: sends ``initialRequest``, checks ``initialResponse``."""

    def __init__(
        self, identity: Identity, *, expect_key: str | None = None, random_bytes: RandomBytes = os.urandom
    ) -> None:
        self._identity = identity
        self._expect = None if expect_key is None else expect_key.lower()
        self._nonce = create_nonce(identity, random_bytes)
        self._sent = False
        self._done = False

    @property
    def nonce(self) -> str:
        return self._nonce

    def initial_request(self) -> str:
        """The ``initialRequest`` JSON text (call once)."""
        if self._sent:
            raise LocalProtocolError("initialRequest already sent", reason="handshake_state")
        self._sent = True
        return InitialRequest(identity_key=self._identity.public_key_hex, initial_nonce=self._nonce).to_json()

    def receive_response(self, message: str | bytes) -> HandshakeResult:
        """Check the responder's answer.

        Raises:
            RemoteProtocolError: ``bad_handshake``, ``bad_version``, ``bad_identity_key``, ``bad_nonce``,
                ``nonce_mismatch``, ``bad_signature``, ``unexpected_identity`` or ``self_link``.
        """
        if not self._sent or self._done:
            raise LocalProtocolError("no initialResponse expected now", reason="handshake_state")
        self._done = True
        response = InitialResponse.from_json(message)
        if response.your_nonce != self._nonce or not verify_nonce(self._identity, response.your_nonce):
            _fail("nonce_mismatch", "initialResponse does not answer our nonce")
        if response.identity_key == self._identity.public_key_hex:
            _fail("self_link", "the peer uses our own identity key")
        data, key_id = signature_payload(self._nonce, response.initial_nonce)
        valid = brc42.verify_signature(
            self._identity,
            data,
            response.signature,
            protocol=SIGNATURE_PROTOCOL,
            key_id=key_id,
            counterparty=response.identity_key,
        )
        if not valid:
            _fail("bad_signature", "initialResponse signature does not verify")
        if self._expect is not None and response.identity_key != self._expect:
            _fail("unexpected_identity", f"expected peer {self._expect[:16]}, got {response.identity_key[:16]}")
        return HandshakeResult(
            role="initiator",
            local_key=self._identity.public_key,
            peer_key=bytes.fromhex(response.identity_key),
            initiator_nonce=decode_nonce(self._nonce),
            responder_nonce=decode_nonce(response.initial_nonce),
        )


class HandshakeResponder:
    """The accepting side: checks ``initialRequest`` and produces the signed ``initialResponse``."""

    def __init__(self, identity: Identity, *, random_bytes: RandomBytes = os.urandom) -> None:
        self._identity = identity
        self._random_bytes = random_bytes
        self._done = False

    def receive_request(self, message: str | bytes) -> tuple[str, HandshakeResult]:
        """Check the initiator's request; return the ``initialResponse`` JSON text and the result.

        Raises:
            RemoteProtocolError: ``bad_handshake``, ``bad_version``, ``bad_identity_key``, ``bad_nonce`` or
                ``self_link``.
        """
        if self._done:
            raise LocalProtocolError("initialRequest already handled", reason="handshake_state")
        self._done = True
        request = InitialRequest.from_json(message)
        if request.identity_key == self._identity.public_key_hex:
            _fail("self_link", "the peer uses our own identity key")
        nonce = create_nonce(self._identity, self._random_bytes)
        data, key_id = signature_payload(request.initial_nonce, nonce)
        signature = brc42.create_signature(
            self._identity, data, protocol=SIGNATURE_PROTOCOL, key_id=key_id, counterparty=request.identity_key
        )
        response = InitialResponse(
            identity_key=self._identity.public_key_hex,
            initial_nonce=nonce,
            your_nonce=request.initial_nonce,
            signature=signature,
        )
        result = HandshakeResult(
            role="responder",
            local_key=self._identity.public_key,
            peer_key=bytes.fromhex(request.identity_key),
            initiator_nonce=decode_nonce(request.initial_nonce),
            responder_nonce=decode_nonce(nonce),
        )
        return response.to_json(), result
