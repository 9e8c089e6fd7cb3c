"""secp256k1 identity keys: the node's private key, its 33-byte compressed public key, ECDH and raw ECDSA.

Pure (no I/O) and fast: every curve operation goes through coincurve (libsecp256k1). A node's public key, hex in
text, is its name everywhere (peer id, payee, signer). Malformed key material raises
:class:`~overlay_node.errors.BadRequest` with a message that says what was wrong.
"""

from __future__ import annotations

import secrets

from coincurve import PrivateKey, PublicKey
from coincurve.context import GLOBAL_CONTEXT
from coincurve.ecdsa import cdata_to_der, der_to_cdata, signature_normalize
from coincurve.utils import validate_secret

from overlay_node.errors import BadRequest
from overlay_node.lru import LruMap

__all__ = [
    "PUBLIC_KEY_LEN",
    "SECP256K1_N",
    "Identity",
    "KeyCache",
    "ecdsa_verify_digest",
    "ecdsa_verify_tweaked",
    "parse_public_key",
    "public_key_hex",
]

#: order of the secp256k1 group
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
#: length of a compressed public key
PUBLIC_KEY_LEN = 33
#: at most this many peers' ECDH results and parsed keys are remembered per identity (peers talk to us repeatedly)
_PEER_CACHE_SIZE = 4096
#: at most this many BRC-42 child keys are remembered per identity
_CHILD_CACHE_SIZE = 1024


def parse_public_key(key: bytes | str) -> PublicKey:
    """Parse a compressed (33 bytes) public key given as bytes or hex text.

    Raises:
        BadRequest: wrong length, not hex, or not a point on the curve.
    """
    if isinstance(key, str):
        if len(key) != 2 * PUBLIC_KEY_LEN:
            raise BadRequest(f"public key must be {2 * PUBLIC_KEY_LEN} hex characters, got {len(key)}")
        try:
            raw = bytes.fromhex(key)
        except ValueError:
            raise BadRequest("public key is not hex") from None
    else:
        raw = bytes(key)
    if len(raw) != PUBLIC_KEY_LEN or raw[0] not in (2, 3):
        raise BadRequest("public key must be a 33-byte compressed secp256k1 point")
    try:
        return PublicKey(raw)
    except ValueError:
        raise BadRequest("public key is not a point on secp256k1") from None


class _Signer(PrivateKey):
    """A coincurve private key that only signs. ``PrivateKey(secret)`` derives the public key and the x-only
    public key up front: two EC multiplications, more than the signature itself costs, where a signed input
    needs one public key. ``sign`` uses the secret and the context alone; the byte-identity tests would catch
    a coincurve that changed that.

    Raises:
        ValueError: ``secret`` is not a valid private key (checked as ``PrivateKey`` does).
    """

    def __init__(self, secret: bytes) -> None:
        self.secret = validate_secret(secret)
        self.context = GLOBAL_CONTEXT


def sign_digest(secret: bytes, digest: bytes) -> bytes:
    """A DER ECDSA signature (RFC 6979 nonce, low S: what bsv-sdk's ``PrivateKey.sign`` gives) over a 32-byte
    digest with the private key ``secret``, without computing its public key.

    Raises:
        ValueError: ``secret`` is not a valid private key.
    """
    return bytes(_Signer(secret).sign(digest, hasher=None))


def public_key_hex(key: bytes | str) -> str:
    """The canonical (lower-case hex) form of a public key; validates it on the way."""
    return parse_public_key(key).format(compressed=True).hex()


def ecdsa_verify_tweaked(public_key: PublicKey, tweak: int, signature: bytes, digest: bytes) -> bool:
    """:func:`ecdsa_verify_digest` against the key ``public_key + tweak*G`` (a BRC-42 child key), without computing
    that key: ECDSA accepts ``(r, s)`` for ``Q = P + t*G`` and digest ``z`` exactly when ``u1*G + u2*Q``, which is
    ``(u1 + u2*t)*G + u2*P`` (``u1 = z/s``, ``u2 = r/s``), has x coordinate ``r``: when it accepts ``(r, s)`` for
    ``P`` and digest ``z + r*t`` (mod n). One verification, where deriving ``Q`` costs a multiplication of G and a
    point addition besides."""
    der = _low_s_der(signature, digest)  # canonical: 0x30 len 0x02 len(r) r 0x02 len(s) s
    if der is None:
        return False
    r = int.from_bytes(der[4 : 4 + der[3]], "big")
    z = (int.from_bytes(digest, "big") + r * tweak) % SECP256K1_N
    return public_key.verify(der, z.to_bytes(32, "big"), hasher=None)


def ecdsa_verify_digest(public_key: PublicKey, signature: bytes, digest: bytes) -> bool:
    """Verify a DER ECDSA signature over a 32-byte digest; high-S signatures are accepted (normalised first).

    libsecp256k1 only accepts low-S signatures, while other BSV libraries may produce either form, so the signature
    is normalised before it is checked. A signature that is not DER is simply invalid.
    """
    der = _low_s_der(signature, digest)
    return der is not None and public_key.verify(der, digest, hasher=None)


