"""Standard locking scripts and their pieces: HASH160, P2PKH, data carriers and minimal pushes. Pure functions over
bytes, shared by the wallet, the payee, the devnet, the overlay engine and the PushDrop token codec.
"""

from __future__ import annotations

import hashlib

__all__ = ["hash160", "is_data_script", "is_p2pkh", "minimal_push", "p2pkh_for_key", "p2pkh_script"]

_P2PKH_HEAD = b"\x76\xa9\x14"
_P2PKH_TAIL = b"\x88\xac"
OP_0 = 0x00
OP_PUSHDATA1 = 0x4C
OP_PUSHDATA2 = 0x4D
OP_PUSHDATA4 = 0x4E
OP_1NEGATE = 0x4F
OP_1 = 0x51
OP_16 = 0x60
OP_RETURN = 0x6A
OP_DROP = 0x75
OP_2DROP = 0x6D
OP_CHECKSIG = 0xAC


def hash160(data: bytes) -> bytes:
    """RIPEMD-160 of SHA-256."""
    digest = hashlib.sha256(data).digest()
    try:
        return hashlib.new("ripemd160", digest).digest()
    except ValueError:  # OpenSSL 3 builds without the legacy provider lack RIPEMD-160
        from Cryptodome.Hash import RIPEMD160

        return bytes(RIPEMD160.new(digest).digest())


def p2pkh_script(pubkey_hash: bytes) -> bytes:
    """``OP_DUP OP_HASH160 <20 bytes> OP_EQUALVERIFY OP_CHECKSIG``."""
    if len(pubkey_hash) != 20:
        raise ValueError("a P2PKH public key hash is 20 bytes")
    return _P2PKH_HEAD + pubkey_hash + _P2PKH_TAIL


def p2pkh_for_key(public_key: bytes) -> bytes:
    """The P2PKH locking script of a (33-byte compressed) public key."""
    return _P2PKH_HEAD + hash160(public_key) + _P2PKH_TAIL


def is_p2pkh(script: bytes) -> bool:
    """A plain P2PKH locking script."""
    return len(script) == 25 and script[:3] == _P2PKH_HEAD and script[23:] == _P2PKH_TAIL


def is_data_script(script: bytes) -> bool:
    """True for provably unspendable data carriers (``OP_RETURN ...`` or ``OP_FALSE OP_RETURN ...``)."""
    return script[:1] == b"\x6a" or script[:2] == b"\x00\x6a"


def minimal_push(data: bytes) -> bytes:
    """The shortest script chunk that pushes ``data``: ``OP_0`` for empty or a single zero byte, ``OP_1..OP_16``
    and ``OP_1NEGATE`` for the single bytes they stand for, else a direct push or ``OP_PUSHDATA1/2/4``."""
    n = len(data)
    if n == 0 or (n == 1 and data[0] == 0):
        return bytes([OP_0])
    if n == 1 and 1 <= data[0] <= 16:
        return bytes([OP_1 + data[0] - 1])
    if n == 1 and data[0] == 0x81:
        return bytes([OP_1NEGATE])
    if n < OP_PUSHDATA1:
        return bytes([n]) + data
    if n <= 0xFF:
        return bytes([OP_PUSHDATA1, n]) + data
    if n <= 0xFFFF:
        return bytes([OP_PUSHDATA2]) + n.to_bytes(2, "little") + data
    return bytes([OP_PUSHDATA4]) + n.to_bytes(4, "little") + data
