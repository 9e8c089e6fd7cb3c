"""PushDrop tokens ("lock-before" layout) and the BRC-42/BRC-3 signing scheme SHIP, SLAP and UHRP tokens share.

A token's locking script is ``<locking key> OP_CHECKSIG <field 0> ... <field n-1> OP_2DROP x floor(n/2)
[OP_DROP]``: spendable with one signature by the locking key, carrying data the script drops. Pure functions over
bytes.

1. :func:`encode` writes each field with the shortest push (``crypto.scripts.minimal_push``).
2. :func:`decode` reads a script exactly as @bsv/sdk 2.1.0's ``PushDrop.decode`` reads the chunks its ``Script``
   parser makes: the same scripts are accepted and the same fields come back, quirks included:

   - chunk 0 must carry data that is a public key (compressed ``02/03`` with x taken mod p, or uncompressed /
     hybrid ``04/06/07``); chunk 1 is skipped unchecked; the fields are chunks 2, 3, ... up to the first chunk
     followed by ``OP_DROP`` or ``OP_2DROP`` (to the end of the script when none is);
   - a push that runs past the end of the script yields the bytes that are there; an ``OP_RETURN`` outside
     ``OP_IF`` blocks swallows the rest of the script as its data;
   - a chunk without data stands for ``OP_0`` -> ``00``, ``0x50..0x5f`` -> the byte ``op - 0x50`` (so
     ``OP_1..OP_15`` give ``01..0f``), ``OP_1NEGATE`` -> ``81``, anything else (``OP_16`` too) -> empty. So an
     empty field encodes as ``OP_0`` and decodes as ``00``, and a field ``10`` encodes as ``OP_16`` and decodes
     as empty, in the TypeScript SDK as here.

   The locking key comes back compressed (what ``lockingPublicKey.toString()`` gives).
3. Tokens are signed the way the reference advertisers and storage servers sign them (``PushDrop.lock(fields,
   protocol, '1', 'anyone', forSelf=true, includeSignature=true)``): the signature is BRC-3 over the concatenated
   fields with key id ``"1"`` and counterparty ``anyone``, appended as the last field; the locking key is our own
   child key for that counterparty (``for_self``). :func:`token_secret` is that key's private half, which spends
   (revokes) the token with a lone ``<signature + sighash byte>`` unlocking script.
4. :func:`is_linked` is the reference verifier (``isTokenSignatureCorrectlyLinked``): as ``anyone``, derive the
   claimed identity's child key, require it to equal the locking key and the signature to verify under it. The
   identity key and the signature are read as @bsv/sdk reads them (``PublicKey.fromString``,
   ``Signature.fromDER``, ``ECDSA.verify``: high S accepted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from coincurve import PublicKey

from overlay_node.crypto.brc42 import (
    ANYONE,
    ProtocolID,
    create_signature,
    derive_child_public_key,
    derive_private_key,
    derive_public_key,
    invoice_number,
)
from overlay_node.crypto.keys import SECP256K1_N, Identity
from overlay_node.crypto.scripts import (
    OP_0,
    OP_1NEGATE,
    OP_2DROP,
    OP_CHECKSIG,
    OP_DROP,
    OP_PUSHDATA1,
    OP_PUSHDATA2,
    OP_PUSHDATA4,
    OP_RETURN,
    minimal_push,
)
from overlay_node.errors import BadRequest

__all__ = [
    "ANYONE",
    "KEY_ID",
    "PushDrop",
    "decode",
    "encode",
    "is_linked",
    "lock",
    "read_public_key",
    "token_locking_key",
    "token_secret",
    "token_signature",
]

#: the BRC-43 key id every SHIP, SLAP and UHRP token uses
KEY_ID: Final = "1"

#: the field prime of secp256k1
_P: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
_OP_IF_FAMILY: Final = frozenset((0x63, 0x64, 0x65, 0x66))  # OP_IF, OP_NOTIF, OP_VERIF, OP_VERNOTIF
_OP_ENDIF: Final = 0x68
_DROPS: Final = (OP_DROP, OP_2DROP)


@dataclass(frozen=True, slots=True)
class PushDrop:
    """A decoded PushDrop script: the (compressed) locking key and the data fields, a signature last if any."""

    locking_key: bytes
    fields: tuple[bytes, ...]


def encode(locking_key: bytes, fields: Sequence[bytes]) -> bytes:
    """The lock-before PushDrop script locking ``fields`` to ``locking_key`` (a 33-byte compressed key).

    Raises:
        ValueError: the key is not 33 bytes.
    """
    if len(locking_key) != 33:
        raise ValueError("a PushDrop locking key is a 33-byte compressed public key")
    parts = [b"\x21", bytes(locking_key), bytes([OP_CHECKSIG])]
    parts += (minimal_push(bytes(f)) for f in fields)
    parts.append(bytes([OP_2DROP]) * (len(fields) // 2))
    if len(fields) % 2:
        parts.append(bytes([OP_DROP]))
    return b"".join(parts)


def _chunks(script: bytes) -> list[tuple[int, bytes | None]]:
    """The chunks @bsv/sdk's ``Script`` parser makes of ``script``: ``(opcode, data or None)``."""
    chunks: list[tuple[int, bytes | None]] = []
    n = len(script)
    pos = 0
    depth = 0  # OP_IF nesting, as the SDK counts it (it may go negative)
    while pos < n:
        op = script[pos]
        pos += 1
        if op == OP_RETURN and depth == 0:
            chunks.append((op, script[pos:]))
            break
        if op in _OP_IF_FAMILY:
            depth += 1
        elif op == _OP_ENDIF:
            depth -= 1
        if 0 < op < OP_PUSHDATA1:
            size = op
        elif op == OP_PUSHDATA1:
            size = script[pos] if pos < n else 0
            pos = min(pos + 1, n)
        elif op == OP_PUSHDATA2:
            size = int.from_bytes(script[pos : pos + 2].ljust(2, b"\0"), "little")
            pos = min(pos + 2, n)
        elif op == OP_PUSHDATA4:
            size = int.from_bytes(script[pos : pos + 4].ljust(4, b"\0"), "little")
            pos = min(pos + 4, n)
        else:
            chunks.append((op, None))
            continue
        end = min(pos + size, n)
        chunks.append((op, script[pos:end]))
        pos = end
    return chunks


