"""Blocks and scripts shared by every user of transactions: txids, merkle trees, BRC-74 merkle paths (BUMP), 80-byte
headers, P2PKH and data-carrier scripts.

Pure functions over txids and bytes, no I/O. Hash conventions are Bitcoin's: a txid or block hash is shown as
the byte-reversed hex of its double SHA-256; merkle nodes and header fields use the internal (unreversed)
bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from overlay_node.crypto.bump import encode_path

#: a header's ``bits`` when none is given (regtest's easiest target: the devnet does no proof of work)
EASIEST_BITS = 0x207FFFFF
BLOCK_VERSION = 0x20000000
NULL_HASH = "00" * 32


def hash256(data: bytes) -> bytes:
    """Double SHA-256."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def txid_of(raw: bytes) -> str:
    """The txid (display hex) of a serialized transaction."""
    return hash256(raw)[::-1].hex()


# -- merkle tree and BUMP ------------------------------------------------------------------------------------


def merkle_levels(txids: Sequence[str]) -> list[list[bytes]]:
    """Every level of the merkle tree over ``txids`` (level 0 = the leaves, last level = the root).

    An odd node at the end of a level is paired with itself, as Bitcoin does.
    """
    if not txids:
        raise ValueError("a merkle tree needs at least one transaction")
    level = [bytes.fromhex(t)[::-1] for t in txids]
    levels = [level]
    while len(level) > 1:
        pairs = [(level[i], level[i + 1] if i + 1 < len(level) else level[i]) for i in range(0, len(level), 2)]
        level = [hash256(a + b) for a, b in pairs]
        levels.append(level)
    return levels


def merkle_root(txids: Sequence[str]) -> str:
    """The merkle root (display hex) of a block holding ``txids`` in this order."""
    return merkle_levels(txids)[-1][0][::-1].hex()


def block_merkle_paths(txids: Sequence[str], height: int) -> list[bytes | None]:
    """The serialized BUMP of each transaction of a block (None for all when the block holds only one)."""
    levels = merkle_levels(txids)
    if len(levels) < 2:
        return [None]
    return [encode_path(levels, i, height) for i in range(len(txids))]


# -- headers -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockHeader:
    """An 80-byte block header (hashes in display hex)."""

    version: int
    prev_hash: str
    merkle_root: str
    time: int
    bits: int = EASIEST_BITS
    nonce: int = 0

    def serialize(self) -> bytes:
        return (
            struct.pack("<I", self.version)
            + bytes.fromhex(self.prev_hash)[::-1]
            + bytes.fromhex(self.merkle_root)[::-1]
            + struct.pack("<III", self.time, self.bits, self.nonce)
        )

    @property
    def hash(self) -> str:
        return hash256(self.serialize())[::-1].hex()

    @classmethod
    def parse(cls, data: bytes) -> BlockHeader:
        """Raises ValueError when ``data`` is not 80 bytes."""
        if len(data) != 80:
            raise ValueError(f"a block header is 80 bytes, got {len(data)}")
        version = struct.unpack_from("<I", data, 0)[0]
        time, bits, nonce = struct.unpack_from("<III", data, 68)
        return cls(
            version=version,
            prev_hash=data[4:36][::-1].hex(),
            merkle_root=data[36:68][::-1].hex(),
            time=time,
            bits=bits,
            nonce=nonce,
        )
