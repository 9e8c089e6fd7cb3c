"""Shipped migrations are frozen text: a migration that has run on users' nodes must never change (add a new one
instead). Each migration's SQL, whitespace-normalized, is hashed and compared with the hash it shipped with."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Any

from overlay_node.store import migrations
from overlay_node.store.migrations import MIGRATIONS

#: name -> the first 16 hex digits of SHA-256 over its statements (one per line, whitespace-normalized). A new
#: migration adds its line here; a changed hash means a shipped migration was edited.
SHIPPED = {
    "0001_meta": "fd6db3ad6412e173",
    "0002_peers": "40dc66073ca7cb72",
    "0003_dht": "ef8a1f1a026815ef",
    "0004_wallet": "93a8dede636acbde",
    "0006_streams": "b8a123645a3f4399",
    "0007_content": "891c306638ad14ae",
    "0008_overlay": "8382f0fdaacf85d6",
    "0009_overlay_sync": "59ecea3ea783c943",
    "0010_reports": "1b8d7ee44fce4a94",
    "0011_stream_bytes": "df67e06841fc29f8",
    "0012_fewer_index_pages": "4bbe2c330dbdaaa8",
    "0013_coins_by_rowid": "38c41ebadd4359bc",
    "0014_spent_by_unindexed": "85b7d9acc2167e13",
    "0015_payments_unindexed_by_txid": "c8e5dc1aac6dfb0b",
}


class Recording:
    """A connection that remembers the SQL a migration runs."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self.statements.append(re.sub(r"\s+", " ", sql).strip())
        return self.conn.execute(sql, params)


def test_every_migration_is_the_one_that_shipped() -> None:
    conn = sqlite3.connect(":memory:")
    found = {}
    for migration in MIGRATIONS:
        recording = Recording(conn)
        migration.fn(recording)  # type: ignore[arg-type]  # a connection as far as a migration can tell
        found[migration.name] = hashlib.sha256("\n".join(recording.statements).encode()).hexdigest()[:16]
    assert found == SHIPPED, "a shipped migration changed (never edit one: add a new migration)"


def test_no_migration_reads_a_repository() -> None:
    # a migration that called a repository's helper would change when the repository does
    source = Path(migrations.__file__).read_text(encoding="utf-8")
    assert "from overlay_node.store." not in source.split("MIGRATIONS = Migrations()")[1]
