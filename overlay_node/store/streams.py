"""The ``streams`` repository: streams this node produces, and the accounting of each subscription on both
sides (migration ``0006_streams``, tables ``streams`` and ``stream_subs``).

The producer's revenue per subscriber is read from the durable ``payments`` table (resource
``stream:<id>``), never from a counter of ours, so a restart cannot lose or double count a payment. Packet
counts, payload bytes (``bytes``, migration ``0011_stream_bytes``) and sequence positions are written by the streams
service when they change (the producer's batched by its flush task, and at shutdown: the same one statement per
subscription, never one per packet); a consumer's resume position repairs what a crash lost on the producer's side
(see ``protocol/streams.py``). A consumer's row is written in the transaction of each batch of its payments'
write-ahead (:func:`subs_txn`), and alone shortly after changes that no payment took along
(``services/streams_consumer.py``), so a crash of the consumer loses from its report no packet it paid for beyond its
pay-ahead.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from overlay_node.store.engine import Database, TxnFn

__all__ = ["PaidTotals", "StreamRow", "StreamsRepository", "SubRow", "subs_txn"]

Role = Literal["producer", "consumer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRow:
    """A stream this node produces. ``next_seq`` is the sequence number of the next packet pushed."""

    stream_id: str
    title: str
    tags: tuple[str, ...]
    pricing_model: str
    rate: int
    max_consumers: int
    created_at: float
    closed_at: float | None
    next_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SubRow:
    """One subscription's accounting, on the producer's side (``peer`` = the subscriber) or the consumer's
    (``peer`` = the producer). ``charged_through``: packets below it were paid for (consumer: received).
    ``bytes``: the UTF-8 payload bytes of the packets counted (producer: sent, consumer: received), each packet
    once (a packet sent again after a resume is not counted again)."""

    stream_id: str
    peer: str
    role: Role
    window: int
    start_seq: int
    charged_through: int
    packets: int
    paid: int
    payments: int
    state: str
    reason: str
    updated_at: float
    bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PaidTotals:
    """What one payer paid for a resource (from ``payments``): total, count, and not yet settled."""

    amount: int
    payments: int
    unsettled: int


def _stream(row: sqlite3.Row) -> StreamRow:
    return StreamRow(
        stream_id=str(row["stream_id"]),
        title=str(row["title"]),
        tags=tuple(json.loads(row["tags"])),
        pricing_model=str(row["pricing_model"]),
        rate=int(row["rate"]),
        max_consumers=int(row["max_consumers"]),
        created_at=float(row["created_at"]),
        closed_at=None if row["closed_at"] is None else float(row["closed_at"]),
        next_seq=int(row["next_seq"]),
    )


def _sub(row: sqlite3.Row) -> SubRow:
    return SubRow(
        stream_id=str(row["stream_id"]),
        peer=str(row["peer"]),
        role=row["role"],
        window=int(row["window"]),
        start_seq=int(row["start_seq"]),
        charged_through=int(row["charged_through"]),
        packets=int(row["packets"]),
        paid=int(row["paid"]),
        payments=int(row["payments"]),
        state=str(row["state"]),
        reason=str(row["reason"]),
        updated_at=float(row["updated_at"]),
        bytes=int(row["bytes"]),
    )


_SUB_UPSERT = """
    INSERT INTO stream_subs (stream_id, peer, role, window, start_seq, charged_through, packets, paid, payments, state,
                             reason, updated_at, bytes)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (stream_id, peer, role) DO UPDATE SET
        window = excluded.window,
        charged_through = max(charged_through, excluded.charged_through),
        packets = max(packets, excluded.packets),
        bytes = max(bytes, excluded.bytes),
        paid = excluded.paid,
        payments = excluded.payments,
        state = excluded.state,
        reason = excluded.reason,
        updated_at = excluded.updated_at
