"""The ``known_peers`` repository: peers we have reached, for reconnecting after a restart and for bootstrap."""

from __future__ import annotations

import builtins
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from overlay_node.store.engine import Database


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownPeer:
    """A row of ``known_peers``.

    ``identity_key`` is the peer's public identity key (hex), ``address`` the last address it was reached at,
    ``first_seen``/``last_seen`` wall-clock seconds, ``failures`` the failed dials since it was last seen.
    """

    identity_key: str
    address: str
    first_seen: float | None
    last_seen: float | None
    failures: int


def _row_to_peer(row: sqlite3.Row) -> KnownPeer:
    return KnownPeer(
        identity_key=str(row["identity_key"]),
        address=str(row["address"]),
        first_seen=None if row["first_seen"] is None else float(row["first_seen"]),
        last_seen=None if row["last_seen"] is None else float(row["last_seen"]),
        failures=int(row["failures"] or 0),
    )


_COLUMNS = "identity_key, address, first_seen, last_seen, failures"


class PeersRepository:
    """Typed access to ``known_peers``. Reach it as ``store.peers``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert(self, identity_key: str, address: str, seen_at: float) -> None:
        """Record that ``identity_key`` was reached at ``address`` at wall-clock time ``seen_at``.

        A new peer is inserted; a known one gets the new address, ``last_seen`` moves forward (never back),
        ``first_seen`` is kept and ``failures`` resets to 0.

        Raises:
            StoreError: the database failed.
        """

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                """
                INSERT INTO known_peers (identity_key, address, first_seen, last_seen, failures)
                VALUES (?, ?, ?, ?, 0)
                ON CONFLICT (identity_key) DO UPDATE SET
                    address = excluded.address,
                    first_seen = min(coalesce(first_seen, excluded.first_seen), excluded.first_seen),
                    last_seen = max(coalesce(last_seen, excluded.last_seen), excluded.last_seen),
                    failures = 0
                """,
                (identity_key, address, seen_at, seen_at),
            )

        await self._db.write(update)

    async def get(self, identity_key: str) -> KnownPeer | None:
        """The peer with this identity key, or ``None``.

        Raises:
            StoreError: the database failed.
        """

        def query(conn: sqlite3.Connection) -> KnownPeer | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM known_peers WHERE identity_key = ?", (identity_key,)).fetchone()
            return None if row is None else _row_to_peer(row)

        return await self._db.read(query)

    async def list(self) -> builtins.list[KnownPeer]:
        """Every known peer, most recently seen first.

        Raises:
            StoreError: the database failed.
        """

        def query(conn: sqlite3.Connection) -> builtins.list[KnownPeer]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM known_peers ORDER BY last_seen DESC, identity_key").fetchall()
            return [_row_to_peer(r) for r in rows]

        return await self._db.read(query)

    async def record_failure(self, identity_key: str) -> int | None:
        """Count one more failed dial to ``identity_key``.

        Returns:
            The new failure count, or ``None`` when the peer is not known (nothing is recorded).

        Raises:
            StoreError: the database failed.
        """

        def update(conn: sqlite3.Connection) -> int | None:
            conn.execute(
                "UPDATE known_peers SET failures = coalesce(failures, 0) + 1 WHERE identity_key = ?",
                (identity_key,),
            )
            row = conn.execute("SELECT failures FROM known_peers WHERE identity_key = ?", (identity_key,)).fetchone()
            return None if row is None else int(row["failures"])

        return await self._db.write(update)

    async def forget(self, identity_key: str) -> bool:
        """Remove ``identity_key``; returns whether it was known.

        Raises:
            StoreError: the database failed.
        """

        def delete(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM known_peers WHERE identity_key = ?", (identity_key,)).rowcount > 0

        return await self._db.write(delete)
