"""BEEF for the wallet and for payments: writing Atomic BEEF V2 (BRC-95/96) with txid-only entries for what
the recipient already holds, and checking a received payment's BEEF (structure, SPV roots, scripts, amounts,
fee).

Synchronous and CPU-bound, no I/O: the caller fetches what the checks need first (block roots for the heights
the BEEF's merkle paths name, and the transactions it names by txid only) and passes them in.

Why not bsv-sdk's ``Beef`` (it does have txid-only entries): ``parse_beef`` drops the ancestors of a V1 BEEF
and ``Transaction.from_beef`` reads V1 only (BRC.md section 2). So reading goes through the devnet's bounded
parser (``devnet/formats.py``: V1, V2 with txid-only entries, Atomic) and writing V2 is the short function
below. Script checks go through bsv-sdk's interpreter (``Spend``; its native build runs ECDSA in
libsecp256k1) via ``devnet/validation.check_transaction``, which also checks balance and fee.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from coincurve import PublicKey

from overlay_node.crypto.bump import sha256d, varint_at, varint_bytes
from overlay_node.crypto.keys import SECP256K1_N
from overlay_node.crypto.sighash import SIGHASH_ALL_FORKID, bip143_digest
from overlay_node.devnet.formats import (
    ATOMIC_BEEF,
    BEEF_V2,
    ParsedTx,
    SourceOutput,
    Submission,
    parse_submission,
    parse_transaction,
)
from overlay_node.devnet.refusals import Refusal
from overlay_node.devnet.validation import MAX_SATOSHIS, Policy, check_transaction
from overlay_node.errors import InvalidPayment, PaymentError
from overlay_node.protocol.payments import hash160
from overlay_node.store.wallet import Outpoint, TxRecord

__all__ = [
    "BeefEntry",
    "CheckedPayment",
    "atomic_beef",
    "beef_entries",
    "check_payment_beef",
    "encode_beef_v2",
    "fast_check",
    "parse_payment_beef",
    "tx_record",
]


@dataclass(frozen=True, slots=True)
class BeefEntry:
    """One BEEF V2 entry: a transaction (with its BUMP when proven), or a txid only (``raw`` None)."""

    txid: str
    raw: bytes | None = None
    bump: bytes | None = None


def encode_beef_v2(entries: Sequence[BeefEntry]) -> bytes:
    """A BEEF V2 of ``entries`` (parents first); identical BUMPs are written once."""
    bumps: list[bytes] = []
    body = bytearray()
    for entry in entries:
        if entry.raw is None:
            body += b"\x02" + bytes.fromhex(entry.txid)[::-1]
        elif entry.bump is None:
            body += b"\x00" + entry.raw
        else:
            if entry.bump not in bumps:
                bumps.append(entry.bump)
            body += b"\x01" + varint_bytes(bumps.index(entry.bump)) + entry.raw
    head = BEEF_V2 + varint_bytes(len(bumps)) + b"".join(bumps) + varint_bytes(len(entries))
    return head + bytes(body)


def atomic_beef(subject: str, entries: Sequence[BeefEntry]) -> bytes:
    """Atomic BEEF (BRC-95) of ``subject``: the marker, the subject txid, then a BEEF V2 of ``entries``."""
    return ATOMIC_BEEF + bytes.fromhex(subject)[::-1] + encode_beef_v2(entries)


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
    # the outputs the BEEF's transactions spend: from the BEEF itself, else from what we hold (only those spent:
    # a parent may be a coin split with hundreds of outputs, spent one payment at a time)
    sources: dict[Outpoint, SourceOutput] = {}
    fee = 0
    for ptx in submission.txs:
        if ptx.block_height is not None:
            height = ptx.block_height
            if roots.get(height) != ptx.bump_root:
                raise InvalidPayment(f"the merkle path of {ptx.txid} does not match block {height}")
        else:
            for tx_in in ptx.inputs:
                outpoint = (tx_in.txid, tx_in.vout)
                if outpoint not in sources:
                    outputs = held.get(tx_in.txid)
                    if outputs is not None and tx_in.vout < len(outputs):
                        sources[outpoint] = outputs[tx_in.vout]
            tx_fee = fast_check(ptx.raw, sources, policy)
            if tx_fee is None:  # not the common case: the full check decides, and says what is wrong
                try:
                    tx_fee = check_transaction(ptx, sources, policy).fee
                except Refusal as exc:
                    which = "the payment" if ptx is submission.subject else f"ancestor {ptx.txid}"
                    raise InvalidPayment(f"{which} is invalid: {exc}") from None
            if ptx is submission.subject:
                fee = tx_fee
        for vout, (satoshis, script) in enumerate(ptx.outputs):
            sources[(ptx.txid, vout)] = SourceOutput(satoshis=satoshis, locking_script=script)
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
        fee=fee,
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


# -- the fast path for plain P2PKH transactions --------------------------------------------------------------

_P2PKH_HEAD = b"\x76\xa9\x14"
_P2PKH_TAIL = b"\x88\xac"
_HALF_N = SECP256K1_N // 2


def _is_p2pkh(script: bytes) -> bool:
    return len(script) == 25 and script[:3] == _P2PKH_HEAD and script[23:] == _P2PKH_TAIL


def _low_s_der(der: bytes) -> bool:
    """A strict DER signature (BIP 66 shape) with S in the lower half of the order."""
    n = len(der)
    if not 8 <= n <= 72 or der[0] != 0x30 or der[1] != n - 2 or der[2] != 0x02:
        return False
    r_len = der[3]
    if r_len == 0 or 5 + r_len >= n or der[4 + r_len] != 0x02:
        return False
    s_len = der[5 + r_len]
    if s_len == 0 or r_len + s_len + 6 != n:
        return False
    r, s_ = der[4 : 4 + r_len], der[6 + r_len :]
    for part in (r, s_):
        if part[0] & 0x80 or (len(part) > 1 and part[0] == 0 and not part[1] & 0x80):
            return False
    return 0 < int.from_bytes(s_, "big") <= _HALF_N


def fast_check(raw: bytes, sources: Mapping[Outpoint, SourceOutput], policy: Policy) -> int | None:
    """Check a transaction whose every input is a plain P2PKH spend (SIGHASH_ALL|FORKID, low-S strict DER,
    compressed key) and whose every output is P2PKH, without the script interpreter: amounts, fee, then each
    signature with libsecp256k1 over the BIP143 digest computed here from the raw bytes.

    Returns:
        The fee when the transaction is valid; None when it is anything else (an unusual script, a missing
        source, a bad amount, a signature that does not verify...): the caller then runs the full check,
        which accepts or names the problem. So this path only ever accepts what the interpreter accepts.
    """
    try:
        return _fast_check(raw, sources, policy)
    except (IndexError, KeyError, ValueError):
        return None


def _fast_check(raw: bytes, sources: Mapping[Outpoint, SourceOutput], policy: Policy) -> int | None:
    if len(raw) > policy.max_tx_size:
        return None
    n_in, pos = varint_at(raw, 4)
    if n_in == 0:
        return None
    inputs: list[tuple[bytes, bytes, bytes, SourceOutput]] = []  # (outpoint, unlocking, sequence, source)
    seen: set[bytes] = set()
    for _ in range(n_in):
        outpoint = raw[pos : pos + 36]
        script_len, pos = varint_at(raw, pos + 36)
        unlocking = raw[pos : pos + script_len]
        pos += script_len
        sequence = raw[pos : pos + 4]
        pos += 4
        if len(outpoint) != 36 or len(sequence) != 4 or outpoint in seen:
            return None
        seen.add(outpoint)
        source = sources.get((outpoint[31::-1].hex(), int.from_bytes(outpoint[32:], "little")))
        if source is None:
            return None
        inputs.append((outpoint, unlocking, sequence, source))
    outputs_at = pos
    n_out, pos = varint_at(raw, pos)
    if n_out == 0:
        return None
    outputs_start = pos
    total_out = 0
    for _ in range(n_out):
        satoshis = int.from_bytes(raw[pos : pos + 8], "little")
        script_len, pos = varint_at(raw, pos + 8)
        script = raw[pos : pos + script_len]
        pos += script_len
        if len(script) != script_len or not _is_p2pkh(script) or not 1 <= satoshis <= MAX_SATOSHIS:
            return None  # the interpreter's path reads other scripts (and refuses what it cannot write back)
        total_out += satoshis
    if pos + 4 != len(raw) or outputs_at <= 4:
        return None
    total_in = sum(src.satoshis for *_, src in inputs)
    fee = total_in - total_out
    if total_out > MAX_SATOSHIS or fee < policy.required_fee(len(raw)):
        return None
    version, locktime = raw[:4], raw[-4:]
    hash_prevouts = sha256d(b"".join(op for op, *_ in inputs))
    hash_sequence = sha256d(b"".join(seq for _, _, seq, _ in inputs))
    hash_outputs = sha256d(raw[outputs_start:pos])
    for outpoint, unlocking, sequence, source in inputs:
        script = source.locking_script
        if not _is_p2pkh(script):
            return None
        sig_len = unlocking[0]
        if len(unlocking) != sig_len + 35 or unlocking[1 + sig_len] != 33:
            return None
        sig, pub = unlocking[1 : 1 + sig_len], unlocking[2 + sig_len :]
        if sig[-1] != SIGHASH_ALL_FORKID or pub[0] not in (2, 3) or not _low_s_der(sig[:-1]):
            return None
        if hash160(pub) != script[3:23]:
            return None
        digest = bip143_digest(
            version,
            hash_prevouts,
            hash_sequence,
            outpoint,
            script,
            source.satoshis,
            sequence,
            hash_outputs,
            locktime,
            SIGHASH_ALL_FORKID,
        )
        try:
            key = PublicKey(pub)
        except ValueError:
            return None
        if not key.verify(sig[:-1], digest, hasher=None):
            return None
    return fee
