"""Full validation of one transaction against the outputs it spends: structure, amounts, fee policy, scripts.

Synchronous and CPU-bound (the ledger runs it in a worker thread). It needs no database: the caller resolves
the source output of every input first, so the only ledger rule left for later is "not already spent", which
the store checks atomically when it records the transaction.

Order of checks (cheap first, as ARC does): inputs and outputs present and well-formed, every source output
known, outputs do not exceed inputs, the fee meets the policy, then every input script through bsv-sdk's
interpreter (``Spend``, the engine behind ``Transaction.verify``; called directly because ``verify`` is async,
checks neither balance nor fee, and needs whole source transactions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bsv.script.script import Script
from bsv.script.spend import Spend

from overlay_node.devnet.chain import NULL_HASH, is_data_script
from overlay_node.devnet.formats import ParsedTx, SourceOutput
from overlay_node.devnet.refusals import ArcCode, Refusal
from overlay_node.store.ledger import NewOutput, NewTx, Outpoint

MAX_SATOSHIS = 21_000_000 * 100_000_000


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
    total_in = sum(s.satoshis for s in resolved)
    if total_out > MAX_SATOSHIS:
        raise Refusal(ArcCode.OUTPUTS, "outputs total more than all the satoshis there are")
    if total_out > total_in:
        raise Refusal(ArcCode.OUTPUTS, f"outputs ({total_out} satoshis) exceed inputs ({total_in} satoshis)")
    fee = total_in - total_out
    required = policy.required_fee(len(ptx.raw))
    if fee < required:
        raise Refusal(ArcCode.FEES, f"fee {fee} is below the {required} satoshis required for {len(ptx.raw)} bytes")

    for i, source in enumerate(resolved):
        tx.inputs[i].satoshis = source.satoshis
        tx.inputs[i].locking_script = Script(source.locking_script)
    for i, source in enumerate(resolved):
        _check_script(tx, i, source)
    return NewTx(txid=ptx.txid, raw=ptx.raw, fee=fee, spends=tuple(spends), outputs=tuple(outputs))


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
