"""The settlement queue's repository (``store.settlement``): a job per transaction the node made or received,
followed through ARC until it is mined or fails. Table ``settlement`` from migration ``0004_wallet``; the jobs are
written with the transactions they follow (``store/records.py``'s ``insert_job``, inside the wallet's and the
payments' writes).

Invariant (kept by doing the whole change in one write transaction): a settlement job leaves
``pending``/``progressing``/``seen`` only for ``mined``, ``failed`` or ``abandoned``, and its effects on outputs,
history and payments land in the same transaction as the new state (:meth:`SettlementRepository.apply`).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from overlay_node.store.records import (
    UTXO_SELECT,
    JobKind,
    JobState,
    NewJob,
    Outpoint,
    UtxoRecord,
    insert_job,
    spent_by,
    unspend,
    utxo_from_row,
)
from overlay_node.store.rows import MAX_PARAMS, execute_rows, marks

if TYPE_CHECKING:
    from overlay_node.store.engine import Database

__all__ = [
    "DUE_HOLD_SQL",
    "DUE_SQL",
    "NEXT_DUE_SQL",
    "TERMINAL_STATES",
    "JobUpdate",
    "SettlementEffects",
    "SettlementJob",
    "SettlementRepository",
]

#: job states after which nothing more happens
TERMINAL_STATES: frozenset[str] = frozenset({"mined", "failed", "abandoned"})

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
    """What one ARC answer does to a job (from ``services.settlement.decide``, or ``implied`` for a job that a later
    transaction's answer settles).

    ``double_spend`` (with a failure) says the inputs were spent by a competing transaction, so they are lost;
    otherwise a failed transaction's inputs become spendable again. ``mined`` without ``merkle_path``: mined as the
    later transaction that spends it was (its transaction stays unproven in the wallet, which needs no proof of it:
    none of its coins is left).
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

    async def coins_of(self, txids: Sequence[str]) -> list[tuple[str, str, str | None]]:
        """The wallet's coins that ``txids`` made: ``(txid, state, spent_by)`` each (for the settlement queue to see
        which of its transactions a later one stands for: ``services.settlement.covered_by``)."""

        def txn(conn: sqlite3.Connection) -> list[tuple[str, str, str | None]]:
            rows: list[tuple[str, str, str | None]] = []
            for part in _chunks(list(txids), MAX_PARAMS):
                found = conn.execute(
                    f"SELECT txid, state, spent_by FROM wallet_utxos WHERE txid IN ({marks(len(part))})", part
                )
                rows.extend((str(r["txid"]), str(r["state"]), r["spent_by"]) for r in found.fetchall())
            return rows

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
        """:meth:`apply` for several jobs in one durable transaction (one commit for a batch of ARC answers), one
        effects each, in order; the jobs that went on (seen, mined: nearly all of a paid stream's) in a few
        statements for the whole batch (``store/rows.py``: each statement is a GIL hand-off per step)."""

        def txn(conn: sqlite3.Connection) -> list[SettlementEffects]:
            return _apply_jobs(conn, items, now)

        return await self._db.write(txn, durable=True)


def _apply_found(conn: sqlite3.Connection, txid: str, now: float) -> tuple[UtxoRecord, ...]:
    rows = conn.execute(f"{UTXO_SELECT} WHERE u.txid = ? AND u.state = 'pending'", (txid,)).fetchall()
    if rows:
        conn.execute("UPDATE wallet_utxos SET state = 'spendable' WHERE txid = ? AND state = 'pending'", (txid,))
    conn.execute(
        "UPDATE wallet_history SET status = 'unconfirmed', updated_at = ? "
        "WHERE txid = ? AND status IN ('sending', 'unknown')",
        (now, txid),
    )
    return tuple(utxo_from_row(r) for r in rows)


def _apply_mined(conn: sqlite3.Connection, txid: str, update: JobUpdate, now: float) -> SettlementEffects:
    if update.merkle_path is None:  # mined as a later transaction that spends it was: no proof of its own
        proven: tuple[str, ...] = ()
    else:
        conn.execute(
            "UPDATE wallet_txs SET merkle_path = ?, block_height = ?, state = 'proven' WHERE txid = ?",
            (update.merkle_path, update.block_height, txid),
        )
        proven = (txid,)
    conn.execute(
        "UPDATE wallet_history SET status = 'confirmed', detail = '', updated_at = ? WHERE txid = ?",
        (now, txid),
    )
    _payments_mined(conn, [txid], now)
    return SettlementEffects(proven=proven)


def _paid_by(count: int) -> str:
    """``WHERE`` of the payments received in ``count`` transactions (their txids bound in): found through their
    history entries (``direction = 'in'``, which name the quote), since ``payments`` has no index by txid (migration
    ``0015_payments_unindexed_by_txid``)."""
    return (
        f"quote_id IN (SELECT quote_id FROM wallet_history WHERE txid IN ({marks(count)}) "
        "AND direction = 'in' AND quote_id IS NOT NULL)"
    )


def _payments_settled(conn: sqlite3.Connection, txids: list[str], now: float) -> None:
    """The payments received in ``txids`` (ARC has seen them) that were only accepted are settled."""
    for part in _chunks(txids):
        paid = _paid_by(len(part))
        conn.execute(
            f"UPDATE payments SET status = 'settled', updated_at = ? WHERE {paid} AND status = 'accepted'", [now, *part]
        )


def _payments_mined(conn: sqlite3.Connection, txids: list[str], now: float) -> None:
    """The payments received in ``txids`` (mined) are mined, unless they failed."""
    for part in _chunks(txids):
        paid = _paid_by(len(part))
        conn.execute(
            f"UPDATE payments SET status = 'mined', updated_at = ? WHERE {paid} AND status != 'failed'", [now, *part]
        )


def _apply_failed(conn: sqlite3.Connection, txid: str, update: JobUpdate, now: float) -> SettlementEffects:
    status = update.state  # failed | abandoned
    dead_rows = conn.execute(
        "UPDATE wallet_utxos SET state = 'dead' WHERE txid = ? AND state IN ('spendable', 'pending') RETURNING vout",
        (txid,),
    ).fetchall()
    dead: list[Outpoint] = [(txid, int(r["vout"])) for r in dead_rows]
    restored: list[UtxoRecord] = []
    if update.double_spend:
        conn.executemany("UPDATE wallet_utxos SET state = 'dead' WHERE txid = ? AND vout = ?", spent_by(conn, txid))
    else:
        for outpoint in unspend(conn, txid):
            row = conn.execute(f"{UTXO_SELECT} WHERE u.txid = ? AND u.vout = ? AND u.state = 'spendable'", outpoint)
            found = row.fetchone()
            if found is not None:
                restored.append(utxo_from_row(found))
    conn.execute("UPDATE wallet_txs SET state = 'failed' WHERE txid = ? AND merkle_path IS NULL", (txid,))
    conn.execute(
        "UPDATE wallet_history SET status = ?, detail = ?, updated_at = ? WHERE txid = ?",
        (status, update.detail, now, txid),
    )
    failed = conn.execute(
        f"UPDATE payments SET status = 'failed', detail = ?, updated_at = ? WHERE {_paid_by(1)} RETURNING quote_id",
        (update.detail, now, txid),
    ).fetchall()
    return SettlementEffects(
        dead=tuple(dead),
        restored=tuple(restored),
        failed_payments=tuple(str(r["quote_id"]) for r in failed),
    )


#: a batch of jobs' new states, as :func:`_apply_job` writes one (``clear``: the job is done, its BEEF goes)
_UPDATE_JOBS = (
    "WITH q(id, state, attempts, next_at, arc_status, detail, now, clear) AS (VALUES (?, ?, ?, ?, ?, ?, ?, ?)) "
    "UPDATE settlement SET state = q.state, attempts = q.attempts, next_at = q.next_at, arc_status = q.arc_status, "
    "detail = q.detail, updated_at = q.now, beef = CASE WHEN q.clear THEN x'' ELSE settlement.beef END "
    "FROM q WHERE settlement.id = q.id"
)
#: a batch of mined transactions' merkle paths
_UPDATE_PROVEN = (
    "WITH q(t, path, height) AS (VALUES (?, ?, ?)) "
    "UPDATE wallet_txs SET merkle_path = q.path, block_height = q.height, state = 'proven' "
    "FROM q WHERE wallet_txs.txid = q.t"
)


def _chunks(values: Sequence[str], room: int = MAX_PARAMS - 1) -> list[Sequence[str]]:
    return [values[i : i + room] for i in range(0, len(values), room)]


def _apply_jobs(
    conn: sqlite3.Connection, items: Sequence[tuple[SettlementJob, JobUpdate]], now: float
) -> list[SettlementEffects]:
    """What :func:`_apply_job` does for each of ``items``, with one statement per table for the whole batch (per
    :data:`~overlay_node.store.rows.MAX_PARAMS` parameters) instead of several per job; a failure (rare) is applied
    job by job. A job's statements touch only its own transaction's rows, so the order between jobs is free."""
    ids = [job.id for job, _ in items]
    open_ids: set[int] = set()
    for start in range(0, len(ids), MAX_PARAMS):
        some = ids[start : start + MAX_PARAMS]
        states = conn.execute(f"SELECT id, state FROM settlement WHERE id IN ({marks(len(some))})", some).fetchall()
        open_ids.update(int(r["id"]) for r in states if str(r["state"]) not in TERMINAL_STATES)
    live = [(job, update) for job, update in items if job.id in open_ids]
    execute_rows(
        conn,
        _UPDATE_JOBS,
        [
            (job.id, u.state, u.attempts, u.next_at, u.arc_status, u.detail, now, u.state in TERMINAL_STATES)
            for job, u in live
        ],
    )
    effects: dict[int, SettlementEffects] = {}
    for job, update in live:
        if update.state in ("failed", "abandoned"):
            effects[job.id] = _apply_failed(conn, job.txid, update, now)
    found = [job.txid for job, u in live if u.state in ("progressing", "seen", "mined")]
    restored: dict[str, list[UtxoRecord]] = {}
    for part in _chunks(found):
        pending = conn.execute(f"{UTXO_SELECT} WHERE u.txid IN ({marks(len(part))}) AND u.state = 'pending'", part)
        for row in pending.fetchall():
            restored.setdefault(str(row["txid"]), []).append(utxo_from_row(row))
    for part in _chunks(list(restored)):
        conn.execute(
            f"UPDATE wallet_utxos SET state = 'spendable' WHERE txid IN ({marks(len(part))}) AND state = 'pending'",
            part,
        )
    for part in _chunks(found):
        conn.execute(
            "UPDATE wallet_history SET status = 'unconfirmed', updated_at = ? "
            f"WHERE txid IN ({marks(len(part))}) AND status IN ('sending', 'unknown')",
            [now, *part],
        )
    _payments_settled(conn, [job.txid for job, u in live if u.state == "seen"], now)
    mined = [(job, u) for job, u in live if u.state == "mined"]
    proofs = [(job.txid, u.merkle_path, u.block_height) for job, u in mined if u.merkle_path is not None]
    execute_rows(conn, _UPDATE_PROVEN, proofs)
    for part in _chunks([job.txid for job, _ in mined]):
        conn.execute(
            "UPDATE wallet_history SET status = 'confirmed', detail = '', updated_at = ? "
            f"WHERE txid IN ({marks(len(part))})",
            [now, *part],
        )
    _payments_mined(conn, [job.txid for job, _ in mined], now)
    for job, update in live:
        if update.state in ("progressing", "seen", "mined"):
            proof = update.state == "mined" and update.merkle_path is not None
            effects[job.id] = SettlementEffects(
                proven=(job.txid,) if proof else (), restored=tuple(restored.get(job.txid, ()))
            )
    return [effects.get(job.id, SettlementEffects()) for job, _ in items]


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
        _payments_settled(conn, [job.txid], now)
    if update.state == "mined":
        mined = _apply_mined(conn, job.txid, update, now)
        return dataclasses.replace(mined, restored=restored)
    return SettlementEffects(restored=restored)
