"""Coin selection, fees, and building and signing P2PKH transactions. Synchronous and pure (the caller supplies
the coins and the keys).

Building: straight to bytes with ``crypto/sighash.sign_p2pkh`` (BIP143 digests, coincurve signatures), not with
bsv-sdk's ``Transaction`` objects, for speed: a paid stream pays per packet, and the objects' churn made a
one-input payment about a quarter slower than it is now (the EC operations are the rest).
``tests/unit/test_sighash.py`` holds the result byte-identical to bsv-sdk's (``P2PKH().unlock`` and
``Transaction.sign``) and valid under its script interpreter.

Fees: a transaction's size is estimated with the largest P2PKH unlocking script (107 bytes), so the real size
never exceeds the estimate and the fee always meets ``rate`` satoshis per 1000 bytes (rounded up, as ARC and
the devnet compute it).

Selection: proven coins before unproven ones (a payment's BEEF then stops at them), the smallest single coin
that covers the payment, else the largest coins until they cover it. Change goes to a fresh key; change that
would be 0 is left to the fee.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from overlay_node.chain.formats import SourceOutput
from overlay_node.crypto.bump import varint_bytes
from overlay_node.crypto.sighash import P2pkhSpend, Spend, outpoint_bytes, sign_p2pkh, sign_transaction, txid_of_raw
from overlay_node.errors import InsufficientFunds
from overlay_node.store.records import Outpoint, UtxoRecord

__all__ = ["BuiltTx", "CoinSet", "build_transaction", "estimate_size", "required_fee", "select_coins"]

#: the largest P2PKH unlocking script: push(72-byte DER signature + sighash byte) + push(33-byte key)
P2PKH_UNLOCK_MAX = 107
#: a P2PKH locking script's length
P2PKH_SCRIPT_LEN = 25


def required_fee(size: int, rate: int) -> int:
    """The fee for ``size`` bytes at ``rate`` satoshis per 1000 bytes, rounded up."""
    return -(-size * rate // 1000)


def estimate_size(n_inputs: int, output_script_lens: Sequence[int]) -> int:
    """An upper bound of the size of a transaction spending ``n_inputs`` P2PKH outputs."""
    inputs = n_inputs * (32 + 4 + 1 + P2PKH_UNLOCK_MAX + 4)
    outputs = sum(8 + len(varint_bytes(n)) + n for n in output_script_lens)
    return 4 + len(varint_bytes(n_inputs)) + inputs + len(varint_bytes(len(output_script_lens))) + outputs + 4


def select_coins(
    coins: Sequence[UtxoRecord],
    amount: int,
    output_script_lens: Sequence[int],
    rate: int,
    *,
    change_outputs: int = 1,
    extra_inputs: int = 0,
) -> tuple[list[UtxoRecord], int, int]:
    """Pick coins paying ``amount`` plus the fee.

    Args:
        coins: the spendable, unreserved coins.
        amount: what the outputs pay in total.
        output_script_lens: the lengths of the outputs' locking scripts (the change outputs are added here).
        rate: satoshis per 1000 bytes.
        change_outputs: how many P2PKH outputs the change is split into (the fee counts them all).
        extra_inputs: inputs the transaction spends besides the coins picked here (e.g. a token; their value is
            not in ``amount``, the fee counts them as the largest P2PKH input).

    Returns:
        ``(coins, fee, change)``: ``change`` (the total of the change outputs) is 0 when no change output is
        needed.

    Raises:
        InsufficientFunds: the coins cannot cover ``amount`` and the fee.
    """
    with_change = [*output_script_lens, *[P2PKH_SCRIPT_LEN] * max(1, change_outputs)]

    def fee_for(n: int, lens: Sequence[int]) -> int:
        return required_fee(estimate_size(n + extra_inputs, lens), rate)

    single = _smallest(coins, amount + fee_for(1, with_change))
    if single is None:
        # an exact single coin needs no change
        single = _smallest(coins, amount + fee_for(1, output_script_lens), exact=True)
    picked = [single] if single is not None else []
    if not picked:
        total = 0
        for coin in sorted(coins, key=lambda c: (-c.satoshis, not c.proven)):
            picked.append(coin)
            total += coin.satoshis
            if total >= amount + fee_for(len(picked), output_script_lens):
                break
    total = sum(c.satoshis for c in picked)
    fee_no_change = fee_for(len(picked), output_script_lens)
    if not picked or total < amount + fee_no_change:
        have = sum(c.satoshis for c in coins)
        raise InsufficientFunds(
            f"the wallet has {have} spendable satoshis, {amount + fee_no_change} are needed "
            f"({amount} plus a fee of {fee_no_change}): fund it (e.g. `overlay-node ctl wallet faucet`)"
        )
    fee_change = fee_for(len(picked), with_change)
    change = total - amount - fee_change
    if change >= 1:
        return picked, fee_change, change
    return picked, total - amount, 0


def _smallest(coins: Iterable[UtxoRecord], need: int, *, exact: bool = False) -> UtxoRecord | None:
    """The smallest coin of at least ``need`` satoshis (exactly ``need`` with ``exact``), a proven one if any.

    One pass, no sort: a paid stream picks a coin per packet from among hundreds.
    """
    best: UtxoRecord | None = None
    best_unproven: UtxoRecord | None = None
    for coin in coins:
        sats = coin.satoshis
        if sats < need or (exact and sats != need):
            continue
        if coin.proven:
            if best is None or sats < best.satoshis:
                best = coin
        elif best_unproven is None or sats < best_unproven.satoshis:
            best_unproven = coin
    return best if best is not None else best_unproven


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltTx:
    """A signed transaction: its bytes, txid, outputs, the coins it spends and its fee."""

    txid: str
    raw: bytes
    outputs: tuple[SourceOutput, ...]
    spends: tuple[UtxoRecord, ...]
    fee: int


def build_transaction(
    coins: Sequence[UtxoRecord],
    outputs: Sequence[tuple[bytes, int]],
    key_for: Callable[[UtxoRecord], bytes],
    *,
    fee: int,
    public_for: Callable[[UtxoRecord], bytes | None] | None = None,
    extra: Sequence[Spend] = (),
) -> BuiltTx:
    """Build and sign a transaction spending ``coins`` (all P2PKH), then ``extra`` inputs (signed as they say, e.g. a
    PushDrop token), to ``outputs`` (script, satoshis).

    Args:
        coins: the inputs, in order.
        outputs: the outputs, in order (the change output included, if any).
        key_for: the 32-byte private key of a coin.
        public_for: the coin key's compressed public key when the caller knows it (None: computed).
        fee: the fee the caller computed (recorded, and checked against the amounts).

    Raises:
        ValueError: the outputs and fee do not add up to the inputs (a bug in the caller).
    """
    if sum(c.satoshis for c in coins) + sum(e.satoshis for e in extra) != sum(s for _, s in outputs) + fee:
        raise ValueError("inputs, outputs and fee do not balance")
    spends = [
        P2pkhSpend(
            outpoint_bytes(c.txid, c.vout),
            c.script,
            c.satoshis,
            key_for(c),
            None if public_for is None else public_for(c),
        )
        for c in coins
    ]
    raw = sign_transaction([*spends, *extra], outputs) if extra else sign_p2pkh(spends, outputs)
    return BuiltTx(
        txid=txid_of_raw(raw),
        raw=raw,
        outputs=tuple(SourceOutput(satoshis=sats, locking_script=script) for script, sats in outputs),
        spends=tuple(coins),
        fee=fee,
    )


class CoinSet:
    """The wallet's spendable coins in memory, with reservations and running totals (so that a balance, a
    reservation or a proof costs O(1) per coin touched, however many coins there are)."""

    def __init__(self) -> None:
        self._coins: dict[Outpoint, UtxoRecord] = {}
        self._free: dict[Outpoint, UtxoRecord] = {}  # the unreserved ones (a payment picks among these)
        self._by_txid: dict[str, set[Outpoint]] = {}
        self._reserved: set[Outpoint] = set()
        # satoshis by (proven, reserved)
        self._sums = {(False, False): 0, (False, True): 0, (True, False): 0, (True, True): 0}

    def __len__(self) -> int:
        return len(self._coins)

    def __contains__(self, op: object) -> bool:
        return op in self._coins

    def _account(self, coin: UtxoRecord, sign: int) -> None:
        self._sums[(coin.proven, coin.outpoint in self._reserved)] += sign * coin.satoshis

    def add(self, coin: UtxoRecord) -> None:
        """Add a coin, unreserved; a coin already here is replaced and keeps its reservation."""
        reserved = coin.outpoint in self._reserved
        self.remove(coin.outpoint)
        self._coins[coin.outpoint] = coin
        self._by_txid.setdefault(coin.txid, set()).add(coin.outpoint)
        if reserved:
            self._reserved.add(coin.outpoint)
        else:
            self._free[coin.outpoint] = coin
        self._account(coin, 1)

    def remove(self, op: Outpoint) -> UtxoRecord | None:
        coin = self._coins.pop(op, None)
        if coin is None:
            return None
        self._account(coin, -1)
        self._reserved.discard(op)
        self._free.pop(op, None)
        ops = self._by_txid.get(coin.txid)
        if ops is not None:
            ops.discard(op)
            if not ops:
                del self._by_txid[coin.txid]
        return coin

    def reserve(self, coins: Iterable[UtxoRecord]) -> None:
        for given in coins:
            coin = self._coins.get(given.outpoint)  # the stored record: it may be proven by now
            if coin is not None and coin.outpoint not in self._reserved:
                self._account(coin, -1)
                self._reserved.add(coin.outpoint)
                del self._free[coin.outpoint]
                self._account(coin, 1)

    def release(self, ops: Iterable[Outpoint]) -> None:
        for op in ops:
            coin = self._coins.get(op)
            if coin is not None and op in self._reserved:
                self._account(coin, -1)
                self._reserved.discard(op)
                self._free[op] = coin
                self._account(coin, 1)

    def mark_proven(self, txid: str) -> None:
        """The coins of ``txid`` are in a mined transaction now."""
        for op in list(self._by_txid.get(txid, ())):
            coin = self._coins[op]
            if not coin.proven:
                self._account(coin, -1)
                self._coins[op] = proven = dataclasses.replace(coin, proven=True)
                if op in self._free:
                    self._free[op] = proven
                self._account(proven, 1)

    def free(self) -> list[UtxoRecord]:
        """The unreserved coins."""
        return list(self._free.values())

    def all(self) -> list[UtxoRecord]:
        return list(self._coins.values())

    def totals(self) -> tuple[int, int, int]:
        """``(confirmed, unconfirmed, reserved)`` satoshis (the first two unreserved)."""
        s = self._sums
        return s[(True, False)], s[(False, False)], s[(True, True)] + s[(False, True)]
