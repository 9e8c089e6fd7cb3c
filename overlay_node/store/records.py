"""The rows the wallet's and the settlement queue's repositories share, with the SQL that reads or writes them:
an output of ours (``wallet_utxos``, read by both: the settlement queue gives coins back) and the job a write hands
to the settlement queue (``settlement``, written by the wallet's, the payments' and the queue's own writes).
Tables from migration ``0004_wallet``; ``store/wallet.py``, ``store/settlement.py`` and ``store/payments.py``
import from here, so none of them imports another's internals.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from overlay_node.store.rows import MAX_PARAMS, execute_rows, marks

__all__ = [
    "UTXO_SELECT",
    "JobKind",
    "JobState",
    "NewJob",
    "Outpoint",
    "UtxoRecord",
    "insert_job",
    "insert_jobs",
    "spent_by",
    "unspend",
    "utxo_from_row",
]

#: (txid, output index)
Outpoint = tuple[str, int]
JobState = Literal["pending", "progressing", "seen", "mined", "failed", "abandoned"]
JobKind = Literal["submit", "watch"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UtxoRecord:
    """An output of ours. Its private key is BRC-42 derived from ``protocol`` (``"<level>-<name>"``),
    ``key_id`` and ``counterparty`` (a hex public key, or ``self``); ``origin`` says how it came (faucet,
    change, payment). ``proven`` is true once its transaction has a merkle path."""

    txid: str
    vout: int
    satoshis: int
    script: bytes
    protocol: str
    key_id: str
    counterparty: str
    origin: str
    proven: bool = False

    @property
    def outpoint(self) -> Outpoint:
        return (self.txid, self.vout)

    @property
    def invoice(self) -> str:
        """The BRC-43 invoice number its key is derived with."""
        return f"{self.protocol}-{self.key_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A transaction to hand to the settlement queue: ``submit`` it (as ``beef``) and follow it until mined,
    or only ``watch`` for it (a payment the payee never answered) until ``deadline``."""

    txid: str
    beef: bytes
    kind: JobKind = "submit"
    state: JobState = "pending"
    next_at: float = 0.0
    deadline: float | None = None


_JOB_INSERT = (
    "INSERT INTO settlement (txid, beef, kind, state, next_at, deadline, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (txid) DO NOTHING"
)


def _job_row(job: NewJob, now: float) -> tuple[object, ...]:
    return (job.txid, job.beef, job.kind, job.state, job.next_at, job.deadline, now, now)


def insert_job(conn: sqlite3.Connection, job: NewJob, now: float) -> None:
    """Queue ``job``; a transaction already queued keeps its job (the first one wins)."""
    conn.execute(_JOB_INSERT, _job_row(job, now))


def insert_jobs(conn: sqlite3.Connection, jobs: Sequence[tuple[NewJob, float]]) -> None:
    """:func:`insert_job` for many ``(job, now)`` pairs, in one statement (a batch of payments)."""
    execute_rows(conn, _JOB_INSERT, [_job_row(job, now) for job, now in jobs])


#: an output with whether its transaction is proven: add ``WHERE``, read each row with :func:`utxo_from_row`
UTXO_SELECT = (
    "SELECT u.txid, u.vout, u.satoshis, u.script, u.protocol, u.key_id, u.counterparty, u.origin, "
    "t.merkle_path FROM wallet_utxos u LEFT JOIN wallet_txs t ON t.txid = u.txid"
)


def utxo_from_row(row: sqlite3.Row) -> UtxoRecord:
    return UtxoRecord(
        txid=str(row["txid"]),
        vout=int(row["vout"]),
        satoshis=int(row["satoshis"]),
        script=bytes(row["script"]),
        protocol=str(row["protocol"]),
        key_id=str(row["key_id"]),
        counterparty=str(row["counterparty"]),
        origin=str(row["origin"]),
        proven=row["merkle_path"] is not None,
    )


def spent_by(conn: sqlite3.Connection, txid: str) -> list[Outpoint]:
    """The coins of ours that ``txid`` spends (state ``spent``, or ``dead`` after a double spend, ``spent_by`` it),
    found among the outputs of its parents (``wallet_txs.parents``): the outpoint's uniqueness rule serves that
    lookup, so ``spent_by`` needs no index of its own (migration ``0014_spent_by_unindexed``). A transaction the
    wallet does not hold spends none of its coins."""
    row = conn.execute("SELECT parents FROM wallet_txs WHERE txid = ?", (txid,)).fetchone()
    parents = str(row["parents"]).split() if row is not None and row["parents"] else []
    found: list[Outpoint] = []
    for start in range(0, len(parents), MAX_PARAMS - 1):
        part = parents[start : start + MAX_PARAMS - 1]
        rows = conn.execute(
            f"SELECT txid, vout FROM wallet_utxos WHERE txid IN ({marks(len(part))}) AND spent_by = ?", [*part, txid]
        )
        found.extend((str(r["txid"]), int(r["vout"])) for r in rows.fetchall())
    return found


def unspend(conn: sqlite3.Connection, txid: str) -> list[Outpoint]:
    """Make the coins ``txid`` spent spendable again (a payment refused, a transaction failed): those of
    :func:`spent_by` still ``spent``. Returns every coin it spent."""
    coins = spent_by(conn, txid)
    conn.executemany(
        "UPDATE wallet_utxos SET state = 'spendable', spent_by = NULL WHERE txid = ? AND vout = ? AND state = 'spent'",
        coins,
    )
    return coins
