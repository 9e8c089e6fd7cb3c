"""BRC-29 payments as data: quotes, payment messages and receipts, their canonical signing bytes, and the
checks a payee makes on a payment's output. Pure: no I/O, no clocks (callers pass wall-clock milliseconds).

Invariants (who signs what, and when a payment counts):

1. A **quote** is issued and signed by the payee (BRC-3, protocol ``(2, "overlay payment quote")``, key id =
   the quote id, counterparty ``anyone`` so that any third party can check it). It names the payer it was
   issued to, the resource, the price in satoshis, a fresh derivation prefix (a nonce of the payee) and an
   expiry.
2. A **payment** answers one quote: a transaction whose output 0 pays P2PKH of the payee's BRC-29 child key
   (protocol ``(2, "3241645161d8")``, key id ``"<derivationPrefix> <derivationSuffix>"``, counterparty = the
   payer for the payee, the payee for the payer), sent as Atomic BEEF with the prefix, the payer's suffix
   and the payer's identity key (BRC-105 field names).
3. A payment counts when the payee has checked it (prefix issued by it and unused, transaction valid with
   its ancestors, output 0 pays the derived key at least the price) and **committed it durably**, with the
   **receipt** it signs for it (protocol ``(2, "overlay payment receipt")``, key id = the quote id or the
   receipt's own ``key_id``, counterparty ``anyone``) over the quote id, txid, amount, payer, payee, resource,
   price and time; only then does the receipt leave the payee.
4. A prefix is used by at most one accepted payment: the payee keeps it unique in its store, so a replayed
   payment message is refused however it is timed.
5. A receipt may also carry ``next_quote``, the SHA-256 of the signing bytes of the quote the payee offers
   for the next payment (a stream's next window). That quote travels **unsigned** beside the receipt: the
   receipt's signature signs it, so a window costs the payee one signature, not two. Whoever holds both checks
   the quote by its digest (:meth:`Receipt.signs_quote`).

Signing bytes are the canonical CBOR of a tagged list of the fields in a fixed order, so both sides (and third
parties) compute the same bytes from the wire values.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import cbor2
from coincurve import PublicKey

from overlay_node.crypto.brc42 import ANYONE_PUBLIC_KEY, ProtocolID, brc42_tweak, invoice_number
from overlay_node.crypto.keys import (
    SECP256K1_N,
    Identity,
    ecdsa_verify_digest,
    parse_public_key,
    sign_digest,
)
from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.errors import BadRequest, InsufficientPayment, InvalidPayment

__all__ = [
    "BRC29_PROTOCOL",
    "MAX_SATOSHIS",
    "QUOTE_PROTOCOL",
    "RECEIPT_PROTOCOL",
    "WALLET_PROTOCOL",
    "PaymentMessage",
    "Quote",
    "Receipt",
    "brc29_invoice",
    "check_amount",
    "check_key_id",
    "check_payment_output",
    "check_resource",
    "child_secret",
    "new_nonce",
    "new_quote_id",
    "own_child_key",
    "own_child_public",
    "payee_locking_script",
    "payer_locking_script",
    "their_child_public",
]

#: BRC-29's protocol id: the payment key is derived with it
BRC29_PROTOCOL: Final[ProtocolID] = (2, "3241645161d8")
#: BRC-3 signatures over quotes and receipts
QUOTE_PROTOCOL: Final[ProtocolID] = (2, "overlay payment quote")
RECEIPT_PROTOCOL: Final[ProtocolID] = (2, "overlay payment receipt")
#: the wallet's own keys (faucet deposits, change): self-derived with this protocol
WALLET_PROTOCOL: Final[ProtocolID] = (2, "overlay node wallet")
#: every satoshi there will ever be
MAX_SATOSHIS: Final = 21_000_000 * 100_000_000

_QUOTE_TAG: Final = "overlay-node/quote/1"
_RECEIPT_TAG: Final = "overlay-node/receipt/1"
_NONCE = re.compile(r"^[A-Za-z0-9+/=_-]{4,64}$")
_QUOTE_ID = re.compile(r"^[0-9a-f]{32}$")
_PUBKEY_HEX = re.compile(r"^0[23][0-9a-f]{64}$")
_TXID = re.compile(r"^[0-9a-f]{64}$")
_MAX_RESOURCE = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_MS = 2**53

#: the identity whose private key is 1: BRC-3 "anyone" signatures are checked with it
_ANYONE = Identity.from_private_bytes((1).to_bytes(32, "big"))
#: parsed public keys by their 33 bytes (payers and payees come back again and again)
_PUBKEYS: dict[bytes, PublicKey] = {}
_PUBKEY_CACHE = 4096
#: BRC-3 child keys by (our public key, invoice) and signers' derived public keys by (signer, invoice)
_SECRETS: dict[tuple[bytes, str], bytes] = {}
_SIGNERS: dict[tuple[str, str], PublicKey] = {}
_KEY_CACHE = 1024


# -- BRC-42 on the hot path ----------------------------------------------------------------------------------
# The same derivations as crypto/brc42.py (the tests hold them equal), shaped for a payment per packet: the
# counterparty key is parsed once and cached, a child private key is computed as an integer (no key object, no
# public key computed for nothing), and each child public key costs one point addition.


def _raw_key(key: str | bytes) -> bytes:
    if isinstance(key, bytes):
        return key
    try:
        return bytes.fromhex(key)
    except ValueError:
        raise BadRequest("public key is not hex") from None


def _canonical_key(key: str | bytes) -> str:
    """A public key's lower-case hex, checked to be a point (through the parse cache: a producer issues a quote
    to the same subscriber per packet).

    Raises:
        BadRequest: not hex, or not a compressed point.
    """
    raw = _raw_key(key)
    _pub(raw)
    return raw.hex()


def _pub(raw: bytes) -> PublicKey:
    key = _PUBKEYS.get(raw)
    if key is None:
        key = parse_public_key(raw)
        if len(_PUBKEYS) >= _PUBKEY_CACHE:
            _PUBKEYS.clear()
        _PUBKEYS[raw] = key
    return key


def child_secret(identity: Identity, counterparty: str | bytes, invoice: str) -> bytes:
    """Our BRC-42 child private key (32 bytes) for ``invoice`` with ``counterparty``.

    Raises:
        BadRequest: ``counterparty`` is not a valid public key.
    """
    tweak = brc42_tweak(identity.shared_secret(_raw_key(counterparty)), invoice)
    root = int.from_bytes(identity.private_bytes, "big")
    return ((root + int.from_bytes(tweak, "big")) % SECP256K1_N).to_bytes(32, "big")


def own_child_public(identity: Identity, counterparty: str | bytes, invoice: str) -> bytes:
    """Our BRC-42 child public key (33 bytes): what ``counterparty`` pays us to, or we sign with."""
    tweak = brc42_tweak(identity.shared_secret(_raw_key(counterparty)), invoice)
    return bytes(_pub(identity.public_key).add(tweak).format(compressed=True))


def own_child_key(identity: Identity, counterparty: str | bytes, invoice: str) -> tuple[bytes, bytes]:
    """Our BRC-42 child private key and its public key (the same key as :func:`own_child_public`, computed from
    the private side: for a key we will also sign with, one EC multiplication gives both)."""
    secret = child_secret(identity, counterparty, invoice)
    return secret, bytes(PublicKey.from_valid_secret(secret).format(compressed=True))


def their_child_public(identity: Identity, counterparty: str | bytes, invoice: str) -> bytes:
    """``counterparty``'s BRC-42 child public key (33 bytes) as we compute it."""
    raw = _raw_key(counterparty)
    tweak = brc42_tweak(identity.shared_secret(raw), invoice)
    return bytes(_pub(raw).add(tweak).format(compressed=True))


