"""BRC-105 (HTTP 402 payments over BRC-104), sans-IO: headers, derivation prefixes, the ``x-bsv-payment`` header and
the reference middleware's answers.

Invariants:

1. A priced request without ``x-bsv-payment`` is answered ``402`` with ``x-bsv-payment-version: 1.0``,
   ``x-bsv-payment-satoshis-required`` and ``x-bsv-payment-derivation-prefix``, and the reference's JSON body
   (``ERR_PAYMENT_REQUIRED``). BRC-105 runs after BRC-104: the payer is the request's authenticated identity, and the
   402 is signed like any authenticated answer (so ``x-bsv-auth-identity-key`` names the payee).
2. A derivation prefix is a 48-byte nonce (``http_auth.create_nonce``) whose head is its issue time in milliseconds
   (8 bytes, big-endian) and 8 random bytes, HMAC'd with counterparty = the payer: only this node can make one, it
   is bound to the payer it was issued to, and its age is known without keeping any state (so it survives a
   restart and cannot be used after ``ttl``).
3. The retry's ``x-bsv-payment`` is ``{"derivationPrefix", "derivationSuffix", "transaction": base64 AtomicBEEF}``;
   it is checked in the reference's order: JSON and fields (``ERR_MALFORMED_PAYMENT``), then the prefix
   (``ERR_INVALID_DERIVATION_PREFIX``), then the payment itself (``ERR_PAYMENT_FAILED`` with the reason), each a
   ``400`` with ``{"status": "error", "code", "description"}``. The payee's checks are those of peer-link payments
   (``services/payments.py``); a prefix pays for one request (its quote id is derived from it, and the store keeps
   prefixes unique).
4. An accepted payment's answer carries ``x-bsv-payment-satoshis-paid`` (the price, as the reference does).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from overlay_node.crypto.keys import Identity
from overlay_node.errors import (
    InvalidDerivationPrefix,
    MalformedPayment,
    OverlayError,
    PaymentReplayed,
    QuoteExpired,
    RemoteProtocolError,
)
from overlay_node.protocol.http_auth import create_nonce, verify_nonce

__all__ = [
    "ERR_INVALID_DERIVATION_PREFIX",
    "ERR_MALFORMED_PAYMENT",
    "ERR_PAYMENT_FAILED",
    "ERR_PAYMENT_REQUIRED",
    "H_PAID",
    "H_PAYMENT",
    "H_PREFIX",
    "H_REQUIRED",
    "H_VERSION",
    "PAYMENT_VERSION",
    "HttpPayment",
    "PaymentRequest",
    "check_prefix",
    "issue_prefix",
    "parse_payment_header",
    "parse_payment_required",
    "payment_header",
    "payment_quote_id",
    "refusal",
    "refusal_code",
    "required_body",
]

PAYMENT_VERSION: Final = "1.0"
H_VERSION: Final = "x-bsv-payment-version"
H_REQUIRED: Final = "x-bsv-payment-satoshis-required"
H_PREFIX: Final = "x-bsv-payment-derivation-prefix"
H_PAYMENT: Final = "x-bsv-payment"
H_PAID: Final = "x-bsv-payment-satoshis-paid"

ERR_PAYMENT_REQUIRED: Final = "ERR_PAYMENT_REQUIRED"
ERR_MALFORMED_PAYMENT: Final = "ERR_MALFORMED_PAYMENT"
ERR_INVALID_DERIVATION_PREFIX: Final = "ERR_INVALID_DERIVATION_PREFIX"
ERR_PAYMENT_FAILED: Final = "ERR_PAYMENT_FAILED"

_SUFFIX = re.compile(r"^[A-Za-z0-9+/=_-]{4,64}$")
_MAX_HEADER_JSON: Final = 4 * 1024 * 1024


# -- prefixes -------------------------------------------------------------------------------------------------


def issue_prefix(identity: Identity, payer: str, now_ms: int, *, random8: bytes | None = None) -> str:
    """A fresh derivation prefix for ``payer`` (invariant 2)."""
    head = now_ms.to_bytes(8, "big") + (os.urandom(8) if random8 is None else random8)
    return create_nonce(identity, counterparty=payer, head=head)


def check_prefix(identity: Identity, payer: str, prefix: object, now_ms: int, ttl_ms: int) -> int:
    """The issue time (ms) of a prefix this node issued to ``payer`` less than ``ttl_ms`` ago.

    Raises:
        InvalidDerivationPrefix: not ours, issued to another payer, from the future, or too old.
    """
    head = verify_nonce(identity, prefix, counterparty=payer)
    if head is None:
        raise InvalidDerivationPrefix("the derivation prefix was not issued by this node to this identity")
    issued = int.from_bytes(head[:8], "big")
    if issued > now_ms + 60_000 or now_ms - issued >= ttl_ms:
        raise InvalidDerivationPrefix("the derivation prefix has expired: ask again for a new one")
    return issued


def payment_quote_id(prefix: str) -> str:
    """The quote id a BRC-105 payment is recorded under (one per prefix)."""
    return hashlib.sha256(b"brc105 " + prefix.encode()).hexdigest()[:32]


# -- the x-bsv-payment header ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpPayment:
    """A parsed ``x-bsv-payment`` header."""

    prefix: str
    suffix: str
    transaction: bytes


def parse_payment_header(text: str, *, max_bytes: int, check: Callable[[str], object] | None = None) -> HttpPayment:
    """Parse ``x-bsv-payment`` in the reference's order (invariant 3): JSON, then the prefix (``check`` it, e.g.
    with :func:`check_prefix`), then the suffix and the transaction.

    Raises:
        InvalidDerivationPrefix: no prefix (or what ``check`` raises).
        MalformedPayment: not a JSON object with the three text fields, a suffix that is not a nonce, a transaction
            that is not base64 or larger than ``max_bytes``.
    """
    if len(text) > _MAX_HEADER_JSON:
        raise MalformedPayment("The X-BSV-Payment header is too large.")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise MalformedPayment("The X-BSV-Payment header is not valid JSON.") from None
    if not isinstance(body, dict):
        raise MalformedPayment("The X-BSV-Payment header is not a JSON object.")
    prefix, suffix, tx = body.get("derivationPrefix"), body.get("derivationSuffix"), body.get("transaction")
    if not isinstance(prefix, str) or not prefix:
        raise InvalidDerivationPrefix("The X-BSV-Payment-Derivation-Prefix header is not valid.")
    if check is not None:
        check(prefix)
    if not isinstance(suffix, str) or _SUFFIX.fullmatch(suffix) is None:
        raise MalformedPayment("derivationSuffix must be 4-64 base64 characters")
    if not isinstance(tx, str) or not tx:
        raise MalformedPayment("transaction must be base64 Atomic BEEF")
    if len(tx) > (max_bytes * 4) // 3 + 4:
        raise MalformedPayment(f"the payment transaction is larger than {max_bytes} bytes")
    try:
        raw = base64.b64decode(tx, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedPayment("transaction is not base64") from None
    if not raw or len(raw) > max_bytes:
        raise MalformedPayment(f"the payment transaction must be 1-{max_bytes} bytes")
    return HttpPayment(prefix=prefix, suffix=suffix, transaction=raw)


def payment_header(prefix: str, suffix: str, transaction: bytes) -> str:
    """The ``x-bsv-payment`` header a payer sends (the field order of AuthFetch)."""
    return json.dumps(
        {
            "derivationPrefix": prefix,
            "derivationSuffix": suffix,
            "transaction": base64.b64encode(transaction).decode("ascii"),
        },
        separators=(",", ":"),
    )


# -- answers --------------------------------------------------------------------------------------------------


def required_body(price: int) -> dict[str, Any]:
    """The reference's 402 body."""
    return {
        "status": "error",
        "code": ERR_PAYMENT_REQUIRED,
        "satoshisRequired": price,
        "description": "A BSV payment is required to complete this request. Provide the X-BSV-Payment header.",
    }


