"""The wallet's repository (``store.wallet``): transactions, outputs (UTXOs) and history. Tables from migration
``0004_wallet``; the rows it shares with the settlement queue (``store.settlement``) are in ``store/records.py``.

Invariants (each kept by doing the whole change in one write transaction):

1. ``wallet_utxos`` holds every output the wallet owns or owned; ``state`` is ``spendable``, ``pending``
   (the change of a payment written ahead of sending it, until the payee answers or ARC sees it), ``spent``
   (``spent_by`` names the transaction) or ``dead`` (its transaction failed, or it was double spent). The
   wallet's balance is the ``spendable`` rows; the service's reservations live in memory only.
2. Every output's transaction is in ``wallet_txs`` and so is every unproven ancestor of it, down to proven
   transactions (``merkle_path`` set) or transactions the wallet got in a BEEF: that is what building a BEEF
   needs. ``parents`` lists the txids a transaction spends from.
3. A payment we make is written whole *before* it is sent: its inputs spent, its change (pending), its
   history entry (``sending``) and a settlement job that watches for it; the payee's answer then makes the
   change spendable and the job submit (:meth:`WalletRepository.record_sent`), a refusal undoes it all
   (:meth:`WalletRepository.abort_outgoing`), and no answer leaves the watch to decide. A payment we
   receive is committed whole too (``store.payments``). What settlement does to them afterwards is
   ``store/settlement.py``'s.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from overlay_node.errors import Conflict
from overlay_node.store.engine import BatchTxn
from overlay_node.store.records import (
    UTXO_SELECT,
    NewJob,
    Outpoint,
    UtxoRecord,
    insert_job,
    insert_jobs,
    unspend,
    utxo_from_row,
)
from overlay_node.store.rows import MAX_PARAMS, execute_rows, marks

if TYPE_CHECKING:
    from overlay_node.store.engine import Database

__all__ = [
    "Deposit",
    "HistoryEntry",
    "HistoryRecord",
    "Outgoing",
    "SentUpdate",
    "TxRecord",
    "WalletRepository",
    "insert_history",
    "insert_many",
    "insert_txs",
    "insert_utxo",
]

_BATCH = 500


# -- rows ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TxRecord:
    """A transaction the wallet holds: raw bytes, the txids it spends from, and its BUMP once mined."""

    txid: str
    raw: bytes
    parents: tuple[str, ...]
    merkle_path: bytes | None = None
    block_height: int | None = None

    @property
    def proven(self) -> bool:
        return self.merkle_path is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryRecord:
    """A history entry to add: ``direction`` is ``in`` or ``out``; ``amount`` the satoshis that went to (or
    came from) the counterparty; ``status`` ``unconfirmed``, ``confirmed``, ``failed``, ``unknown`` (a payment
    the payee never answered) or ``abandoned``."""

    txid: str
    direction: Literal["in", "out"]
    kind: str
    amount: int
    fee: int = 0
    counterparty: str | None = None
    quote_id: str | None = None
    resource: str | None = None
    status: str = "unconfirmed"
    detail: str = ""
    receipt: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    """A row of ``wallet_history``."""

    id: int
    txid: str
    direction: str
    kind: str
    amount: int
    fee: int
    counterparty: str | None
    quote_id: str | None
    resource: str | None
    status: str
    detail: str
    receipt: bytes | None
    created_at: float
    updated_at: float


# -- helpers shared with store/payments.py (they run inside a caller's transaction) --------------------------


_TX_UPSERT = (
    "INSERT INTO wallet_txs (txid, raw, parents, merkle_path, block_height, state, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (txid) DO UPDATE SET "
    "merkle_path = coalesce(wallet_txs.merkle_path, excluded.merkle_path), "
    "block_height = coalesce(wallet_txs.block_height, excluded.block_height), "
    "state = CASE WHEN excluded.merkle_path IS NOT NULL THEN 'proven' ELSE wallet_txs.state END"
)
_UTXO_INSERT = (
    "INSERT INTO wallet_utxos (txid, vout, satoshis, script, protocol, key_id, counterparty, origin, "
    "state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_HISTORY_INSERT = (
    "INSERT INTO wallet_history (txid, direction, kind, amount, fee, counterparty, quote_id, resource, "
    "status, detail, receipt, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _tx_row(tx: TxRecord, now: float) -> tuple[object, ...]:
    state = "proven" if tx.merkle_path is not None else "unproven"
    return (tx.txid, tx.raw, " ".join(tx.parents), tx.merkle_path, tx.block_height, state, now)


def _utxo_row(u: UtxoRecord, state: str, now: float) -> tuple[object, ...]:
    return (u.txid, u.vout, u.satoshis, u.script, u.protocol, u.key_id, u.counterparty, u.origin, state, now)


def _history_row(h: HistoryRecord, now: float) -> tuple[object, ...]:
    return (
        h.txid,
        h.direction,
        h.kind,
        h.amount,
        h.fee,
        h.counterparty,
        h.quote_id,
        h.resource,
        h.status,
        h.detail,
        h.receipt,
        now,
        now,
    )


def insert_txs(conn: sqlite3.Connection, txs: Sequence[TxRecord], now: float) -> None:
    """Add transactions the wallet does not hold yet; a known one gains a merkle path it lacked."""
    execute_rows(conn, _TX_UPSERT, [_tx_row(tx, now) for tx in txs])


def insert_utxo(conn: sqlite3.Connection, utxo: UtxoRecord, now: float, *, state: str = "spendable") -> None:
    conn.execute(_UTXO_INSERT, _utxo_row(utxo, state, now))


def insert_history(conn: sqlite3.Connection, h: HistoryRecord, now: float) -> int:
    cur = conn.execute(_HISTORY_INSERT, _history_row(h, now))
    return int(cur.lastrowid or 0)


def insert_many(
    conn: sqlite3.Connection,
    *,
    txs: Sequence[tuple[TxRecord, float]] = (),
    utxos: Sequence[tuple[UtxoRecord, float, str]] = (),
    histories: Sequence[tuple[HistoryRecord, float]] = (),
    jobs: Sequence[tuple[NewJob, float]] = (),
) -> None:
    """What :func:`insert_txs`, :func:`insert_utxo`, :func:`insert_history` and ``records.insert_job`` do, for many
    ``(record, now)`` pairs (``(utxo, now, state)`` for coins), one statement per table (a batch of payments)."""
    execute_rows(conn, _TX_UPSERT, [_tx_row(tx, now) for tx, now in txs])
    execute_rows(conn, _UTXO_INSERT, [_utxo_row(u, state, now) for u, now, state in utxos])
    execute_rows(conn, _HISTORY_INSERT, [_history_row(h, now) for h, now in histories])
    insert_jobs(conn, jobs)


#: many coins spent in one statement (``store/rows.py``): the CTE ``q`` lists (txid, vout, spender); the coins are
#: found through the primary key (``txid IN``), each matched to its row of ``q``; a pending coin is the change of
#: a payment whose answer came and is being recorded
_SPEND_MANY = (
    "WITH q(t, v, s) AS (VALUES {rows}) "
    "UPDATE wallet_utxos SET state = 'spent', "
    "spent_by = (SELECT s FROM q WHERE q.t = wallet_utxos.txid AND q.v = wallet_utxos.vout) "
    "WHERE txid IN (SELECT t FROM q) AND state IN ('spendable', 'pending') "
    "AND EXISTS (SELECT 1 FROM q WHERE q.t = wallet_utxos.txid AND q.v = wallet_utxos.vout)"
)


def _spend_all(conn: sqlite3.Connection, outs: Sequence[Outgoing]) -> Outpoint | None:
    """Mark the coins ``outs`` spend as spent, in as few statements as the parameter limit allows (each SQLite step
    is a GIL hand-off, see ``store/rows.py``); a coin that is not spendable (gone, spent already, not there yet, or
    spent twice in ``outs``) is returned (the caller undoes what was done), None when all were spendable."""
    rows = [(txid, vout, out.txid) for out in outs for txid, vout in out.spends]
    per = MAX_PARAMS // 3
    updated = 0
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        sql = _SPEND_MANY.format(rows=", ".join(["(?, ?, ?)"] * len(chunk)))
        before = conn.total_changes  # rowcount is -1 for a statement that starts with WITH
        conn.execute(sql, [value for row in chunk for value in row])
        updated += conn.total_changes - before
    if updated == len(rows):
        return None
    for txid, vout, spender in rows:  # rare: find a coin that stopped it, for the caller's message
        row = conn.execute("SELECT spent_by FROM wallet_utxos WHERE txid = ? AND vout = ?", (txid, vout)).fetchone()
        if row is None or row["spent_by"] != spender:
            return (txid, vout)
    return (rows[0][0], rows[0][1])  # a coin spent already by this very payment


def _commit_all(conn: sqlite3.Connection, outs: Sequence[Outgoing], now: float) -> Outpoint | None:
    """Record every one of ``outs``, one statement per table for the inserts and the coins spent; a coin that is
    no longer spendable stops it (returned: the caller undoes what was done), None when all are recorded."""
    lost = _spend_all(conn, outs)
    if lost is not None:
        return lost
    insert_many(
        conn,
        txs=[(tx, now) for out in outs for tx in out.txs],
        utxos=[(utxo, now, out.change_state) for out in outs for utxo in out.change],
        histories=[(out.history, now) for out in outs],
        jobs=[(out.job, now) for out in outs],
    )
    return None


def _tx(row: sqlite3.Row) -> TxRecord:
    parents = str(row["parents"])
    return TxRecord(
        txid=str(row["txid"]),
        raw=bytes(row["raw"]),
        parents=tuple(parents.split()) if parents else (),
        merkle_path=None if row["merkle_path"] is None else bytes(row["merkle_path"]),
        block_height=None if row["block_height"] is None else int(row["block_height"]),
    )


def _history(row: sqlite3.Row) -> HistoryEntry:
    return HistoryEntry(
        id=int(row["id"]),
        txid=str(row["txid"]),
        direction=str(row["direction"]),
        kind=str(row["kind"]),
        amount=int(row["amount"]),
        fee=int(row["fee"]),
        counterparty=None if row["counterparty"] is None else str(row["counterparty"]),
        quote_id=None if row["quote_id"] is None else str(row["quote_id"]),
        resource=None if row["resource"] is None else str(row["resource"]),
        status=str(row["status"]),
        detail=str(row["detail"]),
        receipt=None if row["receipt"] is None else bytes(row["receipt"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


# -- the wallet ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Deposit:
    """Money arriving from outside (the faucet): its transactions, the output, the history entry, and the
    job that follows it until mined."""

    txs: tuple[TxRecord, ...]
    utxo: UtxoRecord
    history: HistoryRecord
    job: NewJob


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """A transaction we made: the outputs it spends, itself (and any ancestors to keep), its change, the
    history entry and the settlement job. ``change_state`` is ``pending`` for a payment written ahead of
    sending it (the change becomes spendable when the payee answers or ARC sees the transaction). ``sent``: the
    outcomes of earlier payments that ride along (one transaction for both)."""

    txid: str
    spends: tuple[Outpoint, ...]
    txs: tuple[TxRecord, ...]
    change: tuple[UtxoRecord, ...]
    history: HistoryRecord
    job: NewJob
    change_state: Literal["spendable", "pending"] = "spendable"
    #: what became of payments written ahead before this one, recorded in the same transaction (applied whether or
    #: not this one's coins are still spendable; see :meth:`WalletRepository.record_sent`)
    sent: tuple[SentUpdate, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SentUpdate:
    """What became of a payment written ahead (:meth:`WalletRepository.commit_outgoing` with pending
    change): ``answered`` -> the change is spendable, history ``unconfirmed`` (with the receipt), the job
    submits; not answered -> history ``unknown`` (the job keeps watching)."""

    txid: str
    answered: bool
    receipt: bytes | None = None
    detail: str = ""


def _apply_sent(conn: sqlite3.Connection, updates: Sequence[SentUpdate], now: float, submit_at: float) -> None:
    """:meth:`WalletRepository.record_sent` in the open transaction."""
    # one statement each for the batch (an answer after "no answer" for the same payment still wins: the
    # unanswered go first, and an answer moves history on from 'unknown' too)
    answered = [u for u in updates if u.answered]
    unanswered = [(u.detail, now, u.txid) for u in updates if not u.answered]
    if unanswered:
        conn.executemany(
            "UPDATE wallet_history SET status = 'unknown', detail = ?, updated_at = ? "
            "WHERE txid = ? AND direction = 'out' AND status = 'sending'",
            unanswered,
        )
    if not answered:
        return
    conn.executemany(
        "UPDATE wallet_history SET status = 'unconfirmed', detail = ?, receipt = ?, updated_at = ? "
        "WHERE txid = ? AND direction = 'out' AND status IN ('sending', 'unknown')",
        [(u.detail, u.receipt, now, u.txid) for u in answered],
    )
    for start in range(0, len(answered), MAX_PARAMS - 2):
        txids = [u.txid for u in answered[start : start + MAX_PARAMS - 2]]
        conn.execute(
            f"UPDATE wallet_utxos SET state = 'spendable' WHERE txid IN ({marks(len(txids))}) AND state = 'pending'",
            txids,
        )
        conn.execute(
            "UPDATE settlement SET kind = 'submit', deadline = NULL, next_at = ?, updated_at = ? "
            f"WHERE txid IN ({marks(len(txids))}) AND kind = 'watch'",
            [submit_at, now, *txids],
        )


def _commit_outgoing(
    conn: sqlite3.Connection, outs: Sequence[Outgoing], now: float, submit_at: float | None = None
) -> list[Conflict | None]:
    """:meth:`WalletRepository.commit_outgoing` in the open transaction."""
    riding = [u for out in outs for u in out.sent]
    if riding:  # first, and kept whatever becomes of the payments below
        _apply_sent(conn, riding, now, now if submit_at is None else submit_at)
    # the common case: every coin still spendable, one insert per table for the whole batch; else the batch is
    # undone and goes one by one, so that only the payments that lost a coin are refused
    conn.execute("SAVEPOINT outgoing_all")
    try:
        if _commit_all(conn, outs, now) is None:
            conn.execute("RELEASE outgoing_all")
            return [None] * len(outs)
    except sqlite3.IntegrityError:
        pass  # a constraint the one-by-one path reports on the payment that breaks it
    conn.execute("ROLLBACK TO outgoing_all")
    conn.execute("RELEASE outgoing_all")
    outcomes: list[Conflict | None] = []
    for out in outs:
        conn.execute("SAVEPOINT outgoing")
        lost = _commit_all(conn, [out], now)
        if lost is None:
            outcomes.append(None)
        else:
            conn.execute("ROLLBACK TO outgoing")
            outcomes.append(Conflict(f"output {lost[0]}:{lost[1]} is no longer spendable"))
        conn.execute("RELEASE outgoing")
    return outcomes


class WalletRepository:
    """Typed access to the wallet tables. Reach it as ``store.wallet``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def spendable(self) -> list[UtxoRecord]:
        """Every spendable output, oldest first."""

        def txn(conn: sqlite3.Connection) -> list[UtxoRecord]:
            rows = conn.execute(f"{UTXO_SELECT} WHERE u.state = 'spendable' ORDER BY u.created_at").fetchall()
            return [utxo_from_row(r) for r in rows]

        return await self._db.read(txn)

    async def utxo_states(self, outpoints: Collection[Outpoint]) -> dict[Outpoint, str]:
        """The state of each of ``outpoints`` the wallet knows (for tests and checks)."""

        def txn(conn: sqlite3.Connection) -> dict[Outpoint, str]:
            out: dict[Outpoint, str] = {}
            for txid, vout in outpoints:
                row = conn.execute(
                    "SELECT state FROM wallet_utxos WHERE txid = ? AND vout = ?", (txid, vout)
                ).fetchone()
                if row is not None:
                    out[(txid, vout)] = str(row["state"])
            return out

        return await self._db.read(txn)

    async def add_deposit(self, deposit: Deposit, *, now: float) -> None:
        """Record money from outside, with its job, in one transaction.

        Raises:
            Conflict: the output is already recorded.
        """

        def txn(conn: sqlite3.Connection) -> None:
            known = conn.execute(
                "SELECT 1 FROM wallet_utxos WHERE txid = ? AND vout = ?",
                (deposit.utxo.txid, deposit.utxo.vout),
            ).fetchone()
            if known is not None:
                raise Conflict(f"output {deposit.utxo.txid}:{deposit.utxo.vout} is already in the wallet")
            insert_txs(conn, deposit.txs, now)
            insert_utxo(conn, deposit.utxo, now)
            insert_history(conn, deposit.history, now)
            insert_job(conn, deposit.job, now)

        await self._db.write(txn)

    async def keep_txs(self, txs: Sequence[TxRecord], *, now: float) -> None:
        """Add transactions the wallet lacked (an ancestor fetched from the ledger); a known one gains a merkle path
        it lacked."""
        await self._db.write(lambda conn: insert_txs(conn, txs, now))

    async def commit_outgoing(
        self,
        outs: Sequence[Outgoing],
        *,
        now: float,
        submit_at: float | None = None,
        inline: bool = False,
        shielded: bool = False,
    ) -> list[Conflict | None]:
        """Record transactions we made (see :class:`Outgoing`) in one database transaction, each on its own: one
        whose input is no longer spendable is not recorded (its outcome is that Conflict), the others are. The
        outcomes riding along (``Outgoing.sent``) are recorded as :meth:`record_sent` does (their jobs due at
        ``submit_at``, default ``now``), whatever becomes of the others. ``inline``: on the event loop's thread when
        the writer thread is idle (``Database.write``, invariant 8), for a payer's lone write-ahead; ``shielded``: as
        ``Database.write``'s.

        Raises:
            StoreError: the database failed; nothing was recorded.
        """
        return await self._db.write(
            lambda conn: _commit_outgoing(conn, outs, now, submit_at), urgent=True, inline=inline, shielded=shielded
        )

    def outgoing_txn(
        self, *, now: Callable[[], float], submit_at: Callable[[float], float] | None = None
    ) -> BatchTxn[Outgoing, Conflict | None]:
        """:meth:`commit_outgoing` as a group commit's transaction (urgent), for ``GroupCommit`` to run in the
        store's writer thread; ``now()`` is read there, when the batch is written, and the jobs of the outcomes
        riding along are due at ``submit_at(now)`` (default ``now``)."""

        def txn(conn: sqlite3.Connection, outs: list[Outgoing]) -> list[Conflict | None]:
            at = now()
            return _commit_outgoing(conn, outs, at, None if submit_at is None else submit_at(at))

        return BatchTxn(self._db, txn, urgent=True)

    async def record_sent(self, updates: Sequence[SentUpdate], *, now: float, submit_at: float) -> None:
        """Apply what became of payments written ahead (see :class:`SentUpdate`), in one transaction; the jobs
        of the answered ones become submissions, due at ``submit_at``."""
        await self._db.write(lambda conn: _apply_sent(conn, updates, now, submit_at))

    async def abort_outgoing(self, txid: str) -> None:
        """Undo a payment written ahead that the payee refused: its coins are spendable again and it leaves
        no trace (transaction, change, history entry, job)."""

        def txn(conn: sqlite3.Connection) -> None:
            unspend(conn, txid)
            conn.execute("DELETE FROM wallet_utxos WHERE txid = ?", (txid,))
            conn.execute("DELETE FROM wallet_history WHERE txid = ? AND direction = 'out'", (txid,))
            conn.execute("DELETE FROM settlement WHERE txid = ?", (txid,))
            conn.execute("DELETE FROM wallet_txs WHERE txid = ?", (txid,))

        await self._db.write(txn)

    async def txs(self, txids: Collection[str]) -> dict[str, TxRecord]:
        """The transactions among ``txids`` the wallet holds."""

        def txn(conn: sqlite3.Connection) -> dict[str, TxRecord]:
            out: dict[str, TxRecord] = {}
            items = list(txids)
            for i in range(0, len(items), _BATCH):
                chunk = items[i : i + _BATCH]
                rows = conn.execute(
                    "SELECT txid, raw, parents, merkle_path, block_height FROM wallet_txs "
                    f"WHERE txid IN ({marks(len(chunk))})",
                    chunk,
                ).fetchall()
                out.update((str(r["txid"]), _tx(r)) for r in rows)
            return out

        return await self._db.read(txn)

    async def ancestry(self, txids: Collection[str], *, stop: Collection[str] = ()) -> dict[str, TxRecord]:
        """``txids`` and their ancestors the wallet holds, walking up through unproven transactions only and
        not past any txid in ``stop`` (which is not looked up either)."""
        stop_set = set(stop)

        def txn(conn: sqlite3.Connection) -> dict[str, TxRecord]:
            out: dict[str, TxRecord] = {}
            todo = [t for t in txids if t not in stop_set]
            while todo:
                current = todo.pop()
                if current in out:
                    continue
                row = conn.execute(
                    "SELECT txid, raw, parents, merkle_path, block_height FROM wallet_txs WHERE txid = ?",
                    (current,),
                ).fetchone()
                if row is None:
                    continue
                tx = _tx(row)
                out[current] = tx
                if not tx.proven:
                    todo.extend(p for p in tx.parents if p not in out and p not in stop_set)
            return out

        return await self._db.read(txn)

    async def history(self, *, limit: int = 100, before_id: int | None = None) -> list[HistoryEntry]:
        """History entries, newest first (``before_id`` pages back)."""

        def txn(conn: sqlite3.Connection) -> list[HistoryEntry]:
            if before_id is None:
                rows = conn.execute("SELECT * FROM wallet_history ORDER BY id DESC LIMIT ?", (limit,))
            else:
                rows = conn.execute(
                    "SELECT * FROM wallet_history WHERE id < ? ORDER BY id DESC LIMIT ?", (before_id, limit)
                )
            return [_history(r) for r in rows.fetchall()]

        return await self._db.read(txn)

    async def history_for(self, txid: str) -> list[HistoryEntry]:
        def txn(conn: sqlite3.Connection) -> list[HistoryEntry]:
            rows = conn.execute("SELECT * FROM wallet_history WHERE txid = ? ORDER BY id", (txid,)).fetchall()
            return [_history(r) for r in rows]

        return await self._db.read(txn)
