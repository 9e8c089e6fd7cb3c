"""Block building for the devnet: merkle trees, BRC-74 merkle paths (BUMP), 80-byte headers and coinbases.

Pure functions over txids and bytes, no I/O. Hash conventions are Bitcoin's: a txid or block hash is shown as
the byte-reversed hex of its double SHA-256; merkle nodes and header fields use the internal (unreversed)
bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from bsv.script.script import Script
from bsv.transaction import Transaction, TransactionInput, TransactionOutput

from overlay_node.crypto.bump import encode_path

#: a devnet block header's ``bits`` (regtest's easiest target; the devnet does no proof of work)
DEVNET_BITS = 0x207FFFFF
BLOCK_VERSION = 0x20000000
NULL_HASH = "00" * 32
#: every satoshi there will ever be, paid to the faucet key by the genesis block
GENESIS_SUPPLY = 21_000_000 * 100_000_000


def hash256(data: bytes) -> bytes:
    """Double SHA-256."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def txid_of(raw: bytes) -> str:
    """The txid (display hex) of a serialized transaction."""
    return hash256(raw)[::-1].hex()


def p2pkh_script(pubkey_hash: bytes) -> bytes:
    """``OP_DUP OP_HASH160 <20 bytes> OP_EQUALVERIFY OP_CHECKSIG``."""
    if len(pubkey_hash) != 20:
        raise ValueError("a P2PKH public key hash is 20 bytes")
    return b"\x76\xa9\x14" + pubkey_hash + b"\x88\xac"


def is_data_script(script: bytes) -> bool:
    """True for provably unspendable data carriers (``OP_RETURN ...`` or ``OP_FALSE OP_RETURN ...``)."""
    return script[:1] == b"\x6a" or script[:2] == b"\x00\x6a"


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
    bits: int = DEVNET_BITS
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


# -- coinbase ------------------------------------------------------------------------------------------------


def _script_number(n: int) -> bytes:
    """Minimal little-endian script number encoding of a non-negative ``n``."""
    out = bytearray()
    while n:
        out.append(n & 0xFF)
        n >>= 8
    if out and out[-1] & 0x80:
        out.append(0)
    return bytes(out)


def _push(data: bytes) -> bytes:
    if len(data) < 0x4C:
        return bytes([len(data)]) + data
    return b"\x4c" + bytes([len(data)]) + data


def coinbase_tx(height: int, outputs: Sequence[tuple[int, bytes]]) -> Transaction:
    """A coinbase for ``height`` (BIP-34 height push, so every coinbase txid is unique) paying ``outputs``.

    Args:
        outputs: ``(satoshis, locking script)`` pairs.
    """
    height_push = _push(_script_number(height)) if height else b"\x00"
    unlocking = Script(height_push + _push(b"/overlay-node devnet/"))
    tx_in = TransactionInput(source_txid=NULL_HASH, source_output_index=0xFFFFFFFF, unlocking_script=unlocking)
    return Transaction([tx_in], [TransactionOutput(Script(script), sats) for sats, script in outputs])


#: the locking script of every coinbase after genesis (the devnet burns fees)
BURN_SCRIPT = b"\x00\x6a" + _push(b"devnet")