def _invoice(protocol: ProtocolID, key_id: str) -> str:
    # our protocol ids are constants in normal form and key ids are quote ids (hex): no re-validation needed
    return f"{protocol[0]}-{protocol[1]}-{key_id}"


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _KEY_CACHE:
        cache.clear()
    cache[key] = value


def _sign_for_anyone(identity: Identity, protocol: ProtocolID, key_id: str, data: bytes) -> bytes:
    """A BRC-3 signature (counterparty ``anyone``): DER ECDSA over SHA-256(data) with our child key (remembered
    per key id: a stream's receipts all use one)."""
    invoice = _invoice(protocol, key_id)
    secret = _SECRETS.get((identity.public_key, invoice))
    if secret is None:
        secret = child_secret(identity, ANYONE_PUBLIC_KEY, invoice)
        _remember(_SECRETS, (identity.public_key, invoice), secret)
    return sign_digest(secret, hashlib.sha256(data).digest())


def _verify_from(signer: str, protocol: ProtocolID, key_id: str, data: bytes, sig: bytes) -> bool:
    """Check a BRC-3 ``anyone`` signature made by ``signer`` (hex public key; the derived key is remembered per
    signer and key id)."""
    invoice = _invoice(protocol, key_id)
    pub = _SIGNERS.get((signer, invoice))
    if pub is None:
        try:
            raw = _raw_key(signer)
            tweak = brc42_tweak(_ANYONE.shared_secret(raw), invoice)
            pub = _pub(raw).add(tweak)
        except (BadRequest, ValueError):
            return False
        _remember(_SIGNERS, (signer, invoice), pub)
    return ecdsa_verify_digest(pub, sig, hashlib.sha256(data).digest())


