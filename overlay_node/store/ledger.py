"""The devnet ledger's repository: UTXO set, transactions, mempool, blocks and double-spend attempts in
SQLite.

The ledger lives in its own database file (``<devnet data dir>/ledger.db``) with its own migration set,
:data:`LEDGER_MIGRATIONS`; open it with :func:`open_ledger_store`.

Invariants (each kept by doing the whole change in one write transaction):

1. ``outputs`` holds every spendable output the ledger ever accepted (data-carrier outputs are never stored);
   the UTXO set is the rows with ``spent_by IS NULL``. An output is spent by at most one accepted transaction.
2. A transaction is in ``txs`` exactly when its inputs are marked spent by it and its outputs are in
   ``outputs``. ``txs.id`` is the acceptance order, so parents always come before children.
3. The mempool is ``txs`` with ``block_height IS NULL``. A block commit inserts the block row, its coinbase
   and marks every mempool transaction it holds as mined, with its merkle path, in one durable transaction:
   after a crash the ledger is either before or after the block, never in between.
4. ``attempts`` records transactions refused as double spends, with the txids they competed with, so that a
   status query keeps answering for them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from overlay_node.chain.validation import NewTx
from overlay_node.errors import Conflict
from overlay_node.store.db import open_store
from overlay_node.store.migrations import Migrations
from overlay_node.store.rows import marks

if TYPE_CHECKING:
    from overlay_node.config import StoreSection
    from overlay_node.store.engine import Database

#: (txid, output index)
Outpoint = tuple[str, int]

#: the ledger database's migrations, in order
LEDGER_MIGRATIONS = Migrations()


@LEDGER_MIGRATIONS.register("0001_ledger")
def _ledger_schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        """
        CREATE TABLE blocks (
            height      INTEGER PRIMARY KEY,
            hash        TEXT NOT NULL UNIQUE,
            prev_hash   TEXT NOT NULL,
            merkle_root TEXT NOT NULL,
            time        INTEGER NOT NULL,
            header      BLOB NOT NULL,
            tx_count    INTEGER NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE txs (
            id           INTEGER PRIMARY KEY,
            txid         TEXT NOT NULL UNIQUE,
            raw          BLOB NOT NULL,
            fee          INTEGER NOT NULL,
            accepted_at  REAL NOT NULL,
            block_height INTEGER REFERENCES blocks(height),
            block_index  INTEGER,
            merkle_path  BLOB
        )
        """
    )
    conn.execute("CREATE INDEX txs_mempool ON txs(id) WHERE block_height IS NULL")
    conn.execute(
        """
        CREATE TABLE outputs (
            txid     TEXT NOT NULL,
            vout     INTEGER NOT NULL,
            satoshis INTEGER NOT NULL,
            script   BLOB NOT NULL,
            spent_by TEXT,
            PRIMARY KEY (txid, vout)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX outputs_spent_by ON outputs(spent_by) WHERE spent_by IS NOT NULL")
    conn.execute("CREATE INDEX outputs_unspent_script ON outputs(script, satoshis) WHERE spent_by IS NULL")
    conn.execute(
        """
        CREATE TABLE attempts (
            txid        TEXT PRIMARY KEY,
            raw         BLOB NOT NULL,
            competing   TEXT NOT NULL,
            received_at REAL NOT NULL
        )
        """
    )


# -- rows and plans ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredOutput:
    """An output the ledger knows; ``spent_by`` is None while it is in the UTXO set."""

    txid: str
    vout: int
    satoshis: int
    script: bytes
    spent_by: str | None
    mined: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptOutcome:
    """What happened to one group given to :meth:`LedgerRepository.accept`.

    ``conflict_txid`` is set when a transaction of the group spends an output another accepted transaction
    already spent: the whole group was rolled back, the conflicting transaction recorded as an attempt, and
    ``competing`` names the spenders.
    """

    accepted: tuple[str, ...]
    conflict_txid: str | None = None
    competing: tuple[str, ...] = ()
    competitor_mined: bool = False
    #: set when a transaction spends an output the ledger does not hold (its parent was refused meanwhile)
    missing: tuple[str, Outpoint] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockRecord:
    """A stored block header and where it sits."""

    height: int
    hash: str
    prev_hash: str
    merkle_root: str
    time: int
    header: bytes
    tx_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockEntry:
    """One transaction's place in a new block."""

    txid: str
    index: int
    merkle_path: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockPlan:
    """A block ready to commit: its header, the transactions it creates itself (coinbase, genesis payouts) and
    the position and merkle path of every transaction it holds (in block order)."""

    block: BlockRecord
    new_txs: tuple[NewTx, ...]
    entries: tuple[BlockEntry, ...]


TxState = Literal["mempool", "mined", "attempt"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TxStatusRecord:
    """Where a transaction stands in the ledger."""

    txid: str
    state: TxState
    block_height: int | None = None
    block_hash: str | None = None
    merkle_path: bytes | None = None
    competing: tuple[str, ...] = ()
    competitor_mined: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AncestorRow:
    """A transaction on the way from a subject to its mined ancestors (for building BEEF)."""

    txid: str
    raw: bytes
    merkle_path: bytes | None
    parents: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerCounts:
    """Sizes of the ledger, for status and tests."""

    height: int
    utxos: int
    mempool: int
    txs: int
    attempts: int
    #: satoshis in the UTXO set
    unspent_satoshis: int
    #: fees paid by every accepted transaction (the devnet burns them)
    fees: int


# -- the repository ------------------------------------------------------------------------------------------


_BATCH = 400  # stays well below SQLite's bound-parameter limit
#: a read of up to this many transactions or outputs (by key) runs on the event loop's thread (``Database.read_inline``,
#: engine invariant 6): each submission reads three times, and a thread hand-off costs more than such a read
_INLINE_ITEMS = 64


class LedgerRepository:
    """Typed access to the ledger database. Every method is one transaction; errors are ``StoreError``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def path(self) -> Path:
        return self._db.path

    # -- meta ------------------------------------------------------------------------------------------------

    async def meta_default(self, key: str, value: str) -> str:
        """The stored value of ``key``, storing ``value`` first if there is none (durably)."""

        def txn(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return str(conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()["value"])

        return await self._db.write(txn, durable=True)

    # -- blocks ----------------------------------------------------------------------------------------------

    async def tip(self) -> BlockRecord | None:
        """The highest block, or None before genesis."""
        return await self._db.read(lambda conn: _block(conn, None))

    async def block_at(self, height: int) -> BlockRecord | None:
        return await self._db.read(lambda conn: _block(conn, height))

    async def mempool(self) -> list[str]:
        """Txids of the unmined transactions in acceptance order (parents first)."""

        def txn(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT txid FROM txs WHERE block_height IS NULL ORDER BY id").fetchall()
            return [str(r["txid"]) for r in rows]

        return await self._db.read(txn)

    async def commit_block(self, plan: BlockPlan) -> None:
        """Record a block whole: header, its own new transactions, and every entry marked mined (durably).

        Raises:
            Conflict: the plan no longer fits (another block was committed, or an entry is unknown or mined).
        """

        def txn(conn: sqlite3.Connection) -> None:
            block = plan.block
            top = conn.execute("SELECT MAX(height) AS h FROM blocks").fetchone()["h"]
            expected = 0 if top is None else int(top) + 1
            if block.height != expected:
                raise Conflict(f"block {block.height} does not extend the tip (next height is {expected})")
            conn.execute(
                "INSERT INTO blocks (height, hash, prev_hash, merkle_root, time, header, tx_count) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    block.height,
                    block.hash,
                    block.prev_hash,
                    block.merkle_root,
                    block.time,
                    block.header,
                    block.tx_count,
                ),
            )
            for tx in plan.new_txs:
                if _apply(conn, tx, float(block.time)):
                    raise Conflict(f"block transaction {tx.txid} spends a missing or spent output")
            for entry in plan.entries:
                cur = conn.execute(
                    "UPDATE txs SET block_height = ?, block_index = ?, merkle_path = ? "
                    "WHERE txid = ? AND block_height IS NULL",
                    (block.height, entry.index, entry.merkle_path, entry.txid),
                )
                if cur.rowcount != 1:
                    raise Conflict(f"transaction {entry.txid} is not in the mempool")

        await self._db.write(txn, durable=True)

    # -- transactions ----------------------------------------------------------------------------------------

    async def known(self, txids: Collection[str]) -> set[str]:
        """Which of ``txids`` the ledger holds, as accepted transactions or recorded double-spend attempts."""

        def txn(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            items = list(txids)
            for i in range(0, len(items), _BATCH):
                chunk = items[i : i + _BATCH]
                placeholders = marks(len(chunk))
                for table in ("txs", "attempts"):
                    rows = conn.execute(f"SELECT txid FROM {table} WHERE txid IN ({placeholders})", chunk).fetchall()
                    found.update(str(r["txid"]) for r in rows)
            return found

        return await self._db.read(txn, inline=len(txids) <= _INLINE_ITEMS)

    async def outputs(self, outpoints: Collection[Outpoint]) -> dict[Outpoint, StoredOutput]:
        """The known outputs among ``outpoints`` (spent or not)."""

        def txn(conn: sqlite3.Connection) -> dict[Outpoint, StoredOutput]:
            out: dict[Outpoint, StoredOutput] = {}
            for txid, vout in outpoints:
                row = conn.execute(
                    "SELECT o.txid, o.vout, o.satoshis, o.script, o.spent_by, t.block_height "
                    "FROM outputs o JOIN txs t ON t.txid = o.txid WHERE o.txid = ? AND o.vout = ?",
                    (txid, vout),
                ).fetchone()
                if row is not None:
                    out[(txid, vout)] = _stored_output(row)
            return out

        return await self._db.read(txn, inline=len(outpoints) <= _INLINE_ITEMS)

    async def accept(self, groups: Sequence[Sequence[NewTx]], *, now: float) -> list[AcceptOutcome]:
        """Record each group of validated transactions (parents first) whole, or not at all (durably).

        A transaction already recorded is skipped. When one spends an output that is already spent, its group
        is rolled back and it is recorded as a double-spend attempt; when one spends an output the ledger does
        not hold, its group is rolled back. Other groups are not affected.
        """

        def txn(conn: sqlite3.Connection) -> list[AcceptOutcome]:
            outcomes: list[AcceptOutcome] = []
            for group in groups:
                conn.execute("SAVEPOINT grp")
                accepted: list[str] = []
                outcome: AcceptOutcome | None = None
                for tx in group:
                    if conn.execute("SELECT 1 FROM txs WHERE txid = ?", (tx.txid,)).fetchone() is not None:
                        continue
                    competing = _apply(conn, tx, now)
                    if isinstance(competing, Missing):
                        conn.execute("ROLLBACK TO grp")
                        outcome = AcceptOutcome(accepted=(), missing=(tx.txid, competing.outpoint))
                        break
                    if competing:
                        conn.execute("ROLLBACK TO grp")
                        mined = _any_mined(conn, competing)
                        conn.execute(
                            "INSERT OR IGNORE INTO attempts (txid, raw, competing, received_at) VALUES (?, ?, ?, ?)",
                            (tx.txid, tx.raw, " ".join(competing), now),
                        )
                        outcome = AcceptOutcome(
                            accepted=(), conflict_txid=tx.txid, competing=competing, competitor_mined=mined
                        )
                        break
                    accepted.append(tx.txid)
                conn.execute("RELEASE grp")
                outcomes.append(outcome or AcceptOutcome(accepted=tuple(accepted)))
            return outcomes

        return await self._db.write(txn, durable=True)

    async def status(self, txid: str) -> TxStatusRecord | None:
        """Where ``txid`` stands, or None when the ledger never saw it."""
        return (await self.statuses([txid]))[txid]

    async def statuses(self, txids: Sequence[str]) -> dict[str, TxStatusRecord | None]:
        """Where each of ``txids`` stands (None: never seen), read in one transaction."""

        def txn(conn: sqlite3.Connection) -> dict[str, TxStatusRecord | None]:
            return {txid: _status(conn, txid) for txid in txids}

        return await self._db.read(txn, inline=len(txids) <= _INLINE_ITEMS)

    async def raw_tx(self, txid: str) -> bytes | None:
        def txn(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT raw FROM txs WHERE txid = ?", (txid,)).fetchone()
            return None if row is None else bytes(row["raw"])

        return await self._db.read(txn)

    async def ancestry(self, txid: str) -> list[AncestorRow]:
        """``txid`` and its unmined ancestors, down to (and including) their nearest mined ancestors.

        Children come before parents; each transaction appears once. Empty when ``txid`` is unknown.
        """

        def txn(conn: sqlite3.Connection) -> list[AncestorRow]:
            out: list[AncestorRow] = []
            seen: set[str] = set()
            todo = [txid]
            while todo:
                current = todo.pop()
                if current in seen:
                    continue
                seen.add(current)
                row = conn.execute("SELECT raw, merkle_path FROM txs WHERE txid = ?", (current,)).fetchone()
                if row is None:
                    if current == txid:
                        return []
                    continue
                proof = None if row["merkle_path"] is None else bytes(row["merkle_path"])
                parents: tuple[str, ...] = ()
                if proof is None:
                    rows = conn.execute(
                        "SELECT DISTINCT txid FROM outputs WHERE spent_by = ? ORDER BY txid", (current,)
                    ).fetchall()
                    parents = tuple(str(r["txid"]) for r in rows)
                    todo.extend(parents)
                out.append(AncestorRow(txid=current, raw=bytes(row["raw"]), merkle_path=proof, parents=parents))
            return out

        return await self._db.read(txn)

    # -- UTXO queries ----------------------------------------------------------------------------------------

    async def unspent_by_script(self, script: bytes, *, min_satoshis: int, limit: int) -> list[StoredOutput]:
        """Unspent outputs locked by ``script`` holding at least ``min_satoshis``: mined ones first."""

        def txn(conn: sqlite3.Connection) -> list[StoredOutput]:
            rows = conn.execute(
                "SELECT o.txid, o.vout, o.satoshis, o.script, o.spent_by, t.block_height "
                "FROM outputs o JOIN txs t ON t.txid = o.txid "
                "WHERE o.script = ? AND o.spent_by IS NULL AND o.satoshis >= ? "
                "ORDER BY t.block_height IS NULL, t.id LIMIT ?",
                (script, min_satoshis, limit),
            ).fetchall()
            return [_stored_output(r) for r in rows]

        return await self._db.read(txn)

    async def utxo_set(self) -> frozenset[tuple[str, int, int]]:
        """Every unspent output as ``(txid, vout, satoshis)`` (for tests and consistency checks)."""

        def txn(conn: sqlite3.Connection) -> frozenset[tuple[str, int, int]]:
            rows = conn.execute("SELECT txid, vout, satoshis FROM outputs WHERE spent_by IS NULL").fetchall()
            return frozenset((str(r["txid"]), int(r["vout"]), int(r["satoshis"])) for r in rows)

        return await self._db.read(txn)

    async def counts(self) -> LedgerCounts:
        def txn(conn: sqlite3.Connection) -> LedgerCounts:
            def one(sql: str) -> int:
                value = conn.execute(sql).fetchone()[0]
                return -1 if value is None else int(value)

            return LedgerCounts(
                height=one("SELECT MAX(height) FROM blocks"),
                utxos=one("SELECT COUNT(*) FROM outputs WHERE spent_by IS NULL"),
                mempool=one("SELECT COUNT(*) FROM txs WHERE block_height IS NULL"),
                txs=one("SELECT COUNT(*) FROM txs"),
                attempts=one("SELECT COUNT(*) FROM attempts"),
                unspent_satoshis=one("SELECT COALESCE(SUM(satoshis), 0) FROM outputs WHERE spent_by IS NULL"),
                fees=one("SELECT COALESCE(SUM(fee), 0) FROM txs"),
            )

        return await self._db.read(txn)

    async def consistency_problems(self) -> list[str]:
        """Violations of the module invariants (empty for a healthy ledger); used after crashes in tests."""

        def txn(conn: sqlite3.Connection) -> list[str]:
            problems: list[str] = []
            for r in conn.execute(
                "SELECT o.txid, o.vout, o.spent_by FROM outputs o "
                "LEFT JOIN txs t ON t.txid = o.spent_by WHERE o.spent_by IS NOT NULL AND t.txid IS NULL"
            ):
                problems.append(f"output {r['txid']}:{r['vout']} spent by unknown {r['spent_by']}")
            for r in conn.execute(
                "SELECT o.txid FROM outputs o LEFT JOIN txs t ON t.txid = o.txid WHERE t.txid IS NULL"
            ):
                problems.append(f"output of unknown transaction {r['txid']}")
            for r in conn.execute(
                "SELECT b.height, b.tx_count, COUNT(t.txid) AS n FROM blocks b "
                "LEFT JOIN txs t ON t.block_height = b.height GROUP BY b.height HAVING n != b.tx_count"
            ):
                problems.append(f"block {r['height']} holds {r['n']} transactions, header says {r['tx_count']}")
            heights = [int(r[0]) for r in conn.execute("SELECT height FROM blocks ORDER BY height")]
            if heights != list(range(len(heights))):
                problems.append("block heights are not contiguous from 0")
            return problems

        return await self._db.read(txn)


def _stored_output(row: sqlite3.Row) -> StoredOutput:
    return StoredOutput(
        txid=str(row["txid"]),
        vout=int(row["vout"]),
        satoshis=int(row["satoshis"]),
        script=bytes(row["script"]),
        spent_by=None if row["spent_by"] is None else str(row["spent_by"]),
        mined=row["block_height"] is not None,
    )


def _block(conn: sqlite3.Connection, height: int | None) -> BlockRecord | None:
    if height is None:
        row = conn.execute("SELECT * FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
    else:
        row = conn.execute("SELECT * FROM blocks WHERE height = ?", (height,)).fetchone()
    if row is None:
        return None
    return BlockRecord(
        height=int(row["height"]),
        hash=str(row["hash"]),
        prev_hash=str(row["prev_hash"]),
        merkle_root=str(row["merkle_root"]),
        time=int(row["time"]),
        header=bytes(row["header"]),
        tx_count=int(row["tx_count"]),
    )


@dataclass(frozen=True, slots=True)
class Missing:
    """:func:`_apply` found an input spending an output the ledger does not hold."""

    outpoint: Outpoint

    def __bool__(self) -> bool:
        return True


def _apply(conn: sqlite3.Connection, tx: NewTx, now: float) -> tuple[str, ...] | Missing:
    """Spend the inputs of ``tx`` and add its outputs.

    Returns:
        An empty tuple when applied; else nothing changed and the result is the spenders that got there first,
        or :class:`Missing` for an input whose output the ledger does not hold.
    """
    competing: list[str] = []
    for txid, vout in tx.spends:
        row = conn.execute("SELECT spent_by FROM outputs WHERE txid = ? AND vout = ?", (txid, vout)).fetchone()
        if row is None:
            return Missing((txid, vout))
        if row["spent_by"] is not None and row["spent_by"] != tx.txid and row["spent_by"] not in competing:
            competing.append(str(row["spent_by"]))
    if competing:
        return tuple(competing)
    conn.execute("INSERT INTO txs (txid, raw, fee, accepted_at) VALUES (?, ?, ?, ?)", (tx.txid, tx.raw, tx.fee, now))
    conn.executemany(
        "UPDATE outputs SET spent_by = ? WHERE txid = ? AND vout = ?",
        [(tx.txid, txid, vout) for txid, vout in tx.spends],
    )
    conn.executemany(
        "INSERT INTO outputs (txid, vout, satoshis, script) VALUES (?, ?, ?, ?)",
        [(tx.txid, o.vout, o.satoshis, o.script) for o in tx.outputs],
    )
    return ()


def _any_mined(conn: sqlite3.Connection, txids: Sequence[str]) -> bool:
    if not txids:
        return False
    row = conn.execute(
        f"SELECT 1 FROM txs WHERE block_height IS NOT NULL AND txid IN ({marks(len(txids))}) LIMIT 1",
        list(txids),
    ).fetchone()
    return row is not None


@asynccontextmanager
async def open_ledger_store(path: Path, config: StoreSection) -> AsyncIterator[LedgerRepository]:
    """Open (creating and migrating if needed) the ledger database at ``path``; close it when the block exits.

    Raises:
        StoreError: the file cannot be opened, is not a ledger database, or was written by newer software.
    """
    async with open_store(path, config, migrations=LEDGER_MIGRATIONS) as store:
        yield LedgerRepository(store._db)


def _status(conn: sqlite3.Connection, txid: str) -> TxStatusRecord | None:
    row = conn.execute(
        "SELECT t.block_height, t.merkle_path, b.hash FROM txs t "
        "LEFT JOIN blocks b ON b.height = t.block_height WHERE t.txid = ?",
        (txid,),
    ).fetchone()
    if row is not None:
        if row["block_height"] is None:
            return TxStatusRecord(txid=txid, state="mempool")
        return TxStatusRecord(
            txid=txid,
            state="mined",
            block_height=int(row["block_height"]),
            block_hash=str(row["hash"]),
            merkle_path=None if row["merkle_path"] is None else bytes(row["merkle_path"]),
        )
    att = conn.execute("SELECT competing FROM attempts WHERE txid = ?", (txid,)).fetchone()
    if att is None:
        return None
    competing = tuple(str(att["competing"]).split())
    return TxStatusRecord(txid=txid, state="attempt", competing=competing, competitor_mined=_any_mined(conn, competing))
