"""The wallet's repositories: transactions, outputs (UTXOs) and history (``store.wallet``), and the settlement
queue (``store.settlement``). Tables from migration ``0004_wallet``.

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
   receive is committed whole too (``store.payments``).
4. A settlement job leaves ``pending``/``progressing``/``seen`` only for ``mined``, ``failed`` or
   ``abandoned``, and its effects on outputs, history and payments land in the same transaction as the new
   state (:meth:`SettlementRepository.apply`).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from overlay_node.errors import Conflict
from overlay_node.store.rows import MAX_PARAMS, execute_rows, marks

if TYPE_CHECKING:
    from overlay_node.store.engine import Database

__all__ = [
    "DUE_HOLD_SQL",
    "DUE_SQL",
    "NEXT_DUE_SQL",
    "HistoryEntry",
    "HistoryRecord",
    "JobState",
    "JobUpdate",
    "NewJob",
    "Outpoint",
    "SentUpdate",
    "SettlementEffects",
    "SettlementJob",
    "SettlementRepository",
    "TxRecord",
    "UtxoRecord",
    "WalletRepository",
]

#: (txid, output index)
Outpoint = tuple[str, int]
JobState = Literal["pending", "progressing", "seen", "mined", "failed", "abandoned"]
JobKind = Literal["submit", "watch"]
#: job states after which nothing more happens
TERMINAL_STATES: frozenset[str] = frozenset({"mined", "failed", "abandoned"})

_BATCH = 500
#: the condition of the partial index settlement_due, word for word (SQLite uses a partial index only for a query
#: whose WHERE holds its condition as written)
_OPEN_JOB = "state NOT IN ('mined', 'failed', 'abandoned')"
# The settlement queue's hot queries go through that index: finished jobs stay in the table, so a plan that walks
# the table in id order (what SQLite picks for a bare ORDER BY id or MIN(id)) would scan every payment ever made,
# every few hundred milliseconds. "+id" keeps the planner off it. tests/integration/test_store.py checks the plans.
#: the first pending submission that is waiting to retry (it holds back the ones queued after it)
DUE_HOLD_SQL = (
    f"SELECT MIN(+id) FROM settlement WHERE {_OPEN_JOB} AND state = 'pending' AND kind = 'submit' AND next_at > ?"
)
#: the due jobs, oldest first
DUE_SQL = (
    f"SELECT * FROM settlement WHERE {_OPEN_JOB} AND next_at <= ? "
    "AND NOT (state = 'pending' AND kind = 'submit' AND id > ?) ORDER BY +id LIMIT ?"
)
#: when the next job :data:`DUE_SQL` would return comes due (the jobs held back wait for the one holding them)
NEXT_DUE_SQL = (
    f"SELECT MIN(next_at) FROM settlement WHERE {_OPEN_JOB} AND NOT (state = 'pending' AND kind = 'submit' AND id > ?)"
)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class SettlementJob:
    """A row of ``settlement``."""

    id: int
    txid: str
    beef: bytes
    kind: JobKind
    state: JobState
    attempts: int
    next_at: float
    deadline: float | None
    arc_status: str | None
    detail: str
    created_at: float

    @property
    def settled(self) -> bool:
        """ARC accepted it and the network has seen it (or mined it)."""
        return self.state in ("seen", "mined")

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True, kw_only=True)
class JobUpdate:
    """What one ARC answer does to a job (from ``services.settlement.decide``).

    ``double_spend`` (with a failure) says the inputs were spent by a competing transaction, so they are lost;
    otherwise a failed transaction's inputs become spendable again.
    """

    state: JobState
    attempts: int
    next_at: float
    arc_status: str | None = None
    detail: str = ""
    merkle_path: bytes | None = None
    block_height: int | None = None
    double_spend: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SettlementEffects:
    """How a job update changed the wallet: txids now proven, outputs now dead, outputs spendable again."""

    proven: tuple[str, ...] = ()
    dead: tuple[Outpoint, ...] = ()
    restored: tuple[UtxoRecord, ...] = ()
    failed_payments: tuple[str, ...] = field(default=())


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
_JOB_INSERT = (
    "INSERT INTO settlement (txid, beef, kind, state, next_at, deadline, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (txid) DO NOTHING"
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


def _job_row(job: NewJob, now: float) -> tuple[object, ...]:
    return (job.txid, job.beef, job.kind, job.state, job.next_at, job.deadline, now, now)


def insert_txs(conn: sqlite3.Connection, txs: Sequence[TxRecord], now: float) -> None:
    """Add transactions the wallet does not hold yet; a known one gains a merkle path it lacked."""
    execute_rows(conn, _TX_UPSERT, [_tx_row(tx, now) for tx in txs])


def insert_utxo(conn: sqlite3.Connection, utxo: UtxoRecord, now: float, *, state: str = "spendable") -> None:
    conn.execute(_UTXO_INSERT, _utxo_row(utxo, state, now))


def insert_history(conn: sqlite3.Connection, h: HistoryRecord, now: float) -> int:
    cur = conn.execute(_HISTORY_INSERT, _history_row(h, now))
    return int(cur.lastrowid or 0)


def insert_job(conn: sqlite3.Connection, job: NewJob, now: float) -> None:
    """Queue ``job``; a transaction already queued keeps its job (the first one wins)."""
    conn.execute(_JOB_INSERT, _job_row(job, now))


def insert_many(
    conn: sqlite3.Connection,
    *,
    txs: Sequence[tuple[TxRecord, float]] = (),
    utxos: Sequence[tuple[UtxoRecord, float, str]] = (),
    histories: Sequence[tuple[HistoryRecord, float]] = (),
    jobs: Sequence[tuple[NewJob, float]] = (),
) -> None:
    """What :func:`insert_txs`, :func:`insert_utxo`, :func:`insert_history` and :func:`insert_job` do, for many
    ``(record, now)`` pairs (``(utxo, now, state)`` for coins), one statement per table (a batch of payments)."""
    execute_rows(conn, _TX_UPSERT, [_tx_row(tx, now) for tx, now in txs])
    execute_rows(conn, _UTXO_INSERT, [_utxo_row(u, state, now) for u, now, state in utxos])
    execute_rows(conn, _HISTORY_INSERT, [_history_row(h, now) for h, now in histories])
    execute_rows(conn, _JOB_INSERT, [_job_row(job, now) for job, now in jobs])


#: a pending coin is the change of a payment whose answer came and is being recorded
_SPEND_UPDATE = (
    "UPDATE wallet_utxos SET state = 'spent', spent_by = ? WHERE txid = ? AND vout = ? "
    "AND state IN ('spendable', 'pending')"
)


def _commit_all(conn: sqlite3.Connection, outs: Sequence[Outgoing], now: float) -> Outpoint | None:
    """Record every one of ``outs``, one statement per table for the inserts; the first coin that is no longer
    spendable stops it (returned: the caller undoes what was done), None when all are recorded."""
    for out in outs:
        for outpoint in out.spends:
            if conn.execute(_SPEND_UPDATE, (out.txid, *outpoint)).rowcount != 1:
                return outpoint
    insert_many(
        conn,
        txs=[(tx, now) for out in outs for tx in out.txs],
        utxos=[(utxo, now, out.change_state) for out in outs for utxo in out.change],
        histories=[(out.history, now) for out in outs],
        jobs=[(out.job, now) for out in outs],
    )
    return None


def _utxo(row: sqlite3.Row) -> UtxoRecord:
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


_UTXO_SELECT = (
    "SELECT u.txid, u.vout, u.satoshis, u.script, u.protocol, u.key_id, u.counterparty, u.origin, "
    "t.merkle_path FROM wallet_utxos u LEFT JOIN wallet_txs t ON t.txid = u.txid"
)


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
    sending it (the change becomes spendable when the payee answers or ARC sees the transaction)."""

    txid: str
    spends: tuple[Outpoint, ...]
    txs: tuple[TxRecord, ...]
    change: tuple[UtxoRecord, ...]
    history: HistoryRecord
    job: NewJob
    change_state: Literal["spendable", "pending"] = "spendable"