def new_nonce() -> str:
    """A fresh derivation prefix or suffix: base64 of 16 random bytes."""
    return base64.b64encode(secrets.token_bytes(16)).decode("ascii")


def new_quote_id() -> str:
    """A fresh quote id: 32 lower-case hex characters."""
    return secrets.token_hex(16)


def brc29_invoice(prefix: str, suffix: str) -> str:
    """The BRC-43 invoice number of a BRC-29 payment key: ``"2-3241645161d8-<prefix> <suffix>"``.

    Raises:
        BadRequest: a prefix or suffix that is not a nonce (4-64 base64 characters).
    """
    _nonce(prefix, "derivation prefix")
    _nonce(suffix, "derivation suffix")
    return invoice_number(BRC29_PROTOCOL, f"{prefix} {suffix}")


def payer_locking_script(payer: Identity, payee: str | bytes, prefix: str, suffix: str) -> bytes:
    """The script output 0 of a payment locks to, computed by the payer (the payee's child public key)."""
    return p2pkh_for_key(their_child_public(payer, payee, brc29_invoice(prefix, suffix)))


def payee_locking_script(payee: Identity, payer: str | bytes, prefix: str, suffix: str) -> bytes:
    """The same script, computed by the payee from its own child private key (output 0 must match it)."""
    return p2pkh_for_key(own_child_public(payee, payer, brc29_invoice(prefix, suffix)))


def check_payment_output(script: bytes, satoshis: int, *, expected_script: bytes, price: int) -> None:
    """Check that output 0 of a payment pays the derived key at least the price.

    Raises:
        InvalidPayment: output 0 is locked to another script (wrong key, wrong prefix or suffix, wrong payer).
        InsufficientPayment: it pays less than ``price``.
    """
    if script != expected_script:
        raise InvalidPayment(
            "output 0 does not pay the key derived for this quote's prefix, the given suffix and the payer "
            "(BRC-29 protocol 3241645161d8)"
        )
    if satoshis < price:
        raise InsufficientPayment(f"output 0 pays {satoshis} satoshis, the quoted price is {price}")


# -- field checks --------------------------------------------------------------------------------------------


