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
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

from coincurve import PrivateKey, PublicKey

from overlay_node.crypto.keys import SECP256K1_N, Identity, ecdsa_verify_digest, parse_public_key
from overlay_node.errors import BadRequest

__all__ = [
    "ANYONE_PUBLIC_KEY",
    "Counterparty",
    "ProtocolID",
    "brc42_tweak",
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
    "verify_hmac",
    "verify_signature",
]

#: ``(securityLevel, protocolName)`` as in BRC-43, e.g. ``(2, "auth message signature")``
ProtocolID = tuple[int, str]
#: ``"self"``, ``"anyone"``, or a compressed public key as 33 bytes or 66 hex characters
Counterparty = str | bytes

#: the public key of private key 1, i.e. the generator G: the BRC-42 "anyone" counterparty
ANYONE_PUBLIC_KEY: Final[bytes] = PrivateKey((1).to_bytes(32, "big")).public_key.format(compressed=True)

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


def derive_child_private_key(identity: Identity, counterparty_pub: bytes | str, invoice: str) -> PrivateKey:
    """BRC-42 recipient side: our child private key for ``invoice`` with ``counterparty_pub`` (raw invoice string)."""
    tweak = brc42_tweak(identity.shared_secret(counterparty_pub), invoice)
    return identity.private_key.add(tweak)


def derive_child_public_key(identity: Identity, counterparty_pub: bytes | str, invoice: str) -> bytes:
    """BRC-42 sender side: the counterparty's child public key for ``invoice`` (raw invoice string), compressed."""
    tweak = brc42_tweak(identity.shared_secret(counterparty_pub), invoice)
    return parse_public_key(counterparty_pub).add(tweak).format(compressed=True)


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
    invoice = invoice_number(protocol, key_id)
    cp = counterparty_public_key(identity, counterparty)
    if for_self:
        return derive_child_private_key(identity, cp, invoice).public_key.format(compressed=True)
    return derive_child_public_key(identity, cp, invoice)


def derive_symmetric_key(identity: Identity, protocol: ProtocolID, key_id: str, counterparty: Counterparty) -> bytes:
    """The 32-byte symmetric key both parties derive: x of ``ourChildPriv * theirChildPub``."""
    invoice = invoice_number(protocol, key_id)
    cp = counterparty_public_key(identity, counterparty)
    tweak = brc42_tweak(identity.shared_secret(cp), invoice)
    child_priv = identity.private_key.add(tweak)
    child_pub = PublicKey(cp).add(tweak)
    return child_pub.multiply(child_priv.secret).format(compressed=True)[1:]


def create_signature(
    identity: Identity,
    data: bytes,
    *,
    protocol: ProtocolID,
    key_id: str,
    counterparty: Counterparty = "anyone",
) -> bytes:
    """A BRC-3 signature: DER ECDSA over SHA-256(data) with our derived child key."""
    key = derive_private_key(identity, protocol, key_id, counterparty)
    return key.sign(hashlib.sha256(data).digest(), hasher=None)


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
    pub = PublicKey(derive_public_key(identity, protocol, key_id, counterparty, for_self=for_self))
    return ecdsa_verify_digest(pub, bytes(signature), hashlib.sha256(data).digest())


def create_hmac(
    identity: Identity,
    data: bytes,
    *,
    protocol: ProtocolID,
    key_id: str,
    counterparty: Counterparty = "self",
) -> bytes:
    """HMAC-SHA256 of ``data`` under the derived symmetric key (reference ``ProtoWallet.createHmac``)."""
    key = derive_symmetric_key(identity, protocol, key_id, counterparty)
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