@dataclass(frozen=True, slots=True, kw_only=True)
class SentUpdate:
    """What became of a payment written ahead (:meth:`WalletRepository.commit_outgoing` with pending
    change): ``answered`` -> the change is spendable, history ``unconfirmed`` (with the receipt), the job
    submits; not answered -> history ``unknown`` (the job keeps watching)."""

    txid: str
    answered: bool
    receipt: bytes | None = None
    detail: str = ""


class WalletRepository:
    """Typed access to the wallet tables. Reach it as ``store.wallet``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def spendable(self) -> list[UtxoRecord]:
        """Every spendable output, oldest first."""

        def txn(conn: sqlite3.Connection) -> list[UtxoRecord]:
            rows = conn.execute(f"{_UTXO_SELECT} WHERE u.state = 'spendable' ORDER BY u.created_at").fetchall()
            return [_utxo(r) for r in rows]

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

    async def commit_outgoing(self, outs: Sequence[Outgoing], *, now: float) -> list[Conflict | None]:
        """Record transactions we made (see :class:`Outgoing`) in one database transaction, each on its own: one
        whose input is no longer spendable is not recorded (its outcome is that Conflict), the others are.

        Raises:
            StoreError: the database failed; nothing was recorded.
        """

        def one(conn: sqlite3.Connection, out: Outgoing) -> None:
            lost = _commit_all(conn, [out], now)
            if lost is not None:
                raise Conflict(f"output {lost[0]}:{lost[1]} is no longer spendable")

        def txn(conn: sqlite3.Connection) -> list[Conflict | None]:
            # the common case: every coin still spendable, one insert per table for the whole batch; else the
            # batch is undone and goes one by one, so that only the payments that lost a coin are refused
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
                try:
                    one(conn, out)
                    outcomes.append(None)
                except Conflict as exc:
                    conn.execute("ROLLBACK TO outgoing")
                    outcomes.append(exc)
                conn.execute("RELEASE outgoing")
            return outcomes

        return await self._db.write(txn, urgent=True)  # payments wait on it

    async def record_sent(self, updates: Sequence[SentUpdate], *, now: float, submit_at: float) -> None:
        """Apply what became of payments written ahead (see :class:`SentUpdate`), in one transaction; the jobs
        of the answered ones become submissions, due at ``submit_at``."""

        def txn(conn: sqlite3.Connection) -> None:
            # one statement each for the batch (an answer after "no answer" for the same payment still wins:
            # the unanswered go first, and an answer moves history on from 'unknown' too)
            answered = [u for u in updates if u.answered]
            conn.executemany(
                "UPDATE wallet_history SET status = 'unknown', detail = ?, updated_at = ? "
                "WHERE txid = ? AND direction = 'out' AND status = 'sending'",
                [(u.detail, now, u.txid) for u in updates if not u.answered],
            )
            conn.executemany(
                "UPDATE wallet_history SET status = 'unconfirmed', detail = ?, receipt = ?, updated_at = ? "
                "WHERE txid = ? AND direction = 'out' AND status IN ('sending', 'unknown')",
                [(u.detail, u.receipt, now, u.txid) for u in answered],
            )
            for start in range(0, len(answered), MAX_PARAMS - 2):
                txids = [u.txid for u in answered[start : start + MAX_PARAMS - 2]]
                conn.execute(
                    f"UPDATE wallet_utxos SET state = 'spendable' WHERE txid IN ({marks(len(txids))}) "
                    "AND state = 'pending'",
                    txids,
                )
                conn.execute(
                    "UPDATE settlement SET kind = 'submit', deadline = NULL, next_at = ?, updated_at = ? "
                    f"WHERE txid IN ({marks(len(txids))}) AND kind = 'watch'",
                    [submit_at, now, *txids],
                )

        await self._db.write(txn)

    async def abort_outgoing(self, txid: str) -> None:
        """Undo a payment written ahead that the payee refused: its coins are spendable again and it leaves
        no trace (transaction, change, history entry, job)."""

        def txn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE wallet_utxos SET state = 'spendable', spent_by = NULL WHERE spent_by = ? AND state = 'spent'",
                (txid,),
            )
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


# -- the settlement queue ------------------------------------------------------------------------------------


def _job(row: sqlite3.Row) -> SettlementJob:
    return SettlementJob(
        id=int(row["id"]),
        txid=str(row["txid"]),
        beef=bytes(row["beef"]),
        kind=row["kind"],
        state=row["state"],
        attempts=int(row["attempts"]),
        next_at=float(row["next_at"]),
        deadline=None if row["deadline"] is None else float(row["deadline"]),
        arc_status=None if row["arc_status"] is None else str(row["arc_status"]),
        detail=str(row["detail"]),
        created_at=float(row["created_at"]),
    )


class SettlementRepository:
    """The settlement queue. Reach it as ``store.settlement``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, job: NewJob, *, now: float) -> None:
        """Queue a job (a txid already queued keeps its job)."""

        def txn(conn: sqlite3.Connection) -> None:
            insert_job(conn, job, now)

        await self._db.write(txn, durable=True)

    async def due(self, now: float, *, limit: int) -> list[SettlementJob]:
        """Open jobs whose time has come, oldest first.

        Submissions keep their order: a ``pending`` submit job that is not due yet (waiting to retry) holds
        back every ``pending`` submit job queued after it, because a later transaction may spend an earlier
        one (ARC refuses a transaction whose parent it has not seen).
        """

        def txn(conn: sqlite3.Connection) -> list[SettlementJob]:
            hold = conn.execute(DUE_HOLD_SQL, (now,)).fetchone()[0]
            rows = conn.execute(DUE_SQL, (now, 2**62 if hold is None else int(hold), limit)).fetchall()
            return [_job(r) for r in rows]

        return await self._db.read(txn)

    async def next_due(self, now: float) -> float | None:
        """When :meth:`due` will next return a job (wall-clock seconds; at most ``now`` if it would now), or None
        when no job is open.

        A pending submission held back behind one that waits to retry (see :meth:`due`) is not counted: it comes
        due with the one holding it. (Counting it had the queue worker wake, find nothing to do, and wake again
        at once, until the holder came due.)
        """

        def txn(conn: sqlite3.Connection) -> float | None:
            hold = conn.execute(DUE_HOLD_SQL, (now,)).fetchone()[0]
            row = conn.execute(NEXT_DUE_SQL, (2**62 if hold is None else int(hold),)).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._db.read(txn)

    async def get(self, txid: str) -> SettlementJob | None:
        def txn(conn: sqlite3.Connection) -> SettlementJob | None:
            row = conn.execute("SELECT * FROM settlement WHERE txid = ?", (txid,)).fetchone()
            return None if row is None else _job(row)

        return await self._db.read(txn)

    async def counts(self) -> dict[str, int]:
        """Jobs per state."""

        def txn(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT state, COUNT(*) AS n FROM settlement GROUP BY state").fetchall()
            return {str(r["state"]): int(r["n"]) for r in rows}

        return await self._db.read(txn)

    async def apply(self, job: SettlementJob, update: JobUpdate, *, now: float) -> SettlementEffects:
        """Move ``job`` to ``update`` and apply what that means to the wallet, in one durable transaction.

        - ``seen``: payments paid by the transaction become ``settled``.
        - ``mined``: the transaction gets its merkle path (its outputs are proven), history ``confirmed``,
          payments ``mined``.
        - ``failed``/``abandoned``: its outputs die, history and payments ``failed``/``abandoned``; its inputs
          become spendable again, unless it was a double spend (then they are dead too).

        A job already in a terminal state is left alone (the effects are empty).
        """

        def txn(conn: sqlite3.Connection) -> SettlementEffects:
            return _apply_job(conn, job, update, now)

        return await self._db.write(txn, durable=True)

    async def apply_many(
        self, items: Sequence[tuple[SettlementJob, JobUpdate]], *, now: float
    ) -> list[SettlementEffects]:
        """:meth:`apply` for several jobs in one durable transaction (one commit for a batch of ARC answers)."""

        def txn(conn: sqlite3.Connection) -> list[SettlementEffects]:
            return [_apply_job(conn, job, update, now) for job, update in items]

        return await self._db.write(txn, durable=True)


def _apply_found(conn: sqlite3.Connection, txid: str, now: float) -> tuple[UtxoRecord, ...]:
    rows = conn.execute(f"{_UTXO_SELECT} WHERE u.txid = ? AND u.state = 'pending'", (txid,)).fetchall()
    if rows:
        conn.execute("UPDATE wallet_utxos SET state = 'spendable' WHERE txid = ? AND state = 'pending'", (txid,))
    conn.execute(
        "UPDATE wallet_history SET status = 'unconfirmed', updated_at = ? "
        "WHERE txid = ? AND status IN ('sending', 'unknown')",
        (now, txid),
    )
    return tuple(_utxo(r) for r in rows)


def _apply_mined(conn: sqlite3.Connection, txid: str, update: JobUpdate, now: float) -> SettlementEffects:
    conn.execute(
        "UPDATE wallet_txs SET merkle_path = ?, block_height = ?, state = 'proven' WHERE txid = ?",
        (update.merkle_path, update.block_height, txid),
    )
    conn.execute(
        "UPDATE wallet_history SET status = 'confirmed', detail = '', updated_at = ? WHERE txid = ?",
        (now, txid),
    )
    conn.execute(
        "UPDATE payments SET status = 'mined', updated_at = ? WHERE txid = ? AND status != 'failed'",
        (now, txid),
    )
    return SettlementEffects(proven=(txid,))


def _apply_failed(conn: sqlite3.Connection, txid: str, update: JobUpdate, now: float) -> SettlementEffects:
    status = update.state  # failed | abandoned
    dead_rows = conn.execute(
        "SELECT vout FROM wallet_utxos WHERE txid = ? AND state IN ('spendable', 'pending')", (txid,)
    ).fetchall()
    dead: list[Outpoint] = [(txid, int(r["vout"])) for r in dead_rows]
    conn.execute("UPDATE wallet_utxos SET state = 'dead' WHERE txid = ? AND state IN ('spendable', 'pending')", (txid,))
    restored: list[UtxoRecord] = []
    inputs = conn.execute("SELECT txid, vout FROM wallet_utxos WHERE spent_by = ?", (txid,)).fetchall()
    if update.double_spend:
        conn.execute("UPDATE wallet_utxos SET state = 'dead' WHERE spent_by = ?", (txid,))
    else:
        conn.execute(
            "UPDATE wallet_utxos SET state = 'spendable', spent_by = NULL WHERE spent_by = ? AND state = 'spent'",
            (txid,),
        )
        for r in inputs:
            row = conn.execute(
                f"{_UTXO_SELECT} WHERE u.txid = ? AND u.vout = ? AND u.state = 'spendable'",
                (str(r["txid"]), int(r["vout"])),
            ).fetchone()
            if row is not None:
                restored.append(_utxo(row))
    conn.execute("UPDATE wallet_txs SET state = 'failed' WHERE txid = ? AND merkle_path IS NULL", (txid,))
    conn.execute(
        "UPDATE wallet_history SET status = ?, detail = ?, updated_at = ? WHERE txid = ?",
        (status, update.detail, now, txid),
    )
    failed = conn.execute("SELECT quote_id FROM payments WHERE txid = ?", (txid,)).fetchall()
    conn.execute(
        "UPDATE payments SET status = 'failed', detail = ?, updated_at = ? WHERE txid = ?",
        (update.detail, now, txid),
    )
    return SettlementEffects(
        dead=tuple(dead),
        restored=tuple(restored),
        failed_payments=tuple(str(r["quote_id"]) for r in failed),
    )


def _apply_job(conn: sqlite3.Connection, job: SettlementJob, update: JobUpdate, now: float) -> SettlementEffects:
    row = conn.execute("SELECT state FROM settlement WHERE id = ?", (job.id,)).fetchone()
    if row is None or str(row["state"]) in TERMINAL_STATES:
        return SettlementEffects()
    terminal = update.state in TERMINAL_STATES
    conn.execute(
        "UPDATE settlement SET state = ?, attempts = ?, next_at = ?, arc_status = ?, detail = ?, "
        "updated_at = ?, beef = CASE WHEN ? THEN x'' ELSE beef END WHERE id = ?",
        (
            update.state,
            update.attempts,
            update.next_at,
            update.arc_status,
            update.detail,
            now,
            terminal,
            job.id,
        ),
    )
    if update.state in ("failed", "abandoned"):
        return _apply_failed(conn, job.txid, update, now)
    if update.state not in ("progressing", "seen", "mined"):
        return SettlementEffects()  # pending again: nothing learnt about the transaction
    # ARC holds the transaction: a payment we wrote ahead and never heard back about went through
    restored = _apply_found(conn, job.txid, now)
    if update.state == "seen":
        conn.execute(
            "UPDATE payments SET status = 'settled', updated_at = ? WHERE txid = ? AND status = 'accepted'",
            (now, job.txid),
        )
    if update.state == "mined":
        mined = _apply_mined(conn, job.txid, update, now)
        return dataclasses.replace(mined, restored=restored)
    return SettlementEffects(restored=restored)