def read_public_key(data: bytes) -> bytes | None:
    """A public key as @bsv/sdk's ``PublicKey.fromString`` reads it, compressed; None when it refuses it.

    Compressed keys (``02``/``03`` + 32 bytes) have x reduced mod p first; uncompressed (``04``) and hybrid
    (``06`` even y, ``07`` odd y) keys must lie on the curve (coordinates at or above p are refused here).
    """
    try:
        if len(data) == 33 and data[0] in (2, 3):
            x = int.from_bytes(data[1:], "big") % _P
            return PublicKey(data[:1] + x.to_bytes(32, "big")).format(compressed=True)
        if len(data) == 65 and data[0] in (4, 6, 7):
            if data[0] != 4 and data[-1] % 2 != data[0] - 6:
                return None
            return PublicKey(b"\x04" + data[1:]).format(compressed=True)
    except ValueError:
        return None
    return None


def decode(script: bytes) -> PushDrop:
    """Read a lock-before PushDrop script as @bsv/sdk's ``PushDrop.decode`` does (see the module docstring).

    Raises:
        ValueError: the script is empty, its first chunk carries no data, or that data is not a public key.
    """
    chunks = _chunks(bytes(script))
    if not chunks:
        raise ValueError("not a PushDrop script: empty")
    key_data = chunks[0][1]
    if key_data is None:
        raise ValueError("not a PushDrop script: the first chunk pushes no locking key")
    locking_key = read_public_key(key_data)
    if locking_key is None:
        raise ValueError("not a PushDrop script: the locking key is not a public key")
    fields: list[bytes] = []
    for i in range(2, len(chunks)):
        op, data = chunks[i]
        field = data or b""
        if not field:
            if 0x50 <= op <= 0x5F:
                field = bytes([op - 0x50])
            elif op == OP_0:
                field = b"\x00"
            elif op == OP_1NEGATE:
                field = b"\x81"
        fields.append(field)
        if i + 1 < len(chunks) and chunks[i + 1][0] in _DROPS:
            break
    return PushDrop(locking_key=locking_key, fields=tuple(fields))


