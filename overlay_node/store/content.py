"""The ``content`` repository: metadata of the content this node holds or publishes, and replica states."""

from __future__ import annotations

import builtins
import json
import sqlite3
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from overlay_node.store.engine import Database

__all__ = ["ContentItem", "ContentRepository", "ReplicaRow"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentItem:
    """A row of ``content``: one content id known to this node.

    ``local`` tells whether the verified blob is in this node's blob store; ``published`` whether this node is its
    producer (it placed the replicas); ``pinned`` content is never trimmed by repair; ``manifest`` is the
    concatenated 32-byte chunk hashes; ``expires`` 0 means no expiry.
    """

    hash: str
    size: int
    content_type: str
    title: str
    tags: tuple[str, ...]
    price: int
    expires: int
    parents: tuple[str, ...]
    relationship: str
    chunk_size: int
    manifest: bytes
    producer: str
    replication: int
    pinned: bool
    local: bool
    published: bool
    created_at: float

    def with_(self, **changes: Any) -> ContentItem:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "size": self.size,
            "content_type": self.content_type,
            "title": self.title,
            "tags": list(self.tags),
            "price": self.price,
            "expires": self.expires,
            "parents": list(self.parents),
            "relationship": self.relationship,
            "chunk_size": self.chunk_size,
            "producer": self.producer,
            "replication": self.replication,
            "pinned": self.pinned,
            "local": self.local,
            "published": self.published,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaRow:
    """A row of ``content_replicas``: what the placing node knows of one replica."""

    hash: str
    identity_key: str
    state: str
    detail: str
    updated_at: float

    @property
    def last_confirmed(self) -> float | None:
        """When the holder was last seen holding it: an ``available`` row's time, or the time an ``unreachable``
        one keeps from when it was last available (see :meth:`ContentRepository.confirm_holders`)."""
        return self.updated_at if self.state in ("available", "unreachable") else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "identity_key": self.identity_key,
            "state": self.state,
            "detail": self.detail,
            "updated_at": self.updated_at,
            "last_confirmed": self.last_confirmed,
        }


_COLUMNS = (
    "hash, size, content_type, title, tags, price, expires, parents, relationship, chunk_size, manifest, producer, "
    "replication, pinned, local, published, created_at"
)


def _row(row: sqlite3.Row) -> ContentItem:
    return ContentItem(
        hash=str(row["hash"]),
        size=int(row["size"]),
        content_type=str(row["content_type"]),
        title=str(row["title"]),
        tags=tuple(json.loads(row["tags"])),
        price=int(row["price"]),
        expires=int(row["expires"]),
        parents=tuple(json.loads(row["parents"])),
        relationship=str(row["relationship"]),
        chunk_size=int(row["chunk_size"]),
        manifest=bytes(row["manifest"]),
        producer=str(row["producer"]),
        replication=int(row["replication"]),
        pinned=bool(row["pinned"]),
        local=bool(row["local"]),
        published=bool(row["published"]),
        created_at=float(row["created_at"]),
    )