"""


def _write_subs(conn: sqlite3.Connection, subs: Sequence[SubRow]) -> None:
    for s in subs:
        conn.execute(
            _SUB_UPSERT,
            (
                s.stream_id,
                s.peer,
                s.role,
                s.window,
                s.start_seq,
                s.charged_through,
                s.packets,
                s.paid,
                s.payments,
                s.state,
                s.reason,
                s.updated_at,
                s.bytes,
            ),
        )


def subs_txn(subs: Sequence[SubRow]) -> TxnFn[None]:
    """Write subscription rows (as :meth:`StreamsRepository.save` does) inside another write's transaction: a
    consumer's running row goes so with its payments' write-ahead (``Wallet.begin_many``'s ``before``), one commit
    for both."""
    rows = tuple(subs)

    def txn(conn: sqlite3.Connection) -> None:
        _write_subs(conn, rows)

    return txn


class StreamsRepository:
    """Typed access to ``streams`` and ``stream_subs``. Reach it as ``store.streams``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, row: StreamRow) -> bool:
        """Insert a stream; False when the id exists (open or closed)."""

        def txn(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                """
                INSERT INTO streams (stream_id, title, tags, pricing_model, rate, max_consumers, created_at,
                                     closed_at, next_seq)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (stream_id) DO NOTHING
                """,
                (
                    row.stream_id,
                    row.title,
                    json.dumps(list(row.tags)),
                    row.pricing_model,
                    row.rate,
                    row.max_consumers,
                    row.created_at,
                    row.closed_at,
                    row.next_seq,
                ),
            )
            return cur.rowcount == 1

        return await self._db.write(txn)

    async def streams(self) -> list[StreamRow]:
        """Every stream, oldest first."""

        def txn(conn: sqlite3.Connection) -> list[StreamRow]:
            return [_stream(r) for r in conn.execute("SELECT * FROM streams ORDER BY created_at, stream_id")]

        return await self._db.read(txn)

    async def save(
        self,
        streams: list[tuple[str, int, float | None]],
        subs: list[SubRow],
        *,
        exact: bool = False,
        durable: bool = True,
        urgent: bool = False,
    ) -> None:
        """Write stream positions ``(stream_id, next_seq, closed_at)`` and subscription rows in one transaction
        (durable by default: called at shutdown and by the flush task). ``next_seq`` only grows, unless ``exact``
        (the last write of a clean shutdown, which gives back the numbers reserved but never used). A consumer's
        running row, when no write-ahead takes it along (:func:`subs_txn`), goes with ``durable=False, urgent=True``,
        as that write-ahead would (docs/design.md, Persistence and durability)."""
        grow = "?" if exact else "max(next_seq, ?)"

        def txn(conn: sqlite3.Connection) -> None:
            for stream_id, next_seq, closed_at in streams:
                conn.execute(
                    f"UPDATE streams SET next_seq = {grow}, closed_at = coalesce(closed_at, ?) WHERE stream_id = ?",
                    (next_seq, closed_at, stream_id),
                )
            _write_subs(conn, subs)

        await self._db.write(txn, durable=durable, urgent=urgent)

    async def reserve(self, stream_id: str, next_seq: int) -> None:
        """Durably move a stream's restart position up to ``next_seq`` (sequence numbers reserved ahead)."""

        def txn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE streams SET next_seq = max(next_seq, ?) WHERE stream_id = ?",
                (next_seq, stream_id),
            )

        await self._db.write(txn, durable=True)

    async def subs(self, stream_id: str | None = None, *, role: Role | None = None) -> list[SubRow]:
        """Subscription rows (of one stream, of one role), by stream and peer."""

        def txn(conn: sqlite3.Connection) -> list[SubRow]:
            query, args = "SELECT * FROM stream_subs WHERE 1 = 1", []
            if stream_id is not None:
                query += " AND stream_id = ?"
                args.append(stream_id)
            if role is not None:
                query += " AND role = ?"
                args.append(role)
            return [_sub(r) for r in conn.execute(query + " ORDER BY stream_id, peer", args)]

        return await self._db.read(txn)

    async def paid_by_payer(self, resource: str) -> dict[str, PaidTotals]:
        """Accepted payments for ``resource`` by payer (from the durable ``payments`` table)."""

        def txn(conn: sqlite3.Connection) -> dict[str, PaidTotals]:
            rows = conn.execute(
                """
                SELECT payer, count(*) AS n, coalesce(sum(amount), 0) AS total,
                       coalesce(sum(CASE WHEN status = 'accepted' THEN amount ELSE 0 END), 0) AS open
                FROM payments WHERE resource = ? GROUP BY payer
                """,
                (resource,),
            )
            return {
                str(r["payer"]): PaidTotals(amount=int(r["total"]), payments=int(r["n"]), unsettled=int(r["open"]))
                for r in rows
            }

        return await self._db.read(txn)
