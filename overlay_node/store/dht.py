"""The ``dht`` repository: records held for the DHT and records this node publishes, kept across restarts.

Two tables (migration ``0003_dht``):

- ``dht_records``: one row per ``(key, publisher)``, the newest record held for the DHT (tombstones included);
- ``dht_own_records``: one row per key, the record this node publishes under it and the lifetime it asked for
  (renewals use it).

Writes arrive in batches (:class:`DhtWrites`, one transaction each): the DHT service coalesces its changes and
writes them from one task. A saved record replaces the stored one only with a higher ``seq``, so a late batch
cannot bring an older record back. Rows that no longer make a valid record are skipped on load, with a warning.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

from overlay_node.errors import LocalProtocolError
from overlay_node.wire.dht import Record

if TYPE_CHECKING:
    from overlay_node.store.engine import Database

__all__ = ["DhtRepository", "DhtWrites", "OwnRecord"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnRecord:
    """A row of ``dht_own_records``: a record we publish and the lifetime (seconds) it is renewed with."""

    record: Record
    ttl: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtWrites:
    """One batch of changes, applied in one transaction by :meth:`DhtRepository.apply`.

    Deletions run before saves, so a batch may delete a record and save its successor.
    """

    save: tuple[Record, ...] = ()
    #: ``(key, publisher)`` pairs
    delete: tuple[tuple[bytes, bytes], ...] = ()
    save_own: tuple[OwnRecord, ...] = ()
    #: keys
    delete_own: tuple[bytes, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.save or self.delete or self.save_own or self.delete_own)


def _record(row: sqlite3.Row) -> Record | None:
    try:
        return Record(
            key=bytes(row["key"]),
            value=bytes(row["value"]),
            publisher=bytes(row["publisher"]),
            seq=int(row["seq"]),
            expires=int(row["expires"]),
            sig=bytes(row["sig"]),
        )
    except (LocalProtocolError, TypeError, ValueError) as exc:
        logger.warning("dht store: skipping an invalid stored record: %s", exc)
        return None


_FIELDS = "key, publisher, value, seq, expires, sig"


class DhtRepository:
    """Typed access to the DHT tables. Reach it as ``store.dht``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def apply(self, writes: DhtWrites) -> None:
        """Apply one batch of changes in one transaction.

        Raises:
            StoreError: the database failed (nothing of the batch is applied).
        """

        def update(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM dht_records WHERE key = ? AND publisher = ?", writes.delete)
            conn.executemany(
                f"""
                INSERT INTO dht_records ({_FIELDS}) VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (key, publisher) DO UPDATE SET
                    value = excluded.value, seq = excluded.seq, expires = excluded.expires, sig = excluded.sig
                WHERE excluded.seq > dht_records.seq
                """,
                [(r.key, r.publisher, r.value, r.seq, r.expires, r.sig) for r in writes.save],
            )
            conn.executemany("DELETE FROM dht_own_records WHERE key = ?", [(key,) for key in writes.delete_own])
            conn.executemany(
                f"""
                INSERT INTO dht_own_records ({_FIELDS}, ttl) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (key) DO UPDATE SET
                    publisher = excluded.publisher, value = excluded.value, seq = excluded.seq,
                    expires = excluded.expires, sig = excluded.sig, ttl = excluded.ttl
                """,
                [
                    (
                        o.record.key,
                        o.record.publisher,
                        o.record.value,
                        o.record.seq,
                        o.record.expires,
                        o.record.sig,
                        o.ttl,
                    )
                    for o in writes.save_own
                ],
            )

        if writes:
            await self._db.write(update)

    async def load_records(self) -> list[Record]:
        """Every record held for the DHT, ordered by key and publisher (expired ones included).

        Raises:
            StoreError: the database failed.
        """

        def query(conn: sqlite3.Connection) -> list[Record]:
            rows = conn.execute(f"SELECT {_FIELDS} FROM dht_records ORDER BY key, publisher").fetchall()
            return [r for r in map(_record, rows) if r is not None]

        return await self._db.read(query)

    async def load_own(self) -> list[OwnRecord]:
        """Every record this node publishes, ordered by key.

        Raises:
            StoreError: the database failed.
        """

        def query(conn: sqlite3.Connection) -> list[OwnRecord]:
            rows = conn.execute(f"SELECT {_FIELDS}, ttl FROM dht_own_records ORDER BY key").fetchall()
            out: list[OwnRecord] = []
            for row in rows:
                record = _record(row)
                if record is not None:
                    out.append(OwnRecord(record=record, ttl=float(row["ttl"])))
            return out

        return await self._db.read(query)

    async def delete_expired(self, now: float) -> int:
        """Delete held records (not own ones) that expired at or before wall-clock ``now``; return how many.

        Raises:
            StoreError: the database failed.
        """

        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM dht_records WHERE expires <= ?", (int(now),)).rowcount

        return await self._db.write(delete)
