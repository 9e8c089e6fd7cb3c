"""The ``reports`` repository: the read-only queries behind ``ctl report`` (what this node bought and consumed) and
``ctl analytics`` (what it sold), and the ``consumption`` rows (migration ``0010_reports``) that say what a purchase
delivered.

Every figure comes from a durable table, never from a counter in memory: payments made are ``wallet_history``
entries (``direction = 'out'``, ``kind = 'payment'``) joined with their settlement job; payments received are the
``payments`` table; stream packets and payload bytes are ``stream_subs`` (bytes: migration ``0011_stream_bytes``);
content bytes are ``consumption`` (written when a purchase is made) and, for the producer, the ``content`` row's size.
Times are wall-clock seconds; a range is ``[since, until)``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from overlay_node.store.engine import Database

__all__ = ["ConsumptionRow", "PaymentMade", "PaymentTaken", "ReportsRepository", "SubUsage"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentMade:
    """A payment this node made: ``status`` is the history's (``sending``, ``unknown``, ``unconfirmed``,
    ``confirmed``, ``failed``, ``abandoned``), ``settlement`` its settlement job's state (empty without one)."""

    txid: str
    provider: str
    resource: str
    amount: int
    fee: int
    status: str
    settlement: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentTaken:
    """A payment this node received (a ``payments`` row): ``status`` ``accepted``, ``settled``, ``mined`` or
    ``failed``."""

    txid: str
    payer: str
    resource: str
    amount: int
    status: str
    accepted_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SubUsage:
    """A subscription's accounting on one side (``peer``: the producer for a consumer row, the subscriber for a
    producer row)."""

    stream_id: str
    peer: str
    packets: int
    paid: int
    payments: int
    state: str
    updated_at: float
    bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumptionRow:
    """What one purchase or download delivered: ``resource`` (``uhrp:<hex>``), the provider, packets (chunks) and
    bytes, and the payment's txid when it was paid."""

    resource: str
    provider: str
    packets: int
    bytes: int
    txid: str | None
    consumed_at: float


def _made(row: sqlite3.Row) -> PaymentMade:
    return PaymentMade(
        txid=str(row["txid"]),
        provider=str(row["counterparty"] or ""),
        resource=str(row["resource"] or ""),
        amount=int(row["amount"]),
        fee=int(row["fee"]),
        status=str(row["status"]),
        settlement=str(row["job_state"] or ""),
        created_at=float(row["created_at"]),
    )


class ReportsRepository:
    """Typed access to what reports read. Reach it as ``store.reports``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record_consumption(self, row: ConsumptionRow) -> None:
        """Add what a purchase or download delivered."""

        def txn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO consumption (resource, provider, packets, bytes, txid, consumed_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (row.resource, row.provider, row.packets, row.bytes, row.txid, row.consumed_at),
            )

        await self._db.write(txn)

    async def payments_made(self, since: float, until: float) -> list[PaymentMade]:
        """Payments this node made in ``[since, until)``, oldest first, with their settlement job's state."""

        def txn(conn: sqlite3.Connection) -> list[PaymentMade]:
            rows = conn.execute(
                """
                SELECT h.txid, h.counterparty, h.resource, h.amount, h.fee, h.status, h.created_at,
                       s.state AS job_state
                FROM wallet_history AS h LEFT JOIN settlement AS s ON s.txid = h.txid
                WHERE h.direction = 'out' AND h.kind = 'payment' AND h.created_at >= ? AND h.created_at < ?
                ORDER BY h.created_at, h.id
                """,
                (since, until),
            )
            return [_made(r) for r in rows]

        return await self._db.read(txn)

    async def payments_taken(self, since: float, until: float) -> list[PaymentTaken]:
        """Payments this node received in ``[since, until)``, oldest first."""

        def txn(conn: sqlite3.Connection) -> list[PaymentTaken]:
            rows = conn.execute(
                "SELECT txid, payer, resource, amount, status, accepted_at FROM payments "
                "WHERE accepted_at >= ? AND accepted_at < ? ORDER BY accepted_at, quote_id",
                (since, until),
            )
            return [
                PaymentTaken(
                    txid=str(r["txid"]),
                    payer=str(r["payer"]),
                    resource=str(r["resource"]),
                    amount=int(r["amount"]),
                    status=str(r["status"]),
                    accepted_at=float(r["accepted_at"]),
                )
                for r in rows
            ]

        return await self._db.read(txn)

    async def received_total(self, since: float, until: float) -> int:
        """Satoshis the wallet's history says came in as payments in ``[since, until)`` (failed ones left out)."""

        def txn(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT coalesce(sum(amount), 0) AS total FROM wallet_history WHERE direction = 'in' "
                "AND kind = 'payment' AND status NOT IN ('failed', 'abandoned') AND created_at >= ? AND created_at < ?",
                (since, until),
            ).fetchone()
            return int(row["total"])

        return await self._db.read(txn)

    async def subscriptions(self, role: str, since: float) -> list[SubUsage]:
        """Subscriptions of ``role`` (``consumer`` or ``producer``) active since ``since`` (last updated then or
        later), by stream and peer."""

        def txn(conn: sqlite3.Connection) -> list[SubUsage]:
            rows = conn.execute(
                "SELECT stream_id, peer, packets, bytes, paid, payments, state, updated_at FROM stream_subs "
                "WHERE role = ? AND updated_at >= ? ORDER BY stream_id, peer",
                (role, since),
            )
            return [
                SubUsage(
                    stream_id=str(r["stream_id"]),
                    peer=str(r["peer"]),
                    packets=int(r["packets"]),
                    paid=int(r["paid"]),
                    payments=int(r["payments"]),
                    state=str(r["state"]),
                    updated_at=float(r["updated_at"]),
                    bytes=int(r["bytes"]),
                )
                for r in rows
            ]

        return await self._db.read(txn)

    async def consumption(self, since: float, until: float) -> list[ConsumptionRow]:
        """What purchases and downloads delivered in ``[since, until)``, oldest first."""

        def txn(conn: sqlite3.Connection) -> list[ConsumptionRow]:
            rows = conn.execute(
                "SELECT resource, provider, packets, bytes, txid, consumed_at FROM consumption "
                "WHERE consumed_at >= ? AND consumed_at < ? ORDER BY consumed_at, id",
                (since, until),
            )
            return [
                ConsumptionRow(
                    resource=str(r["resource"]),
                    provider=str(r["provider"]),
                    packets=int(r["packets"]),
                    bytes=int(r["bytes"]),
                    txid=None if r["txid"] is None else str(r["txid"]),
                    consumed_at=float(r["consumed_at"]),
                )
                for r in rows
            ]

        return await self._db.read(txn)

    async def content_sizes(self, hashes: list[str]) -> dict[str, tuple[int, int]]:
        """``hash -> (size, chunk_size)`` of the content rows this node has among ``hashes``."""

        def txn(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            out: dict[str, tuple[int, int]] = {}
            for start in range(0, len(hashes), 500):
                part = hashes[start : start + 500]
                marks = ", ".join("?" * len(part))
                for r in conn.execute(f"SELECT hash, size, chunk_size FROM content WHERE hash IN ({marks})", part):
                    out[str(r["hash"])] = (int(r["size"]), int(r["chunk_size"]))
            return out

        return await self._db.read(txn)
