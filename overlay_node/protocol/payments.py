"""BRC-29 payments as data: quotes, payment messages and receipts, their canonical signing bytes, and the
checks a payee makes on a payment's output. Pure: no I/O, no clocks (callers pass wall-clock milliseconds). The
keys are crypto/'s: the payment key and its script in ``crypto/brc29.py``, the BRC-3 signatures of quotes and
receipts in ``crypto/brc42.py``.

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
   price and time (or over a batch of such receipts, invariant 6); only then does the receipt leave the payee.
4. A prefix is used by at most one accepted payment: the payee keeps it unique in its store, so a replayed
   payment message is refused however it is timed.
5. A receipt may also carry ``next_quote``, the SHA-256 of the signing bytes of the quote the payee offers
   for the next payment (a stream's next window, or the next quote of a ``pay.submit``). A stream's quote travels
   **unsigned** beside the receipt: the receipt's signature signs it, so a window costs the payee one signature,
   not two. A ``pay.submit``'s next quote carries the payee's **MAC** instead of a signature when the payer asks for
   it (``next.mac``): the receipt signs it for the payer, and the MAC (HMAC-SHA256 under a key derived from the
   payee's identity, so it holds across restarts) lets the payee alone vouch for it when it no longer remembers
   it; a payer that does not ask (an older one) gets it signed, as before. Whoever holds both checks the quote by
   its digest (:meth:`Receipt.signs_quote`).
6. Receipts of payments accepted together (a stream's ``stream.pay`` batch; the single payments of several payers
   that one group commit records) may share **one signature**: the payee signs the list of the SHA-256 digests of
   their bodies (``batch``, at most :data:`MAX_RECEIPT_BATCH`, signing bytes tagged apart from a single receipt's)
   and each receipt carries that list and the signature, so each stays a proof on its own: its body's digest is in
   the list and the signature is the payee's over the list (:meth:`Receipt.verify`). Every batched receipt's body
   holds a secret of the payee's: a ``next_quote`` or a ``salt`` (16 random bytes). The list is signed before the
   database has recorded the payments, and a payment it then refuses (a replay, a double spend) keeps its digest
   in the list; but its body signs a fresh quote that never left the payee (a random id and prefix), or a salt that
   never did, so nobody can show a body with that digest, not even the payer who knows every other field (the
   payee's clock in ``paid_ms`` could be guessed).

Signing bytes are the canonical CBOR of a tagged list of the fields in a fixed order, so both sides (and third
parties) compute the same bytes from the wire values.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import cbor2

from overlay_node.crypto.brc29 import check_nonce
from overlay_node.crypto.brc42 import ProtocolID, checked_key_hex, sign_for_anyone, verify_for_anyone
from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest, InsufficientPayment, InvalidPayment
from overlay_node.lru import LruMap

__all__ = [
    "MAX_RECEIPT_BATCH",
    "MAX_SATOSHIS",
    "QUOTE_PROTOCOL",
    "RECEIPT_PROTOCOL",
    "PaymentMessage",
    "Quote",
    "Receipt",
    "batch_signing_bytes",
    "check_amount",
    "check_key_id",
    "check_next",
    "check_payment_output",
    "check_resource",
    "new_prefix",
    "new_quote_id",
    "next_by_mac",
    "next_field",
    "next_request",
]

#: BRC-3 signatures over quotes and receipts
QUOTE_PROTOCOL: Final[ProtocolID] = (2, "overlay payment quote")
RECEIPT_PROTOCOL: Final[ProtocolID] = (2, "overlay payment receipt")
#: every satoshi there will ever be
MAX_SATOSHIS: Final = 21_000_000 * 100_000_000
#: receipts one batch signature covers at most (invariant 6): a receipt carries the digests of all of them
MAX_RECEIPT_BATCH: Final = 16
#: the bytes of a receipt's ``salt`` (invariant 6)
RECEIPT_SALT_BYTES: Final = 16

_QUOTE_TAG: Final = "overlay-node/quote/1"
_RECEIPT_TAG: Final = "overlay-node/receipt/1"
_BATCH_TAG: Final = "overlay-node/receipt-batch/1"
#: batch signatures already checked, by (payee, key id, signature, batch): the receipts of a batch cost one check
_VERIFIED_BATCHES: LruMap[tuple[str, str, bytes, tuple[bytes, ...]], bool] = LruMap(64)
_QUOTE_ID = re.compile(r"^[0-9a-f]{32}$")
_PUBKEY_HEX = re.compile(r"^0[23][0-9a-f]{64}$")
_TXID = re.compile(r"^[0-9a-f]{64}$")
_MAX_RESOURCE = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_MS = 2**53
_MS_MASK = 2**48 - 1  # a time of issue in a fresh id or prefix: 48 bits of milliseconds (about 8,900 years)


def new_quote_id(now_ms: int | None = None) -> str:
    """A fresh quote id: 32 lower-case hex characters. With ``now_ms`` (the time of issue), the first 12 are that time
    and the other 20 random (80 bits: unique all the same), so that ids issued together sort together: the payee's
    index of quote ids then takes a batch of payments on its last page or two rather than on a random page each
    (every page a commit changes is written whole to the log, and again by the checkpoint)."""
    if now_ms is None:
        return secrets.token_hex(16)
    return f"{now_ms & _MS_MASK:012x}{secrets.token_hex(10)}"


def new_prefix(now_ms: int) -> str:
    """A fresh derivation prefix (base64 of 16 bytes, as ``crypto/brc29.new_nonce``): the time of issue (6 bytes, big
    endian) and 10 random bytes, for the locality :func:`new_quote_id` gives (the payee's prefixes are unique)."""
    return base64.b64encode((now_ms & _MS_MASK).to_bytes(6, "big") + secrets.token_bytes(10)).decode("ascii")


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


def _str(body: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadRequest(f"{what} ({key!r}) is missing or malformed")
    return value


def _key(body: dict[str, Any], key: str) -> str:
    # the form only: the curve point is checked where the key is used (every use parses it)
    value = body.get(key)
    if not isinstance(value, str) or not _PUBKEY_HEX.fullmatch(value):
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


def _batch(body: dict[str, Any]) -> tuple[bytes, ...]:
    # optional: absent is a receipt signed alone
    value = body.get("batch")
    if value is None:
        return ()
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_RECEIPT_BATCH
        or not all(isinstance(d, bytes) and len(d) == 32 for d in value)
    ):
        raise BadRequest(f"'batch' must be a list of 1-{MAX_RECEIPT_BATCH} 32-byte digests")
    return tuple(value)


def _salt(body: dict[str, Any]) -> bytes:
    # optional: absent is empty
    value = body.get("salt", b"")
    if not isinstance(value, bytes) or len(value) not in (0, RECEIPT_SALT_BYTES):
        raise BadRequest(f"'salt' must be {RECEIPT_SALT_BYTES} bytes")
    return value


#: the keys of a receipt's wire map in canonical CBOR order (shorter keys first, then bytewise; RFC 7049, 3.9)
_RECEIPT_KEYS: Final = (
    "sig",
    "salt",
    "txid",
    "batch",
    "payee",
    "payer",
    "price",
    "amount",
    "key_id",
    "paid_ms",
    "quote_id",
    "resource",
    "next_quote",
)


def batch_signing_bytes(batch: Sequence[bytes]) -> bytes:
    """The canonical bytes a batch of receipts is signed over: the list of their body digests (invariant 6)."""
    return cbor2.dumps([_BATCH_TAG, list(batch)], canonical=True)


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
    mac: bytes = b""  # the payee's MAC in place of ``sig``: a next quote that a receipt signs (invariant 5)

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
        mac_key: bytes | None = None,
    ) -> Quote:
        """A new quote signed by ``payee`` (fresh id and prefix unless given). ``signed=False``: without a
        signature, for a quote that a receipt will sign by its digest (invariant 5); ``mac_key``: with the payee's
        MAC under that key instead of a signature (:meth:`mac_ok`; for a receipt to sign too).

        Raises:
            BadRequest: a field out of range.
        """
        unsigned = cls(
            quote_id=quote_id or new_quote_id(now_ms),
            payee=payee.public_key_hex,
            payer=checked_key_hex(payee, payer),
            resource=check_resource(resource),
            amount=check_amount(amount, "price"),
            prefix=check_nonce(prefix, "derivation prefix") if prefix else new_prefix(now_ms),
            created_ms=now_ms,
            expires_ms=now_ms + ttl_ms,
        )
        # signed (or MAC'd) in place: nothing else has seen the new instance yet (a second construction costs more)
        if mac_key is not None:
            object.__setattr__(unsigned, "mac", hmac.digest(mac_key, unsigned.signing_bytes(), "sha256"))
        elif signed:
            object.__setattr__(
                unsigned, "sig", sign_for_anyone(payee, QUOTE_PROTOCOL, unsigned.quote_id, unsigned.signing_bytes())
            )
        return unsigned

    def verify(self) -> bool:
        """Whether ``sig`` is the payee's signature over this quote."""
        return bool(self.sig) and verify_for_anyone(
            self.payee, QUOTE_PROTOCOL, self.quote_id, self.signing_bytes(), self.sig
        )

    def mac_ok(self, mac_key: bytes) -> bool:
        """Whether ``mac`` is the MAC of this quote under ``mac_key`` (which only the payee holds)."""
        return bool(self.mac) and hmac.compare_digest(self.mac, hmac.digest(mac_key, self.signing_bytes(), "sha256"))

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
        """The CBOR map sent over a peer link (no ``sig`` when unsigned, ``mac`` only when MAC'd)."""
        fields = self.as_fields()
        if self.sig:
            fields["sig"] = self.sig
        if self.mac:
            fields["mac"] = self.mac
        return fields

    def as_json(self) -> dict[str, Any]:
        """For the control API: the fields, the signature in hex (and the MAC, when MAC'd)."""
        fields = {**self.as_fields(), "sig": self.sig.hex()}
        if self.mac:
            fields["mac"] = self.mac.hex()
        return fields

    @classmethod
    def from_wire(cls, body: object, *, signed: bool = True) -> Quote:
        """Parse a quote (signature not checked: call :meth:`verify`). A quote with a ``mac`` needs no ``sig``
        (its receipt signs it for the payer; the payee checks the MAC); ``signed=False`` also takes a quote with
        neither (one that comes with the receipt that signs it).

        Raises:
            BadRequest: a missing or malformed field.
        """
        if not isinstance(body, dict):
            raise BadRequest("quote must be a map")
        mac = body.get("mac")
        if mac is not None and (not isinstance(mac, bytes) or len(mac) != 32):
            raise BadRequest("'mac' must be 32 bytes")
        return cls(
            quote_id=_str(body, "quote_id", _QUOTE_ID, "quote id"),
            payee=_key(body, "payee"),
            payer=_key(body, "payer"),
            resource=check_resource(body.get("resource")),
            amount=check_amount(body.get("amount"), "price"),
            prefix=check_nonce(body.get("prefix"), "derivation prefix"),
            created_ms=_int(body, "created_ms", 0, _MAX_MS),
            expires_ms=_int(body, "expires_ms", 0, _MAX_MS),
            sig=b"" if (not signed or mac is not None) and body.get("sig") is None else _sig(body),
            mac=mac or b"",
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
            derivation_prefix=check_nonce(body.get("derivation_prefix"), "derivation prefix"),
            derivation_suffix=check_nonce(body.get("derivation_suffix"), "derivation suffix"),
            sender_identity_key=_key(body, "sender_identity_key"),
            transaction=tx,
        )


