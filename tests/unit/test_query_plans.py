"""The store's hot queries keep their indexes, and the hot tables carry no index a query does not need.

Every statement the overlay engine's submissions and reads, a batch of payments and coin selection run is
recorded (SQLite's trace callback on the store's own connections, the values bound in) and planned again with
``EXPLAIN QUERY PLAN``: none may walk a whole table. Each index is a page a commit dirties, so the indexes of the
tables written per submission and per payment are listed exactly: one added by mistake fails here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from overlay_node.config import StoreSection
from overlay_node.store import open_store
from overlay_node.store.engine import Database
from tests.store_builders import payment, submission, txid

CONFIG = StoreSection(busy_timeout=5.0, read_connections=2)
LIMIT = 20  # seconds per test, on trio's clock

#: the indexes (SQLite's names) of the tables a submission or a payment writes
INDEXES = {
    # a WITHOUT ROWID table lists its key as an index too: that b-tree is the table itself
    "overlay_txs": {"sqlite_autoindex_overlay_txs_1"},
    "overlay_outputs": {"sqlite_autoindex_overlay_outputs_1", "overlay_outputs_unspent"},
    "overlay_applied": {"sqlite_autoindex_overlay_applied_1"},
    "overlay_index_items": {"sqlite_autoindex_overlay_index_items_1", "overlay_index_items_service"},
    "overlay_index_fields": {"sqlite_autoindex_overlay_index_fields_1", "overlay_index_fields_item"},
    "payments": {
        "sqlite_autoindex_payments_1",
        "sqlite_autoindex_payments_2",
        "payments_resource",
        "payments_accepted",
    },
    "payment_spends": {"sqlite_autoindex_payment_spends_1"},
    "wallet_txs": {"sqlite_autoindex_wallet_txs_1"},
    "wallet_utxos": {"sqlite_autoindex_wallet_utxos_1", "wallet_utxos_spendable"},
    "wallet_history": {"wallet_history_txid", "wallet_history_created"},
    "settlement": {"sqlite_autoindex_settlement_1", "settlement_due"},
}


def _planned(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]


#: partial indexes, which hold only the rows a query walks (the spendable coins, the unspent outputs, open jobs)
PARTIAL = ("USING INDEX wallet_utxos_spendable", "USING INDEX overlay_outputs_unspent", "USING INDEX settlement_due")


def _full_scans(plan: list[str]) -> list[str]:
    # a CTE of bound values (``WITH q(t, v) AS (VALUES ...)``) or a constant row is no table
    return [
        step
        for step in plan
        if step.startswith("SCAN")
        and "CONSTANT ROW" not in step
        and step.split()[1:2] != ["q"]
        and not any(index in step for index in PARTIAL)
    ]


async def test_the_hot_queries_search_by_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    on = [False]
    connect = Database._connect

    def tracing(self: Database, *, writer: bool) -> sqlite3.Connection:
        conn = connect(self, writer=writer)
        conn.set_trace_callback(lambda sql: seen.append(sql) if on[0] else None)
        return conn

    monkeypatch.setattr(Database, "_connect", tracing)
    path = tmp_path / "node.db"
    with trio.fail_after(LIMIT):
        async with open_store(path, CONFIG) as store:
            for n in range(20):
                await store.overlay.apply([submission(n)], durable=False)
            await store.payments.record([payment(n) for n in range(4)])
            on[0] = True
            # a submission spending an output (marked spent, unindexed, evicted deep with its fields)
            await store.overlay.previous_coins(txid(100), ["tm"], [(txid(3), 0), (txid(4), 1)])
            await store.overlay.apply([submission(100, spends=3), submission(101, spends=100)], durable=True)
            await store.overlay.outputs_with_beefs([(txid(5), 0), (txid(6), 1)])
            await store.overlay.answerable([(txid(5), 0)])
            await store.overlay.answerable([(txid(5), 0), (txid(6), 1)])
            await store.overlay.outputs([(txid(5), 0)], topic="tm")
            await store.overlay.beefs([txid(5)])
            await store.overlay.find_index("ls", {"outpoint": [f"{txid(7)}.0"]}, limit=1, skip=0, newest_first=True)
            both = {"outpoint": [f"{txid(7)}.0"], "kind": ["coin"]}
            await store.overlay.find_index("ls", both, limit=None, skip=0, newest_first=False)
            await store.overlay.find_index("ls", {}, limit=10, skip=0, newest_first=False)
            await store.overlay.index_fields("ls_keep", (txid(8), 1))
            await store.overlay.unspent("tm", since=5, limit=10)
            # a batch of payments, and the payee's coins
            await store.payments.record([payment(n) for n in range(4, 12)])
            await store.payments.get("quote-5")
            await store.payments.by_prefix("prefix-5")
            await store.payments.recent(limit=10, resource="stream:s")
            await store.wallet.spendable()
            on[0] = False
    statements = [s for s in seen if s.split(None, 1)[0].upper() in {"SELECT", "UPDATE", "DELETE", "INSERT", "WITH"}]
    assert len(statements) > 20
    conn = sqlite3.connect(path)
    try:
        for sql in statements:
            scans = _full_scans(_planned(conn, sql))
            assert not scans, (sql, scans)
        # the cascade from an index item to its fields (not in EXPLAIN QUERY PLAN of the item's DELETE)
        plan = _planned(conn, "DELETE FROM overlay_index_fields WHERE item = 1")
        assert not _full_scans(plan), plan
    finally:
        conn.close()


async def test_the_tables_written_per_submission_and_payment_carry_only_the_indexes_queries_need(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node.db"
    with trio.fail_after(LIMIT):
        async with open_store(path, CONFIG):
            pass
    conn = sqlite3.connect(path)
    try:
        for table, expected in INDEXES.items():
            found = {str(row[1]) for row in conn.execute(f"PRAGMA index_list({table})")}
            assert found == expected, table
        without_rowid = {
            str(row[0])
            for row in conn.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'table'")
            if str(row[1]).rstrip().upper().endswith("WITHOUT ROWID")
        }
        assert {"overlay_txs", "overlay_applied", "overlay_index_fields", "payment_spends"} <= without_rowid
        # tables of large rows keyed by random values are rowid tables: a batch's rows share the table's last page
        assert not {"payments", "wallet_txs", "wallet_utxos"} & without_rowid
        assert conn.execute("PRAGMA foreign_key_list(overlay_index_fields)").fetchall()[0][2] == "overlay_index_items"
    finally:
        conn.close()
