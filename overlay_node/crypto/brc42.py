"""BRC-42 key derivation, BRC-43 invoice numbers, and the BRC-3 signatures and HMACs built on them.

Pure and synchronous; every curve operation is one coincurve call. The semantics follow the reference wallets
(ts-sdk ``KeyDeriver``/``ProtoWallet``, py-sdk ``bsv/wallet/key_deriver.py`` and ``wallet_impl.py``):

1. Shared secret ``S = priv_self * Pub_other`` (33-byte compressed point); scalar
   ``h = HMAC-SHA256(key=S, msg=utf8(invoice)) mod n``.
2. Child private key (own): ``(priv_self + h) mod n``. Child public key (the other party's):
   ``Pub_other + h*G``. Both sides arrive at the same key pair because ECDH is symmetric.
3. An invoice number is ``"<securityLevel>-<protocolID>-<keyID>"`` (BRC-43), the protocol name trimmed and
   lower-cased, validated as the spec says (see :func:`invoice_number`).
4. Counterparty ``"self"`` is our own public key, ``"anyone"`` the public key of private key 1 (``G``), anything
   else a 33-byte public key (bytes or hex).
5. BRC-3: a signature is DER ECDSA over ``SHA-256(data)`` with the derived child private key; the verifier derives
   the signer's child public key (``for_self=False``, counterparty = the signer).
6. HMACs use the derived symmetric key: the x coordinate of ``childPriv * childPub`` (both derived for the same
   protocol, key id and counterparty), as the reference ``ProtoWallet.createHmac`` does.

Bad protocol ids, key ids or counterparties raise :class:`~overlay_node.errors.BadRequest`.

This is the node's one BRC-42 implementation. The reference-shaped API (``derive_*``, ``create_*``, ``verify_*``)
validates its protocol ids and key ids; the hot paths (a payment per packet: a payee's output check, a quote and
a receipt signed, a receipt checked) call the functions under it with invoice numbers they built from constants:
:func:`child_secret`, :func:`own_child_public`, :func:`own_child_key`, :func:`derive_child_public_key`,
:func:`sign_for_anyone` and :func:`verify_for_anyone`. They compute a child private key as an integer (no key
object, no public key computed for nothing), our own child public key from its private scalar and a
counterparty's as ``h*G`` plus its key (``h*G`` by libsecp256k1's table-driven multiplication of G, cheaper than
a general one), check a signature of a counterparty's child key without computing that key (one ECDSA verification
against the counterparty's own key with the digest moved by the tweak: ``keys.ecdsa_verify_tweaked``; a quote's
key id is its id, so each quote and each receipt would otherwise derive a child key once), and they remember
through the identity's :class:`~overlay_node.crypto.keys.KeyCache` (bounded LRU maps it owns): ECDH results and
parsed counterparty keys, the child keys of the BRC-3 signatures made for ``anyone`` and the tweaks of those checked.
The one cache
no node owns is :data:`ANYONE`'s (see there).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

from coincurve import PrivateKey, PublicKey

from overlay_node.crypto.keys import (
    SECP256K1_N,
    Identity,
    ecdsa_verify_digest,
    ecdsa_verify_tweaked,
    parse_public_key,
    sign_digest,
)
from overlay_node.errors import BadRequest

__all__ = [
    "ANYONE",
    "ANYONE_PUBLIC_KEY",
    "Counterparty",
    "ProtocolID",
    "brc42_tweak",
    "checked_key_hex",
    "child_secret",
    "counterparty_public_key",
    "create_hmac",
    "create_signature",
    "derive_child_private_key",
    "derive_child_public_key",
    "derive_private_key",
    "derive_public_key",
    "derive_symmetric_key",
    "invoice_number",
    "normalize_protocol",
    "own_child_key",
    "own_child_public",
    "sign_for_anyone",
    "verify_for_anyone",
    "verify_hmac",
    "verify_signature",
]

#: ``(securityLevel, protocolName)`` as in BRC-43, e.g. ``(2, "auth message signature")``
ProtocolID = tuple[int, str]
#: ``"self"``, ``"anyone"``, or a compressed public key as 33 bytes or 66 hex characters
Counterparty = str | bytes

ANYONE: Final = Identity.from_private_bytes((1).to_bytes(32, "big"))
"""The "anyone" identity: private key 1, public by definition (BRC-42 counterparty ``anyone``).