def next_request(body: object) -> tuple[str, int | None] | None:
    """The ``next`` field of a ``pay.submit`` body: what the payer will pay for next, ``(resource, amount or
    None)``, whose quote the payee may answer along with the receipt (None: not asked). Whether the payer takes
    that quote with the payee's MAC instead of its signature: :func:`next_by_mac`.

    Raises:
        BadRequest: ``next`` is there but not ``{resource, amount?}``.
    """
    value = body.get("next") if isinstance(body, dict) else None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("'next' must be a map {resource, amount?}")
    return check_next(value.get("resource"), value.get("amount"))


def next_by_mac(body: dict[str, Any]) -> bool:
    """Whether a ``pay.submit`` body's ``next`` (checked by :func:`next_request`) says ``mac: true``: the payer
    takes the next quote MAC'd by the payee, its receipt's signature vouching for it (invariant 5)."""
    return body["next"].get("mac") is True


def check_next(resource: object, amount: object) -> tuple[str, int | None]:
    """A next payment's ``(resource, amount or None)``, checked.

    Raises:
        BadRequest: a bad resource or amount.
    """
    return check_resource(resource), None if amount is None else check_amount(amount)


def next_field(resource: str, amount: int | None) -> dict[str, Any]:
    """The ``next`` field of a ``pay.submit`` body that asks for the quote of ``resource`` (at ``amount``), MAC'd
    by the payee (its receipt signs it for us: invariant 5)."""
    wanted: dict[str, Any] = {"resource": resource, "mac": True}
    if amount is not None:
        wanted["amount"] = amount
    return wanted


