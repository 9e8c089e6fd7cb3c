"""UHRP URLs (BRC-26): Base58Check of the 2-byte prefix ``0xce 0x00`` and the 32-byte SHA-256 of the content.

Pure: no I/O. The checksum is the first 4 bytes of double SHA-256 over prefix || hash. :func:`url_for_hash`
returns the bare form, as the TypeScript SDK's ``getURLForHash`` does; :func:`parse_uhrp` accepts the bare
form, ``uhrp:<x>``, ``uhrp://<x>`` and ``web+uhrp://<x>``, and also a 64-digit hex SHA-256 (our own shorthand).
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from overlay_node.errors import BadRequest

__all__ = [
    "UHRP_PREFIX",
    "b58decode",
    "b58encode",
    "hash_from_url",
    "parse_uhrp",
    "url_for_content",
    "url_for_hash",
]

UHRP_PREFIX: Final = b"\xce\x00"
_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX: Final = {c: i for i, c in enumerate(_ALPHABET)}
#: a UHRP URL is ~53 characters; anything much longer is not one (bounds the decoder's work)
MAX_URL_LEN: Final = 128
_HEX64: Final = re.compile(r"^[0-9a-fA-F]{64}$")


def b58encode(data: bytes) -> str:
    """Base58 (Bitcoin alphabet); each leading zero byte becomes a ``1``."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_ALPHABET[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`.

    Raises:
        BadRequest: a character outside the alphabet.
    """
    n = 0
    for c in text:
        digit = _INDEX.get(c)
        if digit is None:
            raise BadRequest(f"not base58: character {c!r}")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def _checksum(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()[:4]


def url_for_hash(digest: bytes) -> str:
    """The bare UHRP URL of a 32-byte SHA-256 ``digest``.

    Raises:
        BadRequest: ``digest`` is not 32 bytes.
    """
    if len(digest) != 32:
        raise BadRequest(f"a UHRP hash is 32 bytes, got {len(digest)}")
    payload = UHRP_PREFIX + digest
    return b58encode(payload + _checksum(payload))


def url_for_content(data: bytes) -> str:
    """The bare UHRP URL of ``data``."""
    return url_for_hash(hashlib.sha256(data).digest())


def hash_from_url(url: str) -> bytes:
    """The 32-byte SHA-256 named by a UHRP URL (bare, ``uhrp:``, ``uhrp://`` or ``web+uhrp://``).

    Raises:
        BadRequest: too long, not base58, wrong length, wrong prefix, or a bad checksum.
    """
    if not isinstance(url, str) or len(url) > MAX_URL_LEN:
        raise BadRequest("not a UHRP URL: too long")
    text = url.strip()
    lower = text.lower()
    for scheme in ("web+uhrp:", "uhrp:"):
        if lower.startswith(scheme):
            text = text[len(scheme) :]
            break
    text = text.removeprefix("//")
    if not text:
        raise BadRequest("not a UHRP URL: empty")
    try:
        raw = b58decode(text)
    except BadRequest as exc:
        raise BadRequest(f"not a UHRP URL: {exc}") from None
    if len(raw) != 2 + 32 + 4:
        raise BadRequest(f"not a UHRP URL: decodes to {len(raw)} bytes, expected 38")
    payload, check = raw[:-4], raw[-4:]
    if _checksum(payload) != check:
        raise BadRequest("bad UHRP URL: checksum mismatch (a typo or a truncated URL)")
    if payload[:2] != UHRP_PREFIX:
        raise BadRequest(f"bad UHRP URL: prefix {payload[:2].hex()} is not ce00")
    return payload[2:]


def parse_uhrp(text: str) -> bytes:
    """A content id given as 64 hex digits or as any accepted UHRP URL form; returns the 32-byte hash.

    Raises:
        BadRequest: neither form.
    """
    if isinstance(text, str) and _HEX64.fullmatch(text.strip()):
        return bytes.fromhex(text.strip())
    return hash_from_url(text)