# -- the token signing scheme (SHIP, SLAP, UHRP) ---------------------------------------------------------------


def token_signature(identity: Identity, fields: Sequence[bytes], protocol: ProtocolID) -> bytes:
    """The BRC-3 signature a token carries as its last field: over the concatenated ``fields``, key id ``"1"``,
    counterparty ``anyone``."""
    return create_signature(identity, b"".join(fields), protocol=protocol, key_id=KEY_ID, counterparty="anyone")


def token_locking_key(identity: Identity, protocol: ProtocolID) -> bytes:
    """The key a token of ``protocol`` is locked to: our own child key for counterparty ``anyone``."""
    return derive_public_key(identity, protocol, KEY_ID, "anyone", for_self=True)


def token_secret(identity: Identity, protocol: ProtocolID) -> bytes:
    """The 32-byte private key of :func:`token_locking_key` (what spends, i.e. revokes, the token)."""
    return bytes(derive_private_key(identity, protocol, KEY_ID, "anyone").secret)


def lock(identity: Identity, fields: Sequence[bytes], protocol: ProtocolID) -> bytes:
    """A signed token script: ``fields`` then their signature, locked to :func:`token_locking_key`."""
    signature = token_signature(identity, fields, protocol)
    return encode(token_locking_key(identity, protocol), [*fields, signature])


def _read_der(signature: bytes) -> tuple[int, int] | None:
    """``(r, s)`` of a DER signature as @bsv/sdk's ``Signature.fromDER`` reads it (short lengths only, one
    leading zero stripped where the next byte has its high bit set, an unpadded high bit read as positive)."""
    sig = bytes(signature)
    if len(sig) < 6 or sig[0] != 0x30 or sig[1] & 0x80 or sig[1] + 2 != len(sig) or sig[2] != 0x02:
        return None
    r_len = sig[3]
    if r_len & 0x80:
        return None
    r = sig[4 : 4 + r_len]
    at = 4 + r_len
    if at + 1 >= len(sig) or sig[at] != 0x02 or sig[at + 1] & 0x80 or sig[at + 1] + at + 2 != len(sig):
        return None
    s = sig[at + 2 :]
    for part in (r, s):
        if part[:1] == b"\x00" and not (len(part) > 1 and part[1] & 0x80):
            return None
    return int.from_bytes(r, "big"), int.from_bytes(s, "big")


def _verify(public_key: bytes, signature: bytes, digest: bytes) -> bool:
    rs = _read_der(signature)
    if rs is None:
        return False
    r, s = rs
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        return False
    s = min(s, SECP256K1_N - s)  # libsecp256k1 checks low-S signatures only; ECDSA accepts either
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    der = _der(compact)
    return bool(PublicKey(public_key).verify(der, digest, hasher=None))


def _der(compact: bytes) -> bytes:
    def integer(value: bytes) -> bytes:
        value = value.lstrip(b"\0") or b"\0"
        if value[0] & 0x80:
            value = b"\0" + value
        return b"\x02" + bytes([len(value)]) + value

    body = integer(compact[:32]) + integer(compact[32:])
    return b"\x30" + bytes([len(body)]) + body


def is_linked(
    identity_key: bytes,
    locking_key: bytes,
    data_fields: Sequence[bytes],
    signature: bytes,
    protocol: ProtocolID,
) -> bool:
    """The reference linkage check: ``signature`` over the concatenated ``data_fields`` verifies under the child
    key ``anyone`` derives for ``identity_key`` (key id ``"1"``, ``protocol``), and that key is ``locking_key``.

    Never raises for bad keys or signatures: they are simply not linked.
    """
    identity = read_public_key(bytes(identity_key))
    locked = read_public_key(bytes(locking_key))
    if identity is None or locked is None:
        return False
    try:
        invoice = invoice_number(protocol, KEY_ID)
    except BadRequest:
        return False
    try:
        expected = derive_child_public_key(ANYONE, identity, invoice)
    except (ValueError, BadRequest):  # the child would be the point at infinity
        return False
    if expected != locked:
        return False
    return _verify(expected, bytes(signature), hashlib.sha256(b"".join(data_fields)).digest())