# -- receipts ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """The payee's signed acknowledgement of a committed payment (see the module invariants).

    ``amount`` is what output 0 pays (at least ``price``); ``paid_ms`` is when the payee committed it;
    ``next_quote`` (empty, or 32 bytes) the digest of the quote it offers for the next payment (invariant 5);
    ``key_id`` the BRC-3 key id of the signature when it is not the quote id (a stream's producer signs all its
    receipts with one key, the stream's resource id, so that a subscriber derives that key once, not per receipt);
    ``batch`` (empty, or the digests of the bodies of receipts signed together, this one's among them) makes ``sig``
    the signature over that list (invariant 6); ``salt`` (empty, or 16 random bytes) keeps the body of a batched
    receipt that names no next quote a secret until the payee sends it (invariant 6).
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
    batch: tuple[bytes, ...] = ()
    salt: bytes = b""
    sig: bytes = b""
    #: :meth:`to_bytes` of a signed receipt, once made (the payee stores them and sends them; no copy carries it)
    _stored: bytes = field(default=b"", init=False, repr=False, compare=False)

    def signing_bytes(self) -> bytes:
        """The canonical bytes ``sig`` signs: the body's (:meth:`body_bytes`), or the batch's (invariant 6)."""
        return batch_signing_bytes(self.batch) if self.batch else self.body_bytes()

    def body_bytes(self) -> bytes:
        """The canonical bytes of the receipt's fields (what a receipt alone is signed over)."""
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
        if self.next_quote or self.salt:  # receipts without either keep the bytes they always had
            fields.append(self.next_quote)
        if self.salt:
            fields.append(self.salt)
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
        signed: bool = True,
        salted: bool = False,
    ) -> Receipt:
        """The receipt ``payee`` signs for a committed payment of ``quote`` by transaction ``txid``; with
        ``next_quote``, it signs that quote too (by its digest, invariant 5); with ``key_id``, with that BRC-3
        key id instead of the quote id. ``signed=False``: without a signature, for :meth:`sign_batch`;
        ``salted``: with a fresh ``salt`` (invariant 6)."""
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
            salt=secrets.token_bytes(RECEIPT_SALT_BYTES) if salted else b"",
        )
        if not signed:
            return unsigned
        sig = sign_for_anyone(payee, RECEIPT_PROTOCOL, unsigned.signing_key_id, unsigned.signing_bytes())
        object.__setattr__(unsigned, "sig", sig)  # as Quote.issue: the new instance is ours alone
        return unsigned

    @staticmethod
    def sign_batch(payee: Identity, receipts: Sequence[Receipt]) -> None:
        """Sign unsigned receipts of ``payee`` (from :meth:`issue` with ``signed=False``) with one signature over
        the list of their body digests, in place (invariant 6): all with one key id, each naming a next quote.

        Raises:
            ValueError: none, more than :data:`MAX_RECEIPT_BATCH`, signed already, another payee or key id, or a
                receipt with neither a next quote nor a salt (a caller's bug).
        """
        if not 1 <= len(receipts) <= MAX_RECEIPT_BATCH:
            raise ValueError(f"a receipt batch holds 1-{MAX_RECEIPT_BATCH} receipts")
        key_id = receipts[0].signing_key_id
        for receipt in receipts:
            if receipt.sig or receipt.payee != payee.public_key_hex or receipt.signing_key_id != key_id:
                raise ValueError("a receipt batch is unsigned receipts of one payee and key id")
            if not receipt.next_quote and not receipt.salt:
                raise ValueError("a batched receipt names its next quote or carries a salt (invariant 6)")
        batch = tuple(hashlib.sha256(r.body_bytes()).digest() for r in receipts)
        sig = sign_for_anyone(payee, RECEIPT_PROTOCOL, key_id, batch_signing_bytes(batch))
        for receipt in receipts:  # the unsigned instances are the caller's alone (as in issue)
            object.__setattr__(receipt, "batch", batch)
            object.__setattr__(receipt, "sig", sig)

    @staticmethod
    def sign_batches(payee: Identity, receipts: Sequence[Receipt]) -> None:
        """:meth:`sign_batch` for any number of unsigned receipts of ``payee``: one signature per key id and per
        :data:`MAX_RECEIPT_BATCH` of them, in their order."""
        by_key: dict[str, list[Receipt]] = {}
        for receipt in receipts:
            by_key.setdefault(receipt.signing_key_id, []).append(receipt)
        for group in by_key.values():
            for start in range(0, len(group), MAX_RECEIPT_BATCH):
                Receipt.sign_batch(payee, group[start : start + MAX_RECEIPT_BATCH])

    @property
    def signing_key_id(self) -> str:
        """The BRC-3 key id the payee signs with: ``key_id``, else the quote id."""
        return self.key_id or self.quote_id

    def verify(self) -> bool:
        """Whether ``sig`` is the payee's signature over this receipt, or over a batch that lists this receipt's
        body digest (invariant 6); anyone can check it. A batch's signature is checked once for all its receipts."""
        if not self.batch:
            return verify_for_anyone(self.payee, RECEIPT_PROTOCOL, self.signing_key_id, self.body_bytes(), self.sig)
        if hashlib.sha256(self.body_bytes()).digest() not in self.batch:
            return False
        key = (self.payee, self.signing_key_id, self.sig, self.batch)
        if key in _VERIFIED_BATCHES:
            return True
        valid = verify_for_anyone(
            self.payee, RECEIPT_PROTOCOL, self.signing_key_id, batch_signing_bytes(self.batch), self.sig
        )
        if valid:
            _VERIFIED_BATCHES.put(key, True)
        return valid

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
            **({"batch": list(self.batch)} if self.batch else {}),
            **({"salt": self.salt} if self.salt else {}),
        }

    def to_wire(self) -> dict[str, Any]:
        return {**self.as_fields(), "sig": self.sig}

    def as_json(self) -> dict[str, Any]:
        fields = self.as_fields()
        if self.next_quote:
            fields["next_quote"] = self.next_quote.hex()
        if self.batch:
            fields["batch"] = [d.hex() for d in self.batch]
        if self.salt:
            fields["salt"] = self.salt.hex()
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
            batch=_batch(body),
            salt=_salt(body),
            sig=_sig(body),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Receipt:
        """A receipt from the bytes of :meth:`to_bytes` (as stored, or as a stream's producer sends it).

        Raises:
            BadRequest: not CBOR, or a missing or malformed field.
        """
        try:
            body = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
            raise BadRequest(f"the receipt's bytes are not CBOR: {exc}") from exc
        return cls.from_wire(body)

    def to_bytes(self) -> bytes:
        """The receipt as canonical CBOR (how it is stored, and how a stream's producer sends it); made once."""
        stored = self._stored
        if not stored:
            wire = self.to_wire()
            # its keys in canonical order: the canonical bytes without cbor2 sorting them (a third of the cost, and
            # a payee makes one per payment)
            ordered = {key: wire[key] for key in _RECEIPT_KEYS if key in wire}
            stored = cbor2.dumps(ordered) if len(ordered) == len(wire) else cbor2.dumps(wire, canonical=True)
            if self.sig:  # an unsigned receipt is still to be signed (sign_batch)
                object.__setattr__(self, "_stored", stored)
        return stored
