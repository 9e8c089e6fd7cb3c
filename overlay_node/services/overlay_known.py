"""The overlay engine's filter of the transactions it has applied: a scalable Bloom filter over txids.

A submission's first read (has a topic applied this transaction already; which of the outputs it spends does a
topic hold) finds nothing for almost every fresh transaction: its txid is new and its inputs spend outputs that no
topic admitted. When the filter holds neither the txid nor any spent txid, that read is skipped: its answer is known
to be empty.

Invariants:

1. Never a false "no": every txid the store has applied is in the filter, so a skipped read would have found
   nothing. The engine adds a txid before its write reaches the store, and the filter is ``ready`` only once every
   txid applied before the engine started has been added from the store (``overlay_applied``; the outputs of a
   transaction are admitted only with its applied row, and applied rows are never deleted). Until then it answers
   "maybe" to everything.
2. A "maybe" may be wrong (about 0.3 % of fresh txids per stage, more for txids that are not the hash of anything,
   such as a made-up outpoint): it costs the read the engine would have made anyway.
3. Memory: two bytes per txid added; a full stage is followed by one twice its size, so a check costs one probe per
   stage (a handful for millions of transactions).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["KnownTxids"]

#: the probes per txid, each 32 bits of the txid itself (a double SHA-256: already uniform)
_HASHES = 4
#: filter bits per txid a stage holds (with four probes: about 0.24 % false "maybe" once full)
_BITS_PER_ENTRY = 16


class _Stage:
    __slots__ = ("bits", "capacity", "count", "mask")

    def __init__(self, capacity: int) -> None:
        size = 1 << max(10, (capacity * _BITS_PER_ENTRY - 1).bit_length())
        self.bits = bytearray(size // 8)
        self.mask = size - 1
        self.capacity = capacity
        self.count = 0


class KnownTxids:
    """The txids the engine may have applied (see the module docstring).

    Args:
        first_capacity: txids the first stage holds before a second (twice as large) is added.
    """

    def __init__(self, first_capacity: int = 1 << 16) -> None:
        self._stages = [_Stage(first_capacity)]
        #: every txid applied before the engine started has been added (invariant 1)
        self.ready = False

    def add(self, txid: str) -> None:
        stage = self._stages[-1]
        if stage.count >= stage.capacity:
            stage = _Stage(stage.capacity * 2)
            self._stages.append(stage)
        key = _key(txid)
        bits, mask = stage.bits, stage.mask
        for _ in range(_HASHES):
            pos = key & mask
            bits[pos >> 3] |= 1 << (pos & 7)
            key >>= 32
        stage.count += 1

    def add_all(self, txids: Iterable[str]) -> None:
        for txid in txids:
            self.add(txid)

    def may_hold(self, txid: str) -> bool:
        """False only when ``txid`` was never added (and the filter is ``ready``)."""
        if not self.ready:
            return True
        key = _key(txid)
        for stage in self._stages:
            bits, mask, probe = stage.bits, stage.mask, key
            for _ in range(_HASHES):
                pos = probe & mask
                if not bits[pos >> 3] & (1 << (pos & 7)):
                    break
                probe >>= 32
            else:
                return True
        return False

    def __len__(self) -> int:
        return sum(stage.count for stage in self._stages)


def _key(txid: str) -> int:
    try:
        return int(txid[: 8 * _HASHES], 16)
    except ValueError:  # not hex: every bit of a made-up key maps somewhere all the same
        return hash(txid) & ((1 << (32 * _HASHES)) - 1)
