"""The payee's record path in the store: a batch of fresh payments goes in with its inserts alone (the tables'
uniqueness rules are the checks), and migration ``0013_coins_by_rowid`` rebuilds the wallet's coins as a rowid table
with every row and rule kept."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
import trio

from overlay_node.config import StoreSection
from overlay_node.store import MIGRATIONS, open_store
from overlay_node.store.engine import Database
from overlay_node.store.settlement import JobUpdate
from tests.store_builders import payment

CONFIG = StoreSection(busy_timeout=5.0, read_connections=2)
LIMIT = 20  # seconds per test, on trio's clock


async def test_a_batch_of_fresh_payments_is_recorded_without_a_query_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    on = [False]
    connect = Database._connect

    def tracing(self: Database, *, writer: bool) -> sqlite3.Connection:
        conn = connect(self, writer=writer)
        conn.set_trace_callback(lambda sql: seen.append(sql.split(None, 1)[0].upper()) if on[0] else None)
        return conn

    monkeypatch.setattr(Database, "_connect", tracing)
    with trio.fail_after(LIMIT):
        async with open_store(tmp_path / "node.db", CONFIG) as store:
            assert {o.result for o in await store.payments.record([payment(n) for n in range(3)])} == {"recorded"}
            on[0] = True
            outcomes = await store.payments.record([payment(n) for n in range(3, 11)])
            on[0] = False
            assert {o.result for o in outcomes} == {"recorded"}
            # one statement per table and the transaction's own: nothing read first
            assert "SELECT" not in seen, seen
            assert "WITH" not in seen, seen
            assert seen.count("INSERT") == 6, seen
            # a batch that breaks a rule is rolled back and checked: only the replay is refused, nothing of it kept
            seen.clear()
            on[0] = True
            again = await store.payments.record([payment(11), payment(5), payment(12)])
            on[0] = False
            assert [o.result for o in again] == ["recorded", "replayed", "recorded"]
            assert "ROLLBACK" in seen
            assert (await store.payments.get("quote-12")) is not None
            assert len(await store.wallet.spendable()) == 13  # 0-12, 5 once


async def test_the_coins_are_rebuilt_as_a_rowid_table_with_every_row_and_rule(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    before = MIGRATIONS.copy(stop_before="0013_coins_by_rowid")
    with trio.fail_after(LIMIT):
        async with open_store(path, CONFIG, migrations=before) as store:
            assert [o.result for o in await store.payments.record([payment(n) for n in range(4)])] == ["recorded"] * 4
            coins = await store.wallet.spendable()
            states = await store.wallet.utxo_states([(c.txid, c.vout) for c in coins])
        conn = sqlite3.connect(path)
        try:
            sql = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'wallet_utxos'").fetchone()[0]
            assert sql.rstrip().upper().endswith("WITHOUT ROWID")  # as written before the migration
        finally:
            conn.close()
        async with open_store(path, CONFIG) as store:
            assert "0013_coins_by_rowid" in [m.name for m in await store.applied_migrations()]
            assert await store.wallet.spendable() == coins
            assert len(coins) == 4
            assert await store.wallet.utxo_states([(c.txid, c.vout) for c in coins]) == states
            # a coin is still ours once: a payment paying us the coin another gave us is refused
            clash = dataclasses.replace(payment(9), utxo=payment(2).utxo)
            assert [o.result for o in await store.payments.record([clash])] == ["replayed"]
            assert [o.result for o in await store.payments.record([payment(5)])] == ["recorded"]
            assert len(await store.wallet.spendable()) == 5
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        sql = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'wallet_utxos'").fetchone()[0]
        assert "WITHOUT ROWID" not in sql.upper()
        indexes = {str(row[1]) for row in conn.execute("PRAGMA index_list(wallet_utxos)")}
        assert indexes == {"sqlite_autoindex_wallet_utxos_1", "wallet_utxos_spendable"}
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO wallet_utxos (txid, vout, satoshis, script, protocol, key_id, counterparty, origin, "
                "state, created_at) SELECT txid, vout, satoshis, script, protocol, key_id, counterparty, origin, "
                "state, created_at FROM wallet_utxos LIMIT 1"
            )
    finally:
        conn.close()


async def test_settlement_moves_the_payments_received_through_their_history_entries(tmp_path: Path) -> None:
    """``payments`` has no index by txid (migration 0015): the settlement queue reaches a transaction's payments
    through its history entry, which names the quote. On a database written before that migration (one entry lacking
    its quote id, which the migration fills in), a seen transaction settles its payment, a mined one mines it, and a
    failed one fails it and reports its quote id; the others are left as they were."""
    path = tmp_path / "node.db"
    before = MIGRATIONS.copy(stop_before="0015_payments_unindexed_by_txid")
    with trio.fail_after(LIMIT):
        async with open_store(path, CONFIG, migrations=before) as store:
            assert [o.result for o in await store.payments.record([payment(n) for n in range(4)])] == ["recorded"] * 4

            def forget(conn: sqlite3.Connection) -> None:  # an entry as no release wrote it, to be sure
                conn.execute("UPDATE wallet_history SET quote_id = NULL WHERE txid = ?", (payment(2).txid,))

            await store._write(forget, durable=True)
        async with open_store(path, CONFIG) as store:
            settlement = store.settlement
            for n, update in (
                (0, JobUpdate(state="seen", attempts=1, next_at=60.0, arc_status="SEEN_ON_NETWORK")),
                (1, JobUpdate(state="mined", attempts=1, next_at=60.0, merkle_path=b"path", block_height=7)),
                (2, JobUpdate(state="failed", attempts=1, next_at=60.0, detail="refused")),
            ):
                job = await settlement.get(payment(n).txid)
                assert job is not None
                effects = await settlement.apply(job, update, now=60.0)
                assert effects.failed_payments == (("quote-2",) if n == 2 else ())
            statuses = [(await store.payments.get(f"quote-{n}")) for n in range(4)]
            assert [p.status if p else None for p in statuses] == ["settled", "mined", "failed", "accepted"]
    conn = sqlite3.connect(path)
    try:
        assert "payments_txid" not in {str(row[1]) for row in conn.execute("PRAGMA index_list(payments)")}
    finally:
        conn.close()
