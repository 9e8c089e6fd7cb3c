"""Migration ``0012_fewer_index_pages`` on a database written before it: the rebuilt tables keep every row, the
lookup index keeps its fields and their cascade, and the uniqueness rules still hold."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from overlay_node.config import StoreSection
from overlay_node.store import MIGRATIONS, open_store
from tests.store_builders import payment, submission, txid

CONFIG = StoreSection(busy_timeout=5.0, read_connections=2)
LIMIT = 20  # seconds per test, on trio's clock
BEFORE = MIGRATIONS.copy(stop_before="0012_fewer_index_pages")


async def test_the_upgrade_keeps_outputs_index_entries_payments_and_coins(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    with trio.fail_after(LIMIT):
        async with open_store(path, CONFIG, migrations=BEFORE) as store:
            await store.overlay.apply([submission(n) for n in range(6)], durable=True)
            assert [o.result for o in await store.payments.record([payment(n) for n in range(3)])] == ["recorded"] * 3
            before_find = await store.overlay.find_index(
                "ls", {"kind": ["coin"]}, limit=None, skip=0, newest_first=False
            )
            before_unspent = await store.overlay.unspent("tm", since=0, limit=None)
            before_coins = await store.wallet.spendable()
        async with open_store(path, CONFIG) as store:
            assert "0012_fewer_index_pages" in [m.name for m in await store.applied_migrations()]
            assert (
                await store.overlay.find_index("ls", {"kind": ["coin"]}, limit=None, skip=0, newest_first=False)
                == before_find
            )
            assert len(before_find) == 6
            assert await store.overlay.unspent("tm", since=0, limit=None) == before_unspent
            assert await store.overlay.index_fields("ls", (txid(2), 0)) == {
                "kind": ["coin", "token"],
                "outpoint": [f"{txid(2)}.0"],
            }
            assert await store.overlay.beefs([txid(4)]) == {txid(4): b"beef-4"}
            assert await store.wallet.spendable() == before_coins
            assert len(before_coins) == 3
            assert (await store.payments.get("quote-1")) is not None
            # still one application per (topic, txid), one payment per quote and per prefix, one spender per input
            (again,) = await store.overlay.apply([submission(3)], durable=True)
            assert again.duplicate_topics == {"tm"}
            replayed = await store.payments.record([payment(1), payment(2)])
            assert [o.result for o in replayed] == ["replayed", "replayed"]
            # spending evicts deep: the outputs, their index entries (their fields by the cascade) and the BEEF
            (spent,) = await store.overlay.apply([submission(10, spends=2)], durable=True)
            assert sorted(spent.evicted) == [("tm", txid(2), 0), ("tm", txid(2), 1)]
            assert await store.overlay.index_fields("ls", (txid(2), 0)) is None
            assert await store.overlay.index_fields("ls_keep", (txid(2), 1)) is None
            assert await store.overlay.beefs([txid(2)]) == {}
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        orphans = conn.execute(
            "SELECT count(*) FROM overlay_index_fields WHERE item NOT IN (SELECT seq FROM overlay_index_items)"
        ).fetchone()[0]
        assert orphans == 0
        assert (
            conn.execute("SELECT count(*) FROM overlay_index_fields").fetchone()[0] == 4 * 6
        )  # 4 per submission: 6 stored, one evicted, one added
    finally:
        conn.close()
