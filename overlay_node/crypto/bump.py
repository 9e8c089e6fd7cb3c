"""BRC-74 merkle paths (BUMP): the bytes of a single-transaction path and the root a path proves for a txid.

Pure and fast: a paid stream settles a transaction per packet, and every settled transaction comes back from ARC
with its path, which the settlement queue checks before it trusts it. bsv-sdk's ``MerklePath`` objects cost
about ten times more per path than this; the wallet still uses them where it assembles BEEF.

Format (BRC-74): ``blockHeight`` (varint), ``treeHeight`` (one byte), then for each level from the leaves up:
``nLeaves`` (varint) and that many leaves of ``offset`` (varint), ``flags`` (one byte: 0 a hash follows, 1 the
node is paired with itself and no hash follows, 2 a hash follows and it is a transaction the path proves) and the
32-byte hash (internal byte order) unless flag 1.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

__all__ = ["encode_path", "path_root", "sha256d", "varint_at", "varint_bytes"]

_HASH = 0
_DUPLICATE = 1
_TXID = 2


def varint_bytes(n: int) -> bytes:
    """Bitcoin's VarInt encoding of ``n``."""
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def sha256d(data: bytes) -> bytes:
    """Double SHA-256."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def encode_path(levels: Sequence[Sequence[bytes]], index: int, height: int) -> bytes:
    """The BUMP proving leaf ``index`` of a merkle tree given as its levels (level 0 = the txids in internal
    byte order, each level up the hashes of pairs, an odd last node paired with itself), mined at ``height``.

    Level 0 holds the transaction (flag 2) and its sibling; each level above holds the sibling on the way up,
    or the "duplicate" flag where the node is paired with itself.

    Raises:
        ValueError: a tree of a single leaf (BRC-74 has no path of height 0), or ``index`` out of range.
    """
    if len(levels) < 2:
        raise ValueError("a block with one transaction has no merkle path")
    if not 0 <= index < len(levels[0]):
        raise ValueError(f"leaf {index} is not in the tree")
    out = bytearray(varint_bytes(height))
    out.append(len(levels) - 1)
    for h in range(len(levels) - 1):
        node = index >> h
        sibling = node ^ 1
        leaves: list[tuple[int, bytes]] = []
        if h == 0:
            leaves.append((node, varint_bytes(node) + bytes([_TXID]) + levels[0][node]))
        if sibling < len(levels[h]):
            leaves.append((sibling, varint_bytes(sibling) + bytes([_HASH]) + levels[h][sibling]))
        else:
            leaves.append((sibling, varint_bytes(sibling) + bytes([_DUPLICATE])))
        leaves.sort()
        out += varint_bytes(len(leaves))
        for _, leaf in leaves:
            out += leaf
    return bytes(out)


def varint_at(data: bytes, pos: int) -> tuple[int, int]:
    """The VarInt at ``pos`` and the position after it (IndexError past the end)."""
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1
    end = pos + 1 + (2 if first == 0xFD else 4 if first == 0xFE else 8)
    if end > len(data):
        raise IndexError
    return int.from_bytes(data[pos + 1 : end], "little"), end


def _read_levels(data: bytes) -> list[dict[int, bytes | None]]:
    """The leaves of a BUMP, level by level: offset -> hash (None: duplicate). Reads with plain indexing (a node
    checks the path of every transaction it pays or is paid with)."""
    n = len(data)
    _, pos = varint_at(data, 0)  # block height
    tree_height = data[pos]
    pos += 1
    if not 1 <= tree_height <= 64:
        raise ValueError(f"tree height {tree_height} is out of range")
    levels: list[dict[int, bytes | None]] = []
    for _ in range(tree_height):
        count, pos = varint_at(data, pos)
        if count > n:
            raise ValueError("more leaves than the path has bytes")
        level: dict[int, bytes | None] = {}
        for _ in range(count):
            at, pos = varint_at(data, pos)
            flags = data[pos]
            pos += 1
            if flags == _DUPLICATE:
                level[at] = None
            elif flags in (_HASH, _TXID):
                end = pos + 32
                if end > n:
                    raise IndexError
                level[at] = data[pos:end]
                pos = end
            else:
                raise ValueError(f"unknown leaf flags {flags}")
        levels.append(level)
    if pos != n:
        raise ValueError("bytes after the merkle path")
    return levels


#: the parent hashes computed on the way up the paths of :func:`path_root`, by the pair they hash (pure: a pair
#: always hashes to the same parent). The paths of one block's transactions share their upper nodes: a payee shown
#: the paths of a block's hundreds of payments one by one hashes each node of the tree about once, not once per
#: path through it. Emptied when full (about 3 MB)
_PAIRS: dict[bytes, bytes] = {}
_PAIRS_KEPT = 16_384


@functools.lru_cache(maxsize=4096)
def path_root(data: bytes, txid: str) -> str:
    """The merkle root (display hex) that the BUMP ``data`` proves for ``txid`` (display hex).

    Missing siblings are computed from the level below when both children are there (compound paths).

    A block of one transaction (a coinbase alone) has no siblings to prove with: its path is one level holding
    the transaction alone at offset 0 (what @bsv/sdk's ``MerklePath.fromCoinbaseTxidAndHeight`` writes), and the
    root it proves is the txid itself, as @bsv/sdk's ``MerklePath.computeRoot`` has it. (@bsv/sdk answers the txid
    for a lone leaf at any offset; a lone leaf elsewhere than 0 is refused here: no block has that shape.)

    Remembered for the last 4,096 (path, txid) pairs that proved something (refusals are not remembered): the
    coins of one split share its mined transaction, and a payee is shown its path once per coin.

    Raises:
        ValueError: the bytes are not a well-formed BUMP, the path does not hold ``txid`` at level 0, or a node
            on its way up can neither be read nor computed.
    """
    try:
        levels = _read_levels(data)
    except IndexError:
        raise ValueError("the merkle path ends too early") from None
    tree_height = len(levels)
    want = bytes.fromhex(txid)[::-1]
    found = next((o for o, h in levels[0].items() if h == want), None)
    if found is None:
        raise ValueError(f"the merkle path does not hold transaction {txid}")
    offset = found
    if tree_height == 1 and len(levels[0]) == 1 and offset == 0:
        return want[::-1].hex()  # a block of one transaction: its merkle root is the txid

    def node(h: int, o: int, partner: bytes) -> bytes:
        """The hash at level ``h``, offset ``o``; ``partner`` is its sibling (used for a duplicate)."""
        if o in levels[h]:
            value = levels[h][o]
            if value is None and not partner:
                raise ValueError(f"node {o} of level {h} is flagged a duplicate but has no partner")
            return partner if value is None else value
        if h == 0:
            raise ValueError(f"leaf {o} of level 0 is missing")
        left = node(h - 1, 2 * o, b"")
        right = node(h - 1, 2 * o + 1, left)
        return sha256d(left + right)

    current = want
    pairs = _PAIRS
    for h in range(tree_height):
        sibling = node(h, offset ^ 1, current)
        pair = current + sibling if offset % 2 == 0 else sibling + current
        parent = pairs.get(pair)
        if parent is None:
            if len(pairs) >= _PAIRS_KEPT:
                pairs.clear()
            parent = pairs[pair] = sha256d(pair)
        current = parent
        offset >>= 1
    return current[::-1].hex()
