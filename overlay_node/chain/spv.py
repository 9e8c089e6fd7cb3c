"""SPV: a whole BEEF checked against a chain's block roots (BRC-62 "Validation Process", BRC-67).

Every transaction of the BEEF is checked in order, parents first:
1. A transaction with a merkle path (BUMP) is proven when the root its path computes is the merkle root of the
   block at the path's height; it is taken as valid without looking at its inputs.
2. Any other transaction is checked fully (:func:`~overlay_node.chain.validation.checked_fee`: structure,
   every input's script, outputs not above inputs, the fee policy) against the outputs it spends, which come from
   the BEEF's earlier transactions or, for parents the BEEF leaves out (V2 txid-only entries), from ``held``.

Pure and synchronous: the caller fetches the roots of :func:`claims` and the outputs it holds first. ``roots``
may be None ("scripts only", as the reference engine's ``'scripts only'`` chain tracker): merkle paths are then
read and must prove their transaction, but no block is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from overlay_node.chain.formats import ParsedTx, SourceOutput, Submission
from overlay_node.chain.refusals import ArcCode, Refusal
from overlay_node.chain.validation import Outpoint, Policy, checked_fee

__all__ = ["Verified", "claims", "verify_beef"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified:
    """What :func:`verify_beef` found: the fee of each transaction it checked (proven ones are not checked)."""

    fees: Mapping[str, int]

    @property
    def checked(self) -> int:
        """How many transactions were checked script by script."""
        return len(self.fees)


def claims(submission: Submission) -> dict[int, set[str]]:
    """The roots the BEEF's merkle paths compute, by block height: what a chain tracker is asked to confirm
    before :func:`verify_beef`."""
    out: dict[int, set[str]] = {}
    for t in submission.txs:
        if t.block_height is not None and t.bump_root is not None:
            out.setdefault(t.block_height, set()).add(t.bump_root)
    return out


def verify_beef(
    submission: Submission,
    *,
    roots: Mapping[int, str | None] | None,
    held: Mapping[str, Sequence[SourceOutput]],
    policy: Policy,
) -> Verified:
    """Check every transaction of ``submission`` (see the module docstring).

    Args:
        submission: a parsed BEEF (or a single transaction).
        roots: the merkle root of the block at each height the BEEF's paths name (None: no such block); None for
            scripts only.
        held: the outputs of transactions the caller holds, for txid-only entries and parents the BEEF leaves out.
        policy: the fee and size policy every unproven transaction must meet.

    Raises:
        Refusal: 469 for a path whose root is not the block's, 462 for an unknown or missing input (a txid-only
            entry the caller does not hold among them), 461 for a failing script, 463/464/465 for malformed,
            unbalanced or underpaying transactions; the txid concerned is named.
    """
    for txid in submission.txid_only:
        if txid not in held:
            raise Refusal(
                ArcCode.INPUTS, f"the BEEF names {txid} by txid only, and this node does not hold it", txid=txid
            )
    sources: dict[Outpoint, SourceOutput] = {}
    earlier: dict[str, ParsedTx] = {}  # the BEEF's transactions before this one, whose outputs it may spend
    fees: dict[str, int] = {}
    for ptx in submission.txs:
        if ptx.block_height is not None:
            if roots is not None and roots.get(ptx.block_height) != ptx.bump_root:
                raise Refusal(
                    ArcCode.VALIDATING_MERKLE_ROOTS,
                    f"the merkle path of {ptx.txid} does not match block {ptx.block_height}",
                    txid=ptx.txid,
                )
        else:
            for tx_in in ptx.inputs:
                outpoint = (tx_in.txid, tx_in.vout)
                if outpoint in sources:
                    continue
                # only the outputs spent: a parent may be a coin split with a thousand outputs (the first payment
                # of coins from a faucet carries the devnet's), proven or held
                parent = earlier.get(tx_in.txid)
                if parent is not None:
                    if tx_in.vout < len(parent.outputs):
                        satoshis, script = parent.outputs[tx_in.vout]
                        sources[outpoint] = SourceOutput(satoshis=satoshis, locking_script=script)
                    continue
                outputs = held.get(tx_in.txid)
                if outputs is not None and tx_in.vout < len(outputs):
                    sources[outpoint] = outputs[tx_in.vout]
            fees[ptx.txid] = checked_fee(ptx, sources, policy)  # plain P2PKH on its fast path
        earlier[ptx.txid] = ptx
    return Verified(fees=fees)
