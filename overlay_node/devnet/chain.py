"""The devnet's own block contents: its genesis supply and the coinbases of its blocks."""

from __future__ import annotations

from collections.abc import Sequence

from bsv.script.script import Script
from bsv.transaction import Transaction, TransactionInput, TransactionOutput

from overlay_node.chain.blocks import EASIEST_BITS, NULL_HASH

#: a devnet block header's ``bits`` (regtest's easiest target; the devnet does no proof of work)
DEVNET_BITS = EASIEST_BITS
#: every satoshi there will ever be, paid to the faucet key by the genesis block
GENESIS_SUPPLY = 21_000_000 * 100_000_000


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
