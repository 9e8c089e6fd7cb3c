"""Full validation of one transaction against the outputs it spends: structure, amounts, fee policy, scripts.

Synchronous and CPU-bound (the ledger runs it in a worker thread). It needs no database: the caller resolves
the source output of every input first, so the only ledger rule left for later is "not already spent", which
the store checks atomically when it records the transaction.

Order of checks (cheap first, as ARC does): inputs and outputs present and well-formed, every source output
known, outputs do not exceed inputs, the fee meets the policy, then every input script through bsv-sdk's
interpreter (``Spend``, the engine behind ``Transaction.verify``; called directly because ``verify`` is async,
checks neither balance nor fee, and needs whole source transactions).

A transaction of plain P2PKH spends and P2PKH outputs (a payment, its change, a faucet payout) takes a fast path
first (:func:`fast_check`: the same checks, signatures verified by libsecp256k1 over the BIP143 digest computed
here, no interpreter); anything else, or anything the fast path does not accept, goes through the interpreter,
which accepts or names the problem. Every caller (the ledger, the payee's and the overlay engine's SPV checks)
goes through :func:`check_transaction` (or :func:`checked_fee`, which records nothing); :func:`check_by_interpreter` is
the interpreter's path alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bsv.script.script import Script
from bsv.script.spend import Spend
from coincurve import PublicKey

from overlay_node.chain.blocks import NULL_HASH
from overlay_node.chain.formats import ParsedTx, SourceOutput
from overlay_node.chain.refusals import ArcCode, Refusal
from overlay_node.crypto.bump import sha256d, varint_at
from overlay_node.crypto.keys import SECP256K1_N
from overlay_node.crypto.scripts import hash160, is_data_script, is_p2pkh
from overlay_node.crypto.sighash import SIGHASH_ALL_FORKID, bip143_digest

MAX_SATOSHIS = 21_000_000 * 100_000_000

Outpoint = tuple[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class NewOutput:
    """An output a new transaction creates (only spendable ones are stored)."""

    vout: int
    satoshis: int
    script: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class NewTx:
    """A validated transaction to record: what it spends and what it creates."""

    txid: str
    raw: bytes
    fee: int
    spends: tuple[Outpoint, ...]
    outputs: tuple[NewOutput, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """What the ledger asks of a transaction (served as ARC's ``/v1/policy``).

    ``mining_fee_satoshis`` per ``mining_fee_bytes`` of serialized size, rounded up.
    """

    mining_fee_satoshis: int = 1
    mining_fee_bytes: int = 1000
    max_tx_size: int = 10_000_000
    max_script_size: int = 10_000_000

    def __post_init__(self) -> None:
        if self.mining_fee_satoshis < 0 or self.mining_fee_bytes < 1:
            raise ValueError("mining fee must be >= 0 satoshis per >= 1 bytes")

    def required_fee(self, size: int) -> int:
        """The smallest fee accepted for a transaction of ``size`` bytes."""
        return -(-size * self.mining_fee_satoshis // self.mining_fee_bytes)

    def as_arc(self) -> dict[str, Any]:
        """ARC's ``policy`` object."""
        return {
            "maxscriptsizepolicy": self.max_script_size,
            "maxtxsigopscountspolicy": 4294967295,
            "maxtxsizepolicy": self.max_tx_size,
            "miningFee": {"satoshis": self.mining_fee_satoshis, "bytes": self.mining_fee_bytes},
            "standardFormatSupported": True,
        }


def outpoints(ptx: ParsedTx) -> list[Outpoint]:
    """What ``ptx`` spends, in input order."""
    return ptx.spends()


def check_transaction(ptx: ParsedTx, sources: Mapping[Outpoint, SourceOutput], policy: Policy) -> NewTx:
    """Validate ``ptx`` fully and return what the ledger records for it.

    Args:
        ptx: the parsed transaction.
        sources: the output each input spends (from the ledger or from ancestors submitted with it); an input
            whose outpoint is missing spends an unknown output.
        policy: the fee and size policy.

    Raises:
        Refusal: 462 (inputs), 463 (malformed), 464 (outputs / unbalanced), 465 (fee), 461 (scripts); the txid
            is set on every refusal.
    """
    fee = _fast_fee(ptx, sources, policy)
    if fee is None:  # not plain P2PKH (or refused): the interpreter decides, and says what is wrong
        return check_by_interpreter(ptx, sources, policy)
    outputs = tuple(
        NewOutput(vout=vout, satoshis=satoshis, script=script) for vout, (satoshis, script) in enumerate(ptx.outputs)
    )
    return NewTx(txid=ptx.txid, raw=ptx.raw, fee=fee, spends=tuple(ptx.spends()), outputs=outputs)


def checked_fee(ptx: ParsedTx, sources: Mapping[Outpoint, SourceOutput], policy: Policy) -> int:
    """:func:`check_transaction` for a caller that records nothing of ``ptx`` but its fee (an SPV check): the
    same checks and refusals, without building the record on the fast path."""
    fee = _fast_fee(ptx, sources, policy)
    return check_by_interpreter(ptx, sources, policy).fee if fee is None else fee


def _fast_fee(ptx: ParsedTx, sources: Mapping[Outpoint, SourceOutput], policy: Policy) -> int | None:
    """:func:`fast_check` of a transaction that came in plain form (one in Extended Format has source outputs of
    its own to compare, which the interpreter's path does)."""
    return fast_check(ptx.raw, sources, policy) if ptx.ef_sources is None else None


def check_by_interpreter(ptx: ParsedTx, sources: Mapping[Outpoint, SourceOutput], policy: Policy) -> NewTx:
    """:func:`check_transaction` without its fast path: every script through bsv-sdk's interpreter."""
    try:
        return _check(ptx, sources, policy)
    except Refusal as refusal:
        raise refusal.with_txid(ptx.txid) from None


def _check(ptx: ParsedTx, sources: Mapping[Outpoint, SourceOutput], policy: Policy) -> NewTx:
    if len(ptx.raw) > policy.max_tx_size:
        raise Refusal(ArcCode.MALFORMED, f"transaction is {len(ptx.raw)} bytes, policy allows {policy.max_tx_size}")
    tx = ptx.sdk_tx()  # for the interpreter; refuses bytes bsv-sdk does not read back identically
    if not ptx.inputs:
        raise Refusal(ArcCode.INPUTS, "transaction has no inputs")
    if not ptx.outputs:
        raise Refusal(ArcCode.OUTPUTS, "transaction has no outputs")
    spends = outpoints(ptx)
    resolved = _resolve_inputs(ptx, spends, sources)
    outputs, total_out = _check_outputs(ptx, policy)
    fee = _check_fee(ptx, sum(s.satoshis for s in resolved), total_out, policy)
    for i, source in enumerate(resolved):
        tx.inputs[i].satoshis = source.satoshis
        tx.inputs[i].locking_script = Script(source.locking_script)
    for i, source in enumerate(resolved):
        _check_script(tx, i, source)
    return NewTx(txid=ptx.txid, raw=ptx.raw, fee=fee, spends=tuple(spends), outputs=tuple(outputs))


def _resolve_inputs(
    ptx: ParsedTx, spends: list[Outpoint], sources: Mapping[Outpoint, SourceOutput]
) -> list[SourceOutput]:
    """The output each input spends, in input order: each known, none spent twice, none a coinbase."""
    if len(set(spends)) != len(spends):
        raise Refusal(ArcCode.INPUTS, "transaction spends the same output twice")
    resolved: list[SourceOutput] = []
    for i, (txid, vout) in enumerate(spends):
        if txid == NULL_HASH:
            raise Refusal(ArcCode.INPUTS, f"input {i} is a coinbase input")
        source = sources.get((txid, vout))
        if source is None:
            raise Refusal(ArcCode.INPUTS, f"input {i} spends unknown output {txid}:{vout}")
        if ptx.ef_sources is not None and ptx.ef_sources[i] != source:
            raise Refusal(ArcCode.INPUTS, f"input {i}: the extended-format source output does not match the ledger")
        resolved.append(source)
    return resolved


def _check_outputs(ptx: ParsedTx, policy: Policy) -> tuple[list[NewOutput], int]:
    """The spendable outputs (data outputs are not stored) and the total of all outputs."""
    outputs: list[NewOutput] = []
    total_out = 0
    for vout, (satoshis, script) in enumerate(ptx.outputs):
        if len(script) > policy.max_script_size:
            raise Refusal(ArcCode.OUTPUTS, f"output {vout} script is larger than the policy allows")
        data = is_data_script(script)
        if satoshis > MAX_SATOSHIS or (satoshis < 1 and not data):
            raise Refusal(ArcCode.OUTPUTS, f"output {vout} satoshis {satoshis} is invalid")
        total_out += satoshis
        if not data:
            outputs.append(NewOutput(vout=vout, satoshis=satoshis, script=script))
    return outputs, total_out


def _check_fee(ptx: ParsedTx, total_in: int, total_out: int, policy: Policy) -> int:
    """The fee, once the outputs are within the inputs and the fee meets the policy."""
    if total_out > MAX_SATOSHIS:
        raise Refusal(ArcCode.OUTPUTS, "outputs total more than all the satoshis there are")
    if total_out > total_in:
        raise Refusal(ArcCode.OUTPUTS, f"outputs ({total_out} satoshis) exceed inputs ({total_in} satoshis)")
    fee = total_in - total_out
    required = policy.required_fee(len(ptx.raw))
    if fee < required:
        raise Refusal(ArcCode.FEES, f"fee {fee} is below the {required} satoshis required for {len(ptx.raw)} bytes")
    return fee


def _check_script(tx: Any, index: int, source: SourceOutput) -> None:
    tx_in = tx.inputs[index]
    if tx_in.unlocking_script is None:
        raise Refusal(ArcCode.UNLOCKING_SCRIPTS, f"input {index} has no unlocking script")
    spend = Spend(
        {
            "sourceTXID": tx_in.source_txid,
            "sourceOutputIndex": tx_in.source_output_index,
            "sourceSatoshis": source.satoshis,
            "lockingScript": tx_in.locking_script,
            "transactionVersion": tx.version,
            "otherInputs": [other for j, other in enumerate(tx.inputs) if j != index],
            "inputIndex": index,
            "unlockingScript": tx_in.unlocking_script,
            "outputs": tx.outputs,
            "inputSequence": tx_in.sequence,
            "lockTime": tx.locktime,
        }
    )
    try:
        ok = spend.validate()
    except (RuntimeError, ValueError, IndexError, TypeError, OverflowError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Refusal(ArcCode.UNLOCKING_SCRIPTS, f"input {index} script failed: {reason}") from exc
    if not ok:
        raise Refusal(ArcCode.UNLOCKING_SCRIPTS, f"input {index} script failed")


# -- the fast path for plain P2PKH transactions --------------------------------------------------------------

_HALF_N = SECP256K1_N // 2


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


#: what the fast path reads of an input: (outpoint, unlocking script, sequence, the output it spends)
_FastInput = tuple[bytes, bytes, bytes, SourceOutput]


def _fast_check(raw: bytes, sources: Mapping[Outpoint, SourceOutput], policy: Policy) -> int | None:
    if len(raw) > policy.max_tx_size:
        return None
    read = _fast_inputs(raw, sources)
    if read is None:
        return None
    inputs, outputs_at = read
    outputs = _fast_outputs(raw, outputs_at)
    if outputs is None:
        return None
    total_out, outputs_start = outputs
    fee = sum(src.satoshis for *_, src in inputs) - total_out
    if total_out > MAX_SATOSHIS or fee < policy.required_fee(len(raw)):
        return None
    return fee if _fast_signatures(raw, inputs, outputs_start) else None


def _fast_inputs(raw: bytes, sources: Mapping[Outpoint, SourceOutput]) -> tuple[list[_FastInput], int] | None:
    """The inputs, each with the output it spends (all known, none twice), and where the outputs begin."""
    n_in, pos = varint_at(raw, 4)
    if n_in == 0:
        return None
    inputs: list[_FastInput] = []
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
    return inputs, pos


def _fast_outputs(raw: bytes, outputs_at: int) -> tuple[int, int] | None:
    """The total of the outputs (all P2PKH, each 1 satoshi or more) and where the first one starts; the lock
    time must follow the last one."""
    n_out, pos = varint_at(raw, outputs_at)
    if n_out == 0:
        return None
    outputs_start = pos
    total_out = 0
    for _ in range(n_out):
        satoshis = int.from_bytes(raw[pos : pos + 8], "little")
        script_len, pos = varint_at(raw, pos + 8)
        script = raw[pos : pos + script_len]
        pos += script_len
        if len(script) != script_len or not is_p2pkh(script) or not 1 <= satoshis <= MAX_SATOSHIS:
            return None  # the interpreter's path reads other scripts (and refuses what it cannot write back)
        total_out += satoshis
    if pos + 4 != len(raw) or outputs_at <= 4:
        return None
    return total_out, outputs_start


def _fast_signatures(raw: bytes, inputs: list[_FastInput], outputs_start: int) -> bool:
    """Whether every input is a plain P2PKH spend whose signature verifies over its BIP143 digest."""
    version, locktime = raw[:4], raw[-4:]
    hash_prevouts = sha256d(b"".join(op for op, *_ in inputs))
    hash_sequence = sha256d(b"".join(seq for _, _, seq, _ in inputs))
    hash_outputs = sha256d(raw[outputs_start:-4])
    for outpoint, unlocking, sequence, source in inputs:
        script = source.locking_script
        if not is_p2pkh(script):
            return False
        sig_len = unlocking[0]
        if len(unlocking) != sig_len + 35 or unlocking[1 + sig_len] != 33:
            return False
        sig, pub = unlocking[1 : 1 + sig_len], unlocking[2 + sig_len :]
        if sig[-1] != SIGHASH_ALL_FORKID or pub[0] not in (2, 3) or not _low_s_der(sig[:-1]):
            return False
        if hash160(pub) != script[3:23]:
            return False
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
            return False
        if not key.verify(sig[:-1], digest, hasher=None):
            return False
    return True