def _nonce(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NONCE.match(value):
        raise BadRequest(f"{what} must be 4-64 base64 characters")
    return value


def _str(body: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise BadRequest(f"{what} ({key!r}) is missing or malformed")
    return value


def _key(body: dict[str, Any], key: str) -> str:
    # the form only: the curve point is checked where the key is used (every use parses it)
    value = body.get(key)
    if not isinstance(value, str) or not _PUBKEY_HEX.match(value):
        raise BadRequest(f"{key!r} must be a compressed public key in lower-case hex")
    return value


def _int(body: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{key!r} must be an integer in [{lo}, {hi}]")
    return value


def _digest(body: dict[str, Any], key: str) -> bytes:
    # optional: absent is empty
    value = body.get(key, b"")
    if not isinstance(value, bytes) or len(value) not in (0, 32):
        raise BadRequest(f"{key!r} must be a 32-byte digest")
    return value


def _sig(body: dict[str, Any]) -> bytes:
    value = body.get("sig")
    if not isinstance(value, bytes) or not 8 <= len(value) <= 73:
        raise BadRequest("'sig' must be a DER signature (bytes)")
    return value


def check_resource(resource: object) -> str:
    """A resource id: 1-512 characters without control characters.

    Raises:
        BadRequest: otherwise.
    """
    return _printable(resource, "resource")


def check_key_id(key_id: object) -> str:
    """A BRC-3 key id we sign with: the rule of a resource id (BRC-43 allows up to 800 characters).

    Raises:
        BadRequest: otherwise.
    """
    return _printable(key_id, "key id")


def _printable(value: object, what: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_RESOURCE or _CONTROL.search(value):
        raise BadRequest(f"{what} must be 1-{_MAX_RESOURCE} printable characters")
    return value


def check_amount(amount: object, what: str = "amount") -> int:
    """A payment amount in satoshis (1 to every satoshi there is).

    Raises:
        BadRequest: otherwise.
    """
    if not isinstance(amount, int) or isinstance(amount, bool) or not 1 <= amount <= MAX_SATOSHIS:
        raise BadRequest(f"{what} must be an integer number of satoshis in [1, {MAX_SATOSHIS}]")
    return amount


# -- quotes --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    """A payee's signed offer: pay ``amount`` satoshis for ``resource`` with derivation prefix ``prefix``
    before ``expires_ms`` (wall-clock milliseconds). See the module invariants."""

    quote_id: str
    payee: str
    payer: str
    resource: str
    amount: int
    prefix: str
    created_ms: int
    expires_ms: int
    sig: bytes = b""  # empty: unsigned, vouched for by the receipt that names its digest (invariant 5)

    def signing_bytes(self) -> bytes:
        """The canonical bytes the payee signs."""
        fields = [
            _QUOTE_TAG,
            self.quote_id,
            self.payee,
            self.payer,
            self.resource,
            self.amount,
            self.prefix,
            self.created_ms,
            self.expires_ms,
        ]
        return cbor2.dumps(fields, canonical=True)

    @classmethod
    def issue(
        cls,
        payee: Identity,
        *,
        payer: str,
        resource: str,
        amount: int,
        now_ms: int,
        ttl_ms: int,
        quote_id: str | None = None,
        prefix: str | None = None,
        signed: bool = True,
    ) -> Quote:
        """A new quote signed by ``payee`` (fresh id and prefix unless given). ``signed=False``: without a
        signature, for a quote that a receipt will sign by its digest (invariant 5).

        Raises:
            BadRequest: a field out of range.
        """
        unsigned = cls(
            quote_id=quote_id or new_quote_id(),
            payee=payee.public_key_hex,
            payer=_canonical_key(payer),
            resource=check_resource(resource),
            amount=check_amount(amount, "price"),
            prefix=_nonce(prefix or new_nonce(), "derivation prefix"),
            created_ms=now_ms,
            expires_ms=now_ms + ttl_ms,
        )
        if not signed:
            return unsigned
        sig = _sign_for_anyone(payee, QUOTE_PROTOCOL, unsigned.quote_id, unsigned.signing_bytes())
        return cls(**{**unsigned.as_fields(), "sig": sig})

    def verify(self) -> bool:
        """Whether ``sig`` is the payee's signature over this quote."""
        return bool(self.sig) and _verify_from(
            self.payee, QUOTE_PROTOCOL, self.quote_id, self.signing_bytes(), self.sig
        )

    def digest(self) -> bytes:
        """SHA-256 of the signing bytes: what a receipt names as its ``next_quote``."""
        return hashlib.sha256(self.signing_bytes()).digest()

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_ms

    def as_fields(self) -> dict[str, Any]:
        return {
            "quote_id": self.quote_id,
            "payee": self.payee,
            "payer": self.payer,
            "resource": self.resource,
            "amount": self.amount,
            "prefix": self.prefix,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
        }

    def to_wire(self) -> dict[str, Any]:
        """The CBOR map sent over a peer link (no ``sig`` when unsigned)."""
        fields = self.as_fields()
        if self.sig:
            fields["sig"] = self.sig
        return fields

    def as_json(self) -> dict[str, Any]:
        """For the control API: the fields, the signature in hex."""
        return {**self.as_fields(), "sig": self.sig.hex()}

    @classmethod
    def from_wire(cls, body: object, *, signed: bool = True) -> Quote:
        """Parse a quote (signature not checked: call :meth:`verify`). ``signed=False`` also takes a quote
        without ``sig`` (one that comes with the receipt that signs it).

        Raises:
            BadRequest: a missing or malformed field.
        """
        if not isinstance(body, dict):
            raise BadRequest("quote must be a map")
        return cls(
            quote_id=_str(body, "quote_id", _QUOTE_ID, "quote id"),
            payee=_key(body, "payee"),
            payer=_key(body, "payer"),
            resource=check_resource(body.get("resource")),
            amount=check_amount(body.get("amount"), "price"),
            prefix=_nonce(body.get("prefix"), "derivation prefix"),
            created_ms=_int(body, "created_ms", 0, _MAX_MS),
            expires_ms=_int(body, "expires_ms", 0, _MAX_MS),
            sig=b"" if not signed and body.get("sig") is None else _sig(body),
        )


# -- payment messages ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentMessage:
    """What the payer sends (``pay.submit``): the quote it answers, the BRC-29 derivation data and the
    transaction as Atomic BEEF (BRC-105's derivationPrefix, derivationSuffix, senderIdentityKey and
    transaction)."""

    quote: Quote
    derivation_prefix: str
    derivation_suffix: str
    sender_identity_key: str
    transaction: bytes

    def to_wire(self, *, quote_by_id: bool = False) -> dict[str, Any]:
        """The CBOR map; ``quote_by_id``: name the quote by ``quote_id`` instead of sending it back (to a
        payee that keeps its open quotes, such as a stream's producer)."""
        return {
            **({"quote_id": self.quote.quote_id} if quote_by_id else {"quote": self.quote.to_wire()}),
            "derivation_prefix": self.derivation_prefix,
            "derivation_suffix": self.derivation_suffix,
            "sender_identity_key": self.sender_identity_key,
            "transaction": self.transaction,
        }

    @classmethod
    def from_wire(
        cls, body: object, *, max_bytes: int, quotes: Callable[[str], Quote | None] | None = None
    ) -> PaymentMessage:
        """Parse a payment message. ``quotes``: how the payee finds a quote it issued by its id, for a message
        that names its quote by ``quote_id`` (without it, the message must carry the quote).

        Raises:
            BadRequest: a missing or malformed field, or a transaction larger than ``max_bytes``.
            InvalidPayment: ``quote_id`` names no quote that ``quotes`` knows.
        """
        if not isinstance(body, dict):
            raise BadRequest("payment must be a map")
        tx = body.get("transaction")
        if not isinstance(tx, bytes) or not tx:
            raise BadRequest("'transaction' must be Atomic BEEF bytes")
        if len(tx) > max_bytes:
            raise BadRequest(f"payment transaction is {len(tx)} bytes, the limit is {max_bytes}")
        if quotes is not None and "quote" not in body:
            quote_id = _str(body, "quote_id", _QUOTE_ID, "quote id")
            found = quotes(quote_id)
            if found is None:
                raise InvalidPayment(f"quote {quote_id} is not a quote of this node")
            quote = found
        else:
            quote = Quote.from_wire(body.get("quote"))
        return cls(
            quote=quote,
            derivation_prefix=_nonce(body.get("derivation_prefix"), "derivation prefix"),
            derivation_suffix=_nonce(body.get("derivation_suffix"), "derivation suffix"),
            sender_identity_key=_key(body, "sender_identity_key"),
            transaction=tx,
        )


# -- receipts ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """The payee's signed acknowledgement of a committed payment (see the module invariants).

    ``amount`` is what output 0 pays (at least ``price``); ``paid_ms`` is when the payee committed it;
    ``next_quote`` (empty, or 32 bytes) the digest of the quote it offers for the next payment (invariant 5);
    ``key_id`` the BRC-3 key id of the signature when it is not the quote id (a stream's producer signs all its
    receipts with one key, the stream's resource id, so that a subscriber derives that key once, not per receipt).
    """

    quote_id: str
    payee: str
    payer: str
    resource: str
    price: int
    amount: int
    txid: str
    paid_ms: int
    next_quote: bytes = b""
    key_id: str = ""
    sig: bytes = b""

    def signing_bytes(self) -> bytes:
        fields: list[Any] = [
            _RECEIPT_TAG,
            self.quote_id,
            self.payee,
            self.payer,
            self.resource,
            self.price,
            self.amount,
            self.txid,
            self.paid_ms,
        ]
        if self.next_quote:  # receipts without one keep the bytes they always had
            fields.append(self.next_quote)
        return cbor2.dumps(fields, canonical=True)

    @classmethod
    def issue(
        cls,
        payee: Identity,
        quote: Quote,
        *,
        txid: str,
        amount: int,
        paid_ms: int,
        next_quote: Quote | None = None,
        key_id: str = "",
    ) -> Receipt:
        """The receipt ``payee`` signs for a committed payment of ``quote`` by transaction ``txid``; with
        ``next_quote``, it signs that quote too (by its digest, invariant 5); with ``key_id``, with that BRC-3
        key id instead of the quote id."""
        unsigned = cls(
            quote_id=quote.quote_id,
            payee=payee.public_key_hex,
            payer=quote.payer,
            resource=quote.resource,
            price=quote.amount,
            amount=amount,
            txid=txid,
            paid_ms=paid_ms,
            next_quote=next_quote.digest() if next_quote is not None else b"",
            key_id=check_key_id(key_id) if key_id else "",
        )
        sig = _sign_for_anyone(payee, RECEIPT_PROTOCOL, unsigned.signing_key_id, unsigned.signing_bytes())
        return cls(**{**unsigned.as_fields(), "sig": sig})

    @property
    def signing_key_id(self) -> str:
        """The BRC-3 key id the payee signs with: ``key_id``, else the quote id."""
        return self.key_id or self.quote_id

    def verify(self) -> bool:
        """Whether ``sig`` is the payee's signature over this receipt (anyone can check it)."""
        return _verify_from(self.payee, RECEIPT_PROTOCOL, self.signing_key_id, self.signing_bytes(), self.sig)

    def signs_quote(self, quote: Quote) -> bool:
        """Whether this receipt names ``quote`` as the next one (check :meth:`verify` too): the same payee and
        payer, and the digest of its signing bytes."""
        return (
            bool(self.next_quote)
            and quote.payee == self.payee
            and quote.payer == self.payer
            and quote.digest() == self.next_quote
        )

    def matches(self, quote: Quote, txid: str) -> bool:
        """Whether this receipt acknowledges ``quote`` paid by ``txid``."""
        return (
            self.quote_id == quote.quote_id
            and self.payee == quote.payee
            and self.payer == quote.payer
            and self.resource == quote.resource
            and self.price == quote.amount
            and self.amount >= quote.amount
            and self.txid == txid
        )

    def as_fields(self) -> dict[str, Any]:
        return {
            "quote_id": self.quote_id,
            "payee": self.payee,
            "payer": self.payer,
            "resource": self.resource,
            "price": self.price,
            "amount": self.amount,
            "txid": self.txid,
            "paid_ms": self.paid_ms,
            **({"next_quote": self.next_quote} if self.next_quote else {}),
            **({"key_id": self.key_id} if self.key_id else {}),
        }

    def to_wire(self) -> dict[str, Any]:
        return {**self.as_fields(), "sig": self.sig}

    def as_json(self) -> dict[str, Any]:
        fields = self.as_fields()
        if self.next_quote:
            fields["next_quote"] = self.next_quote.hex()
        return {**fields, "sig": self.sig.hex()}

    @classmethod
    def from_wire(cls, body: object) -> Receipt:
        """Parse a receipt (signature not checked: call :meth:`verify`).

        Raises:
            BadRequest: a missing or malformed field.
        """
        if not isinstance(body, dict):
            raise BadRequest("receipt must be a map")
        return cls(
            quote_id=_str(body, "quote_id", _QUOTE_ID, "quote id"),
            payee=_key(body, "payee"),
            payer=_key(body, "payer"),
            resource=check_resource(body.get("resource")),
            price=check_amount(body.get("price"), "price"),
            amount=check_amount(body.get("amount")),
            txid=_str(body, "txid", _TXID, "txid"),
            paid_ms=_int(body, "paid_ms", 0, _MAX_MS),
            next_quote=_digest(body, "next_quote"),
            key_id=check_key_id(body["key_id"]) if "key_id" in body else "",
            sig=_sig(body),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Receipt:
        """A receipt stored with :meth:`to_bytes`."""
        try:
            body = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
            raise BadRequest(f"stored receipt is not CBOR: {exc}") from exc
        return cls.from_wire(body)

    def to_bytes(self) -> bytes:
        """The receipt as canonical CBOR (how it is stored)."""
        return cbor2.dumps(self.to_wire(), canonical=True)
