"""The ``payments`` repository: payments this node received, recorded durably before any receipt is sent.

Tables ``payments`` and ``payment_spends`` (migration ``0004_wallet``). Recording a payment writes, in one
transaction, its ``payments`` row (quote id and derivation prefix unique: a replay cannot be recorded twice),
the outputs its transaction spends (``payment_spends``: a second payment spending one of them is a double
spend), the transactions of its BEEF, the output it pays us, a history entry and the settlement job
(``store/wallet.py``'s helpers). :meth:`PaymentsRepository.record` takes a batch (group commit): every record is
applied or refused on its own and the batch is committed with one fsync. The rows go in first without a query (the
tables' uniqueness rules are the checks: the common case, nothing replayed or double spent, costs the inserts
alone); a batch that breaks a rule is rolled back and checked against the database, then recorded one by one if a
rule no check covers is still broken.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from overlay_node.store.records import NewJob, Outpoint, UtxoRecord
from overlay_node.store.rows import MAX_PARAMS, execute_rows, marks
from overlay_node.store.wallet import HistoryRecord, TxRecord, insert_many

if TYPE_CHECKING:
    from overlay_node.store.engine import Database

__all__ = ["IncomingPayment", "IncomingRecord", "PaymentsRepository", "RecordOutcome"]


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingRecord:
    """A checked payment to record (everything one transaction writes)."""

    quote_id: str
    prefix: str
    suffix: str
    payer: str
    resource: str
    price: int
    amount: int
    txid: str
    receipt: bytes
    accepted_at: float
    spends: tuple[Outpoint, ...]
    txs: tuple[TxRecord, ...]
    utxo: UtxoRecord
    history: HistoryRecord
    job: NewJob


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordOutcome:
    """What became of one record: ``recorded``, ``replayed`` (its quote or prefix was used already), or
    ``double_spend`` (``conflict`` names an input already spent by the accepted payment ``other_txid``)."""

    result: Literal["recorded", "replayed", "double_spend"]
    conflict: Outpoint | None = None
    other_txid: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingPayment:
    """A row of ``payments``: ``status`` is ``accepted``, ``settled`` (ARC took it), ``mined`` or
    ``failed``."""

    quote_id: str
    prefix: str
    suffix: str
    payer: str
    resource: str
    price: int
    amount: int
    txid: str
    status: str
    detail: str
    receipt: bytes
    accepted_at: float
    updated_at: float


def _payment(row: sqlite3.Row) -> IncomingPayment:
    return IncomingPayment(
        quote_id=str(row["quote_id"]),
        prefix=str(row["derivation_prefix"]),
        suffix=str(row["derivation_suffix"]),
        payer=str(row["payer"]),
        resource=str(row["resource"]),
        price=int(row["price"]),
        amount=int(row["amount"]),
        txid=str(row["txid"]),
        status=str(row["status"]),
        detail=str(row["detail"]),
        receipt=bytes(row["receipt"]),
        accepted_at=float(row["accepted_at"]),
        updated_at=float(row["updated_at"]),
    )


_PAYMENT_INSERT = (
    "INSERT INTO payments (quote_id, derivation_prefix, derivation_suffix, payer, resource, price, "
    "amount, txid, status, receipt, accepted_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'accepted', ?, ?, ?)"
)
_SPENDS_INSERT = "INSERT OR IGNORE INTO payment_spends (txid, vout, payment_txid) VALUES (?, ?, ?)"
#: the spends of a batch written before any check (:func:`_insert_unchecked`): an input spent already fails it
_SPENDS_INSERT_STRICT = "INSERT INTO payment_spends (txid, vout, payment_txid) VALUES (?, ?, ?)"
_RECORDED = RecordOutcome(result="recorded")


def _payment_row(rec: IncomingRecord) -> tuple[object, ...]:
    return (
        rec.quote_id,
        rec.prefix,
        rec.suffix,
        rec.payer,
        rec.resource,
        rec.price,
        rec.amount,
        rec.txid,
        rec.receipt,
        rec.accepted_at,
        rec.accepted_at,
    )


def _used_keys(conn: sqlite3.Connection, records: Sequence[IncomingRecord]) -> tuple[set[str], set[str]]:
    """The quote ids and prefixes of stored payments that share a quote id or a prefix with ``records``."""
    quotes: set[str] = set()
    prefixes: set[str] = set()
    per = MAX_PARAMS // 2
    for start in range(0, len(records), per):
        chunk = records[start : start + per]
        rows = conn.execute(
            f"SELECT quote_id, derivation_prefix FROM payments WHERE quote_id IN ({marks(len(chunk))}) "
            f"OR derivation_prefix IN ({marks(len(chunk))})",
            [r.quote_id for r in chunk] + [r.prefix for r in chunk],
        ).fetchall()
        quotes.update(str(row["quote_id"]) for row in rows)
        prefixes.update(str(row["derivation_prefix"]) for row in rows)
    return quotes, prefixes


def _spenders(conn: sqlite3.Connection, outpoints: Sequence[Outpoint]) -> dict[Outpoint, str]:
    """The payments already recorded as spending any of ``outpoints``."""
    found: dict[Outpoint, str] = {}
    per = MAX_PARAMS // 2
    for start in range(0, len(outpoints), per):
        chunk = outpoints[start : start + per]
        # joined against a VALUES list: a row-value `IN (VALUES ...)` makes SQLite scan the whole table
        rows = conn.execute(
            f"WITH q(t, v) AS (VALUES {', '.join(['(?, ?)'] * len(chunk))}) "
            "SELECT p.txid, p.vout, p.payment_txid FROM q JOIN payment_spends p ON p.txid = q.t AND p.vout = q.v",
            [value for outpoint in chunk for value in outpoint],
        ).fetchall()
        found.update(((str(row["txid"]), int(row["vout"])), str(row["payment_txid"])) for row in rows)
    return found


def _record_all(conn: sqlite3.Connection, records: Sequence[IncomingRecord]) -> list[RecordOutcome]:
    """Record the payments that pass their checks, with one statement per table for the inserts: each record is
    checked against the database and against the records before it in the batch (a replayed quote or prefix, an
    input another payment spends), as one-by-one recording would check it.

    Raises:
        sqlite3.IntegrityError: a constraint the checks do not cover (the caller rolls back and goes one by one).
    """
    outcomes: list[RecordOutcome] = []
    # what the database holds already, for the whole batch in two queries (see store/rows.py)
    quotes, prefixes = _used_keys(conn, records)
    spent = _spenders(conn, [outpoint for rec in records for outpoint in rec.spends])
    ok: list[IncomingRecord] = []
    for rec in records:
        if rec.quote_id in quotes or rec.prefix in prefixes:
            outcomes.append(RecordOutcome(result="replayed"))
            continue
        conflict: RecordOutcome | None = None
        for outpoint in rec.spends:
            other = spent.get(outpoint)
            if other is not None and other != rec.txid:
                conflict = RecordOutcome(result="double_spend", conflict=outpoint, other_txid=other)
                break
        if conflict is not None:
            outcomes.append(conflict)
            continue
        quotes.add(rec.quote_id)
        prefixes.add(rec.prefix)
        spent.update((outpoint, rec.txid) for outpoint in rec.spends)
        ok.append(rec)
        outcomes.append(_RECORDED)
    if ok:
        _insert(conn, ok, _SPENDS_INSERT)
    return outcomes


def _insert(conn: sqlite3.Connection, records: Sequence[IncomingRecord], spends_sql: str) -> None:
    """The rows of ``records``, one statement per table."""
    execute_rows(conn, _PAYMENT_INSERT, [_payment_row(rec) for rec in records])
    execute_rows(conn, spends_sql, [(txid, vout, rec.txid) for rec in records for txid, vout in rec.spends])
    insert_many(
        conn,
        txs=[(tx, rec.accepted_at) for rec in records for tx in rec.txs],
        utxos=[(rec.utxo, rec.accepted_at, "spendable") for rec in records],
        histories=[(rec.history, rec.accepted_at) for rec in records],
        jobs=[(rec.job, rec.accepted_at) for rec in records],
    )


def _insert_unchecked(conn: sqlite3.Connection, records: Sequence[IncomingRecord]) -> list[RecordOutcome]:
    """Record every one of ``records`` without a query first: the database's uniqueness rules (the quote id and the
    prefix of ``payments``, the outpoints of ``payment_spends``, the coin of ``wallet_utxos``) are what the checks of
    :func:`_record_all` look for, so a batch that breaks none of them is a batch those checks pass whole; one that
    breaks one raises (the caller rolls back and checks it).

    Raises:
        sqlite3.IntegrityError: a replay, a double spend, or a coin already ours, in the database or in the batch.
    """
    _insert(conn, records, _SPENDS_INSERT_STRICT)
    return [_RECORDED] * len(records)


class PaymentsRepository:
    """Typed access to the payments received. Reach it as ``store.payments``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, records: Sequence[IncomingRecord]) -> list[RecordOutcome]:
        """Record a batch of checked payments durably (``synchronous=FULL``), each on its own.

        Returns:
            One outcome per record, in order; only ``recorded`` ones changed the database.

        Raises:
            StoreError: the database failed; nothing of the batch was recorded.
        """

        def txn(conn: sqlite3.Connection) -> list[RecordOutcome]:
            # the common case: nothing of the batch is known yet, and the uniqueness rules check it as the rows go
            # in (no query first: each statement is a GIL hand-off with a busy event loop, see store/rows.py)
            conn.execute("SAVEPOINT batch")
            for write in (_insert_unchecked, _record_all):  # then: every check, in memory and the database
                try:
                    outcomes = write(conn, records)
                except sqlite3.IntegrityError:
                    conn.execute("ROLLBACK TO batch")
                else:
                    conn.execute("RELEASE batch")
                    return outcomes
            conn.execute("RELEASE batch")
            # a constraint no check covers (the output is already ours): one by one, each refused on its own
            outcomes = []
            for rec in records:
                conn.execute("SAVEPOINT rec")
                try:
                    (outcome,) = _record_all(conn, [rec])
                except sqlite3.IntegrityError:
                    # a constraint we did not pre-check (the output is already ours): refuse this one only
                    conn.execute("ROLLBACK TO rec")
                    outcome = RecordOutcome(result="replayed")
                conn.execute("RELEASE rec")
                outcomes.append(outcome)
            return outcomes

        # inline: on the event loop's thread when the writer thread is idle (engine invariant 8), which spares the
        # payee two thread wake-ups around each batch's fsync
        return await self._db.write(txn, durable=True, urgent=True, inline=True)

    async def get(self, quote_id: str) -> IncomingPayment | None:
        def txn(conn: sqlite3.Connection) -> IncomingPayment | None:
            row = conn.execute("SELECT * FROM payments WHERE quote_id = ?", (quote_id,)).fetchone()
            return None if row is None else _payment(row)

        return await self._db.read(txn)

    async def by_prefix(self, prefix: str) -> IncomingPayment | None:
        def txn(conn: sqlite3.Connection) -> IncomingPayment | None:
            row = conn.execute("SELECT * FROM payments WHERE derivation_prefix = ?", (prefix,)).fetchone()
            return None if row is None else _payment(row)

        return await self._db.read(txn)

    async def recent(self, *, limit: int = 100, resource: str | None = None) -> list[IncomingPayment]:
        """Payments received, newest first (optionally for one resource)."""

        def txn(conn: sqlite3.Connection) -> list[IncomingPayment]:
            if resource is None:
                rows = conn.execute("SELECT * FROM payments ORDER BY accepted_at DESC LIMIT ?", (limit,))
            else:
                rows = conn.execute(
                    "SELECT * FROM payments WHERE resource = ? ORDER BY accepted_at DESC LIMIT ?",
                    (resource, limit),
                )
            return [_payment(r) for r in rows.fetchall()]

        return await self._db.read(txn)
