"""The ``meta`` repository: a small key/value table for node-wide facts (schema notes, counters, markers)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from overlay_node.store.engine import Database


class MetaRepository:
    """Typed access to ``meta(key, value)``. Reach it as ``store.meta``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None``.

        Raises:
            StoreError: the database failed.
        """

        def query(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None or row["value"] is None else str(row["value"])

        return await self._db.read(query)

    async def set(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing any previous value.

        Raises:
            StoreError: the database failed.
        """

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        await self._db.write(update)