A BRC-3 signature made for ``anyone`` is checked by deriving the signer's child key from this identity
(:func:`verify_for_anyone`), so its :class:`~overlay_node.crypto.keys.KeyCache` is the one cache that no node's
identity owns. It has to be module-level: ``Quote.verify()`` and ``Receipt.verify()`` are pure
functions of a message (the stream credit machine in ``protocol/streams.py`` calls them with no node at hand), and
a subscriber checks every receipt of a stream with the same derived key. It is safe to share: it holds public
data only (signers' keys and the child keys anyone can derive for them), and every table in it is bounded.
"""
#: the public key of private key 1, i.e. the generator G: the BRC-42 "anyone" counterparty
ANYONE_PUBLIC_KEY: Final[bytes] = ANYONE.public_key

_PROTOCOL_CHARS = re.compile(r"[a-z0-9 ]+")
_PROTOCOL_MIN, _PROTOCOL_MAX = 5, 280
_KEY_ID_MAX_BYTES = 1033


def normalize_protocol(protocol: ProtocolID) -> ProtocolID:
    """Validate a BRC-43 protocol id and return it with the name trimmed and lower-cased.

    Rules (BRC-43): security level 0, 1 or 2; the name has 5-280 characters, only letters, digits and single
    spaces, and does not end in ``" protocol"``.

    Raises:
        BadRequest: a rule is broken; the message names it.
    """
    if not isinstance(protocol, tuple | list) or len(protocol) != 2:
        raise BadRequest("protocol id must be (security level, protocol name)")
    level, name = protocol
    if isinstance(level, bool) or not isinstance(level, int) or level not in (0, 1, 2):
        raise BadRequest("protocol security level must be 0, 1 or 2")
    if not isinstance(name, str):
        raise BadRequest("protocol name must be a string")
    name = name.strip().lower()
    if not _PROTOCOL_MIN <= len(name) <= _PROTOCOL_MAX:
        raise BadRequest(f"protocol names must be {_PROTOCOL_MIN}-{_PROTOCOL_MAX} characters, got {len(name)}")
    if "  " in name:
        raise BadRequest("protocol names cannot contain multiple consecutive spaces")
    if _PROTOCOL_CHARS.fullmatch(name) is None:
        raise BadRequest("protocol names can only contain letters, numbers and spaces")
    if name.endswith(" protocol"):
        raise BadRequest('no need to end a protocol name with " protocol"')
    return (level, name)


def invoice_number(protocol: ProtocolID, key_id: str) -> str:
    """The BRC-43 invoice number ``"<level>-<protocol>-<keyID>"``.

    Raises:
        BadRequest: invalid protocol id (see :func:`normalize_protocol`) or a key id that is not 1-1033 bytes.
    """
    level, name = normalize_protocol(protocol)
    if not isinstance(key_id, str):
        raise BadRequest("key id must be a string")
    size = len(key_id.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= _KEY_ID_MAX_BYTES:
        raise BadRequest(f"key ids must be 1-{_KEY_ID_MAX_BYTES} bytes, got {size}")
    return f"{level}-{name}-{key_id}"


def brc42_tweak(shared_secret: bytes, invoice: str) -> bytes:
    """The BRC-42 scalar ``HMAC-SHA256(S, utf8(invoice)) mod n`` as 32 big-endian bytes."""
    digest = hmac.digest(shared_secret, invoice.encode("utf-8", "surrogatepass"), "sha256")
    scalar = int.from_bytes(digest, "big")
    if scalar >= SECP256K1_N:  # probability about 2**-128; reduce like the reference does
        scalar -= SECP256K1_N
    return scalar.to_bytes(32, "big")


# -- the derivations (every function below goes through these) ------------------------------------------------


def _raw_key(key: str | bytes) -> bytes:
    """A public key's bytes, not parsed yet: the identity's caches are keyed by them, so a known key is never
    parsed again (a wrong length or a bad point is refused where the key is first parsed)."""
    if isinstance(key, bytes):
        return key
    try:
        return bytes.fromhex(key)
    except ValueError:
        raise BadRequest("public key is not hex") from None


def _point(identity: Identity, raw: bytes) -> PublicKey:
    """The parsed public key ``raw``, remembered in ``identity``'s cache."""
    points = identity.cache.points
    point = points.get(raw)
    if point is None:
        point = parse_public_key(raw)
        points.put(raw, point)
    return point


def _child_scalar(identity: Identity, tweak: bytes) -> bytes:
    root = int.from_bytes(identity.private_bytes, "big")
    return ((root + int.from_bytes(tweak, "big")) % SECP256K1_N).to_bytes(32, "big")


def _own_child_point(identity: Identity, raw: bytes, invoice: str) -> PublicKey:
    # from the child private scalar (one multiplication of G, libsecp256k1's table-driven ecmult_gen), not as
    # ``Pub + h*G`` (a general multiplication and an addition): the same point, about a third cheaper
    # (a zero scalar, probability about 2**-256, raises ValueError as the addition's infinity did)
    return PublicKey.from_valid_secret(_child_scalar(identity, brc42_tweak(identity.shared_secret(raw), invoice)))


def _their_child_point(identity: Identity, raw: bytes, invoice: str) -> PublicKey:
    # ``Pub + h*G`` as h*G (table-driven, as above) plus one point addition: a quarter cheaper than libsecp256k1's
    # tweak_add, whose h*G is a general multiplication (a zero tweak or a sum at infinity raise ValueError alike)
    tweak = PublicKey.from_valid_secret(brc42_tweak(identity.shared_secret(raw), invoice))
    return PublicKey.combine_keys([_point(identity, raw), tweak])


def checked_key_hex(identity: Identity, key: str | bytes) -> str:
    """A counterparty's public key as lower-case hex, checked to be a point (through ``identity``'s cache: a
    producer issues a quote to the same subscriber per packet).

    Raises:
        BadRequest: not hex, or not a compressed point.
    """
    raw = _raw_key(key)
    _point(identity, raw)
    return raw.hex()


def child_secret(identity: Identity, counterparty: str | bytes, invoice: str) -> bytes:
    """Our BRC-42 child private key (32 bytes) for ``invoice`` (raw invoice string) with ``counterparty``.

    Raises:
        BadRequest: ``counterparty`` is not a valid public key.
    """
    return _child_scalar(identity, brc42_tweak(identity.shared_secret(_raw_key(counterparty)), invoice))


def own_child_public(identity: Identity, counterparty: str | bytes, invoice: str) -> bytes:
    """Our BRC-42 child public key (33 bytes): what ``counterparty`` pays us to, or we sign with."""
    return bytes(_own_child_point(identity, _raw_key(counterparty), invoice).format(compressed=True))


def own_child_key(identity: Identity, counterparty: str | bytes, invoice: str) -> tuple[bytes, bytes]:
    """Our BRC-42 child private key and its public key (the same key as :func:`own_child_public`, computed from
    the private side: for a key we will also sign with, one EC multiplication gives both)."""
    secret = child_secret(identity, counterparty, invoice)
    return secret, bytes(PublicKey.from_valid_secret(secret).format(compressed=True))


def derive_child_private_key(identity: Identity, counterparty_pub: bytes | str, invoice: str) -> PrivateKey:
    """BRC-42 recipient side: our child private key for ``invoice`` with ``counterparty_pub`` (raw invoice string),
    as a key object (:func:`child_secret` gives its 32 bytes)."""
    return PrivateKey(child_secret(identity, counterparty_pub, invoice))


def derive_child_public_key(identity: Identity, counterparty_pub: bytes | str, invoice: str) -> bytes:
    """BRC-42 sender side: the counterparty's child public key for ``invoice`` (raw invoice string), compressed:
    what we pay ``counterparty_pub`` to, or check its signatures with."""
    return bytes(_their_child_point(identity, _raw_key(counterparty_pub), invoice).format(compressed=True))


# -- BRC-3 signatures for "anyone" on the hot path ---------------------------------------------------------


def _invoice(protocol: ProtocolID, key_id: str) -> str:
    # the hot path's protocol ids are constants in normal form and its key ids are checked by their messages
    return f"{protocol[0]}-{protocol[1]}-{key_id}"


def sign_for_anyone(identity: Identity, protocol: ProtocolID, key_id: str, data: bytes) -> bytes:
    """A BRC-3 signature (counterparty ``anyone``): DER ECDSA over SHA-256(data) with our child key for
    ``protocol`` (a constant in normal form) and ``key_id`` (not re-validated). ``identity`` remembers the key (a
    stream's receipts are all signed with one)."""
    invoice = _invoice(protocol, key_id)
    secrets = identity.cache.secrets
    secret = secrets.get((ANYONE_PUBLIC_KEY, invoice))
    if secret is None:
        secret = child_secret(identity, ANYONE_PUBLIC_KEY, invoice)
        secrets.put((ANYONE_PUBLIC_KEY, invoice), secret)
    return sign_digest(secret, hashlib.sha256(data).digest())


def verify_for_anyone(signer: str | bytes, protocol: ProtocolID, key_id: str, data: bytes, sig: bytes) -> bool:
    """Whether ``sig`` is ``signer``'s BRC-3 signature for ``anyone`` over ``data`` (``signer``: a public key;
    ``protocol``, ``key_id`` as in :func:`sign_for_anyone`). :data:`ANYONE` remembers the signer's derived key (a
    subscriber checks every receipt of a stream with one). A signer that is not a key is simply not valid."""
    invoice = _invoice(protocol, key_id)
    publics = ANYONE.cache.publics
    try:
        raw = _raw_key(signer)
        known = publics.get((raw, invoice))
        if known is None:
            # the signer's key and the tweak: the child key itself is never computed (ecdsa_verify_tweaked)
            tweak = int.from_bytes(brc42_tweak(ANYONE.shared_secret(raw), invoice), "big")
            known = (_point(ANYONE, raw), tweak)
            publics.put((raw, invoice), known)
    except (BadRequest, ValueError):  # not a key
        return False
    return ecdsa_verify_tweaked(known[0], known[1], sig, hashlib.sha256(data).digest())


# -- the reference API -----------------------------------------------------------------------------------------


def counterparty_public_key(identity: Identity, counterparty: Counterparty) -> bytes:
    """Resolve ``"self"``, ``"anyone"`` or a key (bytes or hex) to 33 compressed bytes.

    Raises:
        BadRequest: not one of the names and not a valid public key.
    """
    if counterparty == "self":
        return identity.public_key
    if counterparty == "anyone":
        return ANYONE_PUBLIC_KEY
    return parse_public_key(counterparty).format(compressed=True)


def derive_private_key(identity: Identity, protocol: ProtocolID, key_id: str, counterparty: Counterparty) -> PrivateKey:
    """Our child private key for ``(protocol, key_id, counterparty)`` (reference ``derivePrivateKey``)."""
    invoice = invoice_number(protocol, key_id)
    return derive_child_private_key(identity, counterparty_public_key(identity, counterparty), invoice)


def _child_point(
    identity: Identity, protocol: ProtocolID, key_id: str, counterparty: Counterparty, for_self: bool
) -> PublicKey:
    invoice = invoice_number(protocol, key_id)
    cp = counterparty_public_key(identity, counterparty)
    if for_self:
        return _own_child_point(identity, cp, invoice)
    return _their_child_point(identity, cp, invoice)


def derive_public_key(
    identity: Identity,
    protocol: ProtocolID,
    key_id: str,
    counterparty: Counterparty,
    *,
    for_self: bool = False,
) -> bytes:
    """A child public key (reference ``derivePublicKey``).

    ``for_self=False`` gives the counterparty's child key (what the counterparty signs with or is paid to);
    ``for_self=True`` gives our own child key for that counterparty.
    """
    return bytes(_child_point(identity, protocol, key_id, counterparty, for_self).format(compressed=True))


def derive_symmetric_key(identity: Identity, protocol: ProtocolID, key_id: str, counterparty: Counterparty) -> bytes:
    """The 32-byte symmetric key both parties derive: x of ``ourChildPriv * theirChildPub``."""
    invoice = invoice_number(protocol, key_id)
    cp = counterparty_public_key(identity, counterparty)
    tweak = brc42_tweak(identity.shared_secret(cp), invoice)
    child_pub = _point(identity, cp).add(tweak)
    return bytes(child_pub.multiply(_child_scalar(identity, tweak)).format(compressed=True)[1:])


def create_signature(
    identity: Identity,
    data: bytes,
    *,
    protocol: ProtocolID,
    key_id: str,
    counterparty: Counterparty = "anyone",
) -> bytes:
    """A BRC-3 signature: DER ECDSA over SHA-256(data) with our derived child key."""
    invoice = invoice_number(protocol, key_id)
    secret = child_secret(identity, counterparty_public_key(identity, counterparty), invoice)
    return sign_digest(secret, hashlib.sha256(data).digest())


def verify_signature(
    identity: Identity,
    data: bytes,
    signature: bytes,
    *,
    protocol: ProtocolID,
    key_id: str,
    counterparty: Counterparty = "self",
    for_self: bool = False,
) -> bool:
    """Check a BRC-3 signature made by ``counterparty`` (or by us, with ``for_self=True``).

    Returns ``False`` for a wrong or malformed signature; invalid arguments raise BadRequest.
    """
    pub = _child_point(identity, protocol, key_id, counterparty, for_self)
    return ecdsa_verify_digest(pub, bytes(signature), hashlib.sha256(data).digest())


def create_hmac(
    identity: Identity,
    data: bytes,
    *,
    protocol: ProtocolID,
    key_id: str,
    counterparty: Counterparty = "self",
) -> bytes:
    """HMAC-SHA256 of ``data`` under the derived symmetric key (reference ``ProtoWallet.createHmac``).

    The key is the x coordinate's minimal big-endian bytes, as the reference hands it to its HMAC (a big number's
    ``toArray()``): when x begins with zero bytes (one key in 256) the key is shorter, and HMAC pads a short key on
    the right, so a 32-byte key with its leading zero would give another MAC."""
    key = derive_symmetric_key(identity, protocol, key_id, counterparty).lstrip(b"\x00")
    return hmac.digest(key, data, "sha256")


def verify_hmac(
    identity: Identity,
    data: bytes,
    mac: bytes,
    *,
    protocol: ProtocolID,
    key_id: str,
    counterparty: Counterparty = "self",
) -> bool:
    """Constant-time check of an HMAC made by :func:`create_hmac` (by us or the counterparty)."""
    expected = create_hmac(identity, data, protocol=protocol, key_id=key_id, counterparty=counterparty)
    return hmac.compare_digest(expected, bytes(mac))