class ContentRepository:
    """Typed access to ``content`` and ``content_replicas``. Reach it as ``store.content``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert(self, item: ContentItem) -> None:
        """Insert or replace the row of ``item.hash``. Raises StoreError when the database fails."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT OR REPLACE INTO content ({_COLUMNS}) VALUES ({', '.join('?' * 17)})",
                (
                    item.hash,
                    item.size,
                    item.content_type,
                    item.title,
                    json.dumps(list(item.tags)),
                    item.price,
                    item.expires,
                    json.dumps(list(item.parents)),
                    item.relationship,
                    item.chunk_size,
                    item.manifest,
                    item.producer,
                    item.replication,
                    int(item.pinned),
                    int(item.local),
                    int(item.published),
                    item.created_at,
                ),
            )

        await self._db.write(write)

    async def get(self, content_hash: str) -> ContentItem | None:
        def read(conn: sqlite3.Connection) -> ContentItem | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM content WHERE hash = ?", (content_hash,)).fetchone()
            return None if row is None else _row(row)

        return await self._db.read(read)

    async def list(self, *, local_only: bool = False) -> builtins.list[ContentItem]:
        """Every known content, newest first (only what is held here with ``local_only``)."""

        def read(conn: sqlite3.Connection) -> builtins.list[ContentItem]:
            where = "WHERE local = 1" if local_only else ""
            rows = conn.execute(f"SELECT {_COLUMNS} FROM content {where} ORDER BY created_at DESC, hash").fetchall()
            return [_row(r) for r in rows]

        return await self._db.read(read)

    async def local_bytes(self) -> int:
        """Bytes of content held in the blob store (for the storage budget)."""

        def read(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT coalesce(sum(size), 0) FROM content WHERE local = 1").fetchone()[0])

        return await self._db.read(read)

    async def delete(self, content_hash: str) -> bool:
        """Forget a content and its replica rows; returns whether it was known."""

        def write(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM content_replicas WHERE hash = ?", (content_hash,))
            return conn.execute("DELETE FROM content WHERE hash = ?", (content_hash,)).rowcount > 0

        return await self._db.write(write)

    async def set_replica(self, content_hash: str, identity_key: str, state: str, detail: str, now: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                """
                INSERT INTO content_replicas (hash, identity_key, state, detail, updated_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (hash, identity_key) DO UPDATE SET
                    state = excluded.state, detail = excluded.detail, updated_at = excluded.updated_at
                """,
                (content_hash, identity_key, state, detail[:500], now),
            )

        await self._db.write(write)

    async def confirm_holders(
        self, content_hash: str, holders: Iterable[str], live: Collection[str], now: float
    ) -> None:
        """Record one live-holder check in one transaction: each of ``holders`` (those with a provider record) in
        ``live`` is ``available``, confirmed at ``now`` (a row is added for one that another node placed); an
        ``available`` row whose holder is not in ``live`` becomes ``unreachable`` and keeps its time, which is when
        it was last confirmed. Rows in other states (a placement under way, a failure) are left to the placer."""

        def write(conn: sqlite3.Connection) -> None:
            rows = {
                str(r["identity_key"]): (str(r["state"]), float(r["updated_at"]))
                for r in conn.execute(
                    "SELECT identity_key, state, updated_at FROM content_replicas WHERE hash = ?", (content_hash,)
                )
            }
            upsert = """
                INSERT INTO content_replicas (hash, identity_key, state, detail, updated_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (hash, identity_key) DO UPDATE SET
                    state = excluded.state, detail = excluded.detail, updated_at = excluded.updated_at
            """
            listed = set(holders)
            for key in listed & set(live):
                conn.execute(upsert, (content_hash, key, "available", "confirmed", now))
            for key, (state, updated_at) in rows.items():
                if state == "available" and key not in live:
                    why = "no answer to the live-holder check" if key in listed else "no provider record"
                    conn.execute(upsert, (content_hash, key, "unreachable", why, updated_at))

        await self._db.write(write)

    async def drop_replica(self, content_hash: str, identity_key: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM content_replicas WHERE hash = ? AND identity_key = ?", (content_hash, identity_key)
            )

        await self._db.write(write)

    async def replicas(self, content_hash: str) -> builtins.list[ReplicaRow]:
        def read(conn: sqlite3.Connection) -> builtins.list[ReplicaRow]:
            rows = conn.execute(
                "SELECT hash, identity_key, state, detail, updated_at FROM content_replicas WHERE hash = ? "
                "ORDER BY identity_key",
                (content_hash,),
            ).fetchall()
            return [
                ReplicaRow(
                    hash=str(r["hash"]),
                    identity_key=str(r["identity_key"]),
                    state=str(r["state"]),
                    detail=str(r["detail"]),
                    updated_at=float(r["updated_at"]),
                )
                for r in rows
            ]

        return await self._db.read(read)