def refusal_code(exc: OverlayError) -> str:
    """The BRC-105 code of a refused payment (invariant 3)."""
    if isinstance(exc, MalformedPayment):
        return ERR_MALFORMED_PAYMENT
    if isinstance(exc, InvalidDerivationPrefix | PaymentReplayed | QuoteExpired):
        return ERR_INVALID_DERIVATION_PREFIX
    return ERR_PAYMENT_FAILED


def refusal(exc: OverlayError) -> dict[str, Any]:
    """The reference's 400 body for a refused payment."""
    return {"status": "error", "code": refusal_code(exc), "description": str(exc) or "Payment failed."}


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """What a 402 asks for (client side)."""

    satoshis: int
    prefix: str


def parse_payment_required(headers: Mapping[str, str]) -> PaymentRequest:
    """Read a 402's payment headers as AuthFetch does (``headers``: lower-case names).

    Raises:
        RemoteProtocolError: ``bad_payment_request``: another version, a missing or non-positive price, no prefix.
    """
    version = headers.get(H_VERSION)
    if version != PAYMENT_VERSION:
        raise RemoteProtocolError(
            f"Unsupported x-bsv-payment-version response header. Client version: {PAYMENT_VERSION}, "
            f"Server version: {version}",
            reason="bad_payment_request",
        )
    required = headers.get(H_REQUIRED, "")
    if not (required.isascii() and required.isdigit()) or int(required) <= 0:  # str.isdigit takes "²"
        raise RemoteProtocolError(
            "Invalid or missing x-bsv-payment-satoshis-required response header.", reason="bad_payment_request"
        )
    prefix = headers.get(H_PREFIX, "")
    if not prefix or _SUFFIX.fullmatch(prefix) is None:
        raise RemoteProtocolError(
            "Missing or malformed x-bsv-payment-derivation-prefix response header.", reason="bad_payment_request"
        )
    return PaymentRequest(satoshis=int(required), prefix=prefix)