def _low_s_der(signature: bytes, digest: bytes) -> bytes | None:
    """The signature as canonical low-S DER, or None when it (or the digest) cannot be checked at all."""
    if len(digest) != 32 or not 8 <= len(signature) <= 73:
        return None
    try:
        cdata = der_to_cdata(signature)
    except ValueError:
        return None
    _, normalised = signature_normalize(cdata)
    return bytes(cdata_to_der(normalised))


class KeyCache:
    """What an :class:`Identity` remembers of the work done with its key, so that a peer, payer or payee that comes
    back costs no curve operation twice. Each table is a bounded :class:`~overlay_node.lru.LruMap` keyed by public
    data (a peer's 33-byte key, a BRC-43 invoice number):

    - ``ecdh``: peer key -> the ECDH shared secret (:meth:`Identity.shared_secret`);
    - ``points``: peer key -> the parsed point (a BRC-42 child public key is that point plus a tweak);
    - ``secrets``: (counterparty key, invoice) -> our BRC-42 child private key, for the keys we sign with (a
      stream's receipts are all signed with one);
    - ``publics``: (counterparty key, invoice) -> the counterparty's parsed key and its BRC-42 tweak (the child key
      is the one plus the other times G), for the keys whose signatures we check (a subscriber checks every
      receipt of a stream with one; :func:`ecdsa_verify_tweaked` checks them without computing the child key).

    ``crypto/brc42.py`` decides what goes in the last three; nothing else reads them.
    """

    __slots__ = ("ecdh", "points", "publics", "secrets")

    def __init__(self, *, peers: int = _PEER_CACHE_SIZE, children: int = _CHILD_CACHE_SIZE) -> None:
        self.ecdh: LruMap[bytes, bytes] = LruMap(peers)
        self.points: LruMap[bytes, PublicKey] = LruMap(peers)
        self.secrets: LruMap[tuple[bytes, str], bytes] = LruMap(children)
        self.publics: LruMap[tuple[bytes, str], tuple[PublicKey, int]] = LruMap(children)


class Identity:
    """A secp256k1 private key with the operations a node performs with it, and its :class:`KeyCache`
    (``cache``).

    The private key never appears in ``repr`` or logs.
    """

    __slots__ = ("_private", "_public", "_public_hex", "cache")

    def __init__(self, private_key: PrivateKey) -> None:
        self._private = private_key
        self._public = private_key.public_key.format(compressed=True)
        self._public_hex = self._public.hex()
        self.cache = KeyCache()

    @classmethod
    def generate(cls) -> Identity:
        """A new random identity."""
        while True:
            raw = secrets.token_bytes(32)
            if 0 < int.from_bytes(raw, "big") < SECP256K1_N:
                return cls(PrivateKey(raw))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Identity:
        """The identity for a 32-byte big-endian private key.

        Raises:
            BadRequest: not 32 bytes, zero, or not below the group order.
        """
        if len(raw) != 32:
            raise BadRequest(f"private key must be 32 bytes, got {len(raw)}")
        if not 0 < int.from_bytes(raw, "big") < SECP256K1_N:
            raise BadRequest("private key is out of range for secp256k1")
        return cls(PrivateKey(bytes(raw)))

    @property
    def private_key(self) -> PrivateKey:
        """The coincurve private key (for signing with derived keys)."""
        return self._private

    @property
    def private_bytes(self) -> bytes:
        """The 32-byte private key."""
        return bytes(self._private.secret)

    @property
    def public_key(self) -> bytes:
        """The 33-byte compressed public key."""
        return self._public

    @property
    def public_key_hex(self) -> str:
        """The public key as 66 lower-case hex characters."""
        return self._public_hex

    def shared_secret(self, peer_pub: bytes | str) -> bytes:
        """The BRC-42 ECDH shared secret ``priv * Pub`` as a 33-byte compressed point.

        Raises:
            BadRequest: ``peer_pub`` is not a valid compressed public key.
        """
        ecdh = self.cache.ecdh
        if isinstance(peer_pub, bytes):
            cached = ecdh.get(peer_pub)
            if cached is not None:
                return cached
        point = parse_public_key(peer_pub)
        raw = point.format(compressed=True)
        cached = ecdh.get(raw)
        if cached is not None:
            return cached
        secret = point.multiply(self._private.secret).format(compressed=True)
        ecdh.put(raw, secret)
        return secret

    def sign_digest(self, digest: bytes) -> bytes:
        """A DER ECDSA signature (low-S, RFC 6979 nonce) over a 32-byte digest with the root key."""
        return self._private.sign(digest, hasher=None)

    def __repr__(self) -> str:
        return f"Identity({self._public_hex})"
