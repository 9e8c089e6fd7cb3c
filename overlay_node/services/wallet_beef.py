"""BEEF for the wallet and for payments: writing Atomic BEEF V2 (BRC-95/96) with txid-only entries for what
the recipient already holds, and checking a received payment's BEEF (structure, SPV roots, scripts, amounts,
fee).

Synchronous and CPU-bound, no I/O: the caller fetches what the checks need first (block roots for the heights
the BEEF's merkle paths name, and the transactions it names by txid only) and passes them in.

Reading, writing and checking BEEF is the transaction layer's (``overlay_node/chain/``: ``formats`` reads V1, V2
with txid-only entries and Atomic, and writes V2; ``spv.verify_beef`` checks paths, scripts, balance and fee).
What is here is the wallet's and the payee's side of it: which entries a BEEF for a given recipient holds, and
what a payment must be.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from overlay_node.chain.formats import (
    ATOMIC_BEEF,
    BeefEntry,
    ParsedTx,
    SourceOutput,
    Submission,
    parse_submission,
    parse_transaction,
)
from overlay_node.chain.refusals import Refusal
from overlay_node.chain.spv import verify_beef
from overlay_node.chain.validation import Policy
from overlay_node.errors import InvalidPayment, PaymentError
from overlay_node.store.records import Outpoint
from overlay_node.store.wallet import TxRecord

__all__ = ["CheckedPayment", "beef_entries", "check_payment_beef", "parse_payment_beef", "tx_record"]


def beef_entries(subject: str, txs: Mapping[str, TxRecord], *, known: Collection[str] = ()) -> list[BeefEntry]:
    """The entries of a BEEF of ``subject``, parents first.

    A proven transaction is written with its BUMP and its ancestors are left out; a transaction in ``known``
    (the recipient holds it) is written as a txid only; any other one is written whole, after its ancestors.

    Args:
        subject: the transaction the BEEF is about (must be in ``txs``).
        txs: the subject and its unproven ancestors (more is fine).
        known: txids the recipient already holds.

    Raises:
        PaymentError: an ancestor needed is missing from ``txs`` (the wallet lost track of it).
    """
    out: list[BeefEntry] = []
    done: set[str] = set()
    stack: list[tuple[str, bool]] = [(subject, False)]
    while stack:
        txid, expanded = stack.pop()
        if txid in done:
            continue
        if txid != subject and txid in known:
            done.add(txid)
            out.append(BeefEntry(txid))
            continue
        tx = txs.get(txid)
        if tx is None:
            raise PaymentError(f"cannot build a BEEF for {subject}: ancestor {txid} is not in the wallet")
        if expanded or tx.proven:
            done.add(txid)
            out.append(BeefEntry(txid, tx.raw, tx.merkle_path))
            continue
        stack.append((txid, True))
        stack.extend((p, False) for p in reversed(tx.parents) if p not in done)
    return out


def tx_record(ptx: ParsedTx) -> TxRecord:
    """What the wallet stores of a parsed transaction."""
    parents = tuple(dict.fromkeys(i.txid for i in ptx.inputs))
    return TxRecord(txid=ptx.txid, raw=ptx.raw, parents=parents, merkle_path=ptx.bump, block_height=ptx.block_height)


def parse_payment_beef(data: bytes, *, max_txs: int) -> Submission:
    """Parse a payment's Atomic BEEF.

    Raises:
        InvalidPayment: not Atomic BEEF, malformed, or more than ``max_txs`` transactions.
    """
    if data[:4] != ATOMIC_BEEF:
        raise InvalidPayment("the payment transaction must be Atomic BEEF (BRC-95)")
    try:
        submission = parse_submission(data)
    except Refusal as exc:
        raise InvalidPayment(f"the payment BEEF is malformed: {exc.extra_info}") from None
    if len(submission.txs) + len(submission.txid_only) > max_txs:
        raise InvalidPayment(f"the payment BEEF holds more than {max_txs} transactions")
    return submission


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckedPayment:
    """A payment transaction that passed :func:`check_payment_beef`."""

    txid: str
    output_script: bytes
    output_satoshis: int
    spends: tuple[Outpoint, ...]
    fee: int
    txs: tuple[TxRecord, ...]


def check_payment_beef(
    submission: Submission,
    *,
    roots: Mapping[int, str | None],
    held: Mapping[str, Sequence[SourceOutput]],
    policy: Policy,
) -> CheckedPayment:
    """Check a parsed payment BEEF: every merkle path against the chain, every unproven transaction fully
    (inputs resolved inside the BEEF or from ``held``, scripts, outputs not above inputs, fee).

    Args:
        submission: from :func:`parse_payment_beef`.
        roots: the merkle root of the block at each height the BEEF's paths name (None: no such block).
        held: the outputs of transactions we already hold, for the BEEF's txid-only entries (and parents the
            BEEF leaves out that we hold).
        policy: the fee policy a payment must meet.

    Raises:
        InvalidPayment: anything wrong, with what exactly.
    """
    for txid in submission.txid_only:
        if txid not in held:
            raise InvalidPayment(f"the payment BEEF names {txid} by txid only, and this node does not hold it")
    try:
        verified = verify_beef(submission, roots=roots, held=held, policy=policy)
    except Refusal as exc:
        which = "the payment" if exc.txid in (None, submission.subject.txid) else f"ancestor {exc.txid}"
        raise InvalidPayment(f"{which} is invalid: {exc.extra_info}") from None
    subject = submission.subject
    if not subject.outputs:
        raise InvalidPayment("the payment transaction has no outputs")
    out0 = subject.outputs[0]
    spends = tuple(subject.spends())
    return CheckedPayment(
        txid=subject.txid,
        output_script=out0.script,
        output_satoshis=out0.satoshis,
        spends=spends,
        fee=verified.fees.get(submission.subject.txid, 0),
        txs=tuple(tx_record(t) for t in submission.txs),
    )


def outputs_of(raw: bytes) -> list[SourceOutput]:
    """The outputs of a raw transaction we hold (for txid-only entries).

    Raises:
        InvalidPayment: the bytes are not a transaction (a corrupt store).
    """
    try:
        ptx = parse_transaction(raw)
    except Refusal as exc:
        raise InvalidPayment(f"a stored transaction cannot be parsed: {exc}") from None
    return [SourceOutput(satoshis=o.satoshis, locking_script=o.script) for o in ptx.outputs]
