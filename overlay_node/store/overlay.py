"""The overlay engine's repository: admitted outputs with their BEEF, applied transactions, BRC-64 history links,
and the lookup services' indexes (tables of migration ``0008_overlay``).

Theory of operation:
1. One submission is one :class:`SubmitWrite`; :meth:`OverlayRepository.apply` writes a batch of them in one
   transaction (the engine's group commit), so a submission lands whole or not at all: outputs admitted, previous
   coins marked spent, stale ones deleted with their unretained history (the reference's ``deleteUTXODeep``), BRC-64
   links (``consumed`` on the new output, ``consumed_by`` on each retained one), the applied-transaction row and the
   lookup index entries.
2. A transaction already applied to a topic is a duplicate for that topic: :meth:`apply` checks it again inside the
   transaction (two submissions of the same transaction may race past the engine's first check), and reports it.
3. A BEEF is stored once per txid and deleted with the last output that needs it.
4. Index entries belong to (service, topic, outpoint); they go when their output is evicted, and when it is spent
   for the services that do not keep spent outputs.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from overlay_node.store.rows import MAX_PARAMS, marks

if TYPE_CHECKING:
    from overlay_node.store.engine import Database

__all__ = [
    "IndexWrite",
    "OverlayRepository",
    "OwnToken",
    "OwnTokensRepository",
    "StoredOutput",
    "SubmitOutcome",
    "SubmitWrite",
    "TopicWrite",
]

Outpoint = tuple[str, int]
#: reads of at most this many keys run on the event loop's thread (``Database.read(inline=True)``: a lookup or a
#: submission's previous coins, where a thread hand-off costs ten times the query); larger ones in a thread
_INLINE_ROWS = 64


def _links(text: str) -> tuple[Outpoint, ...]:
    out: list[Outpoint] = []
    for item in text.split():
        txid, _, vout = item.rpartition(".")
        out.append((txid, int(vout)))
    return tuple(out)


def _text(links: Collection[Outpoint]) -> str:
    return " ".join(f"{txid}.{vout}" for txid, vout in links)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredOutput:
    """An output admitted into a topic. ``score`` is its admission time in ms; ``consumed`` the retained
    predecessors it spent, ``consumed_by`` the outputs that retained it (BRC-64)."""

    topic: str
    txid: str
    vout: int
    script: bytes
    satoshis: int
    spent: bool
    score: float
    consumed: tuple[Outpoint, ...] = ()
    consumed_by: tuple[Outpoint, ...] = ()

    @property
    def outpoint(self) -> Outpoint:
        return (self.txid, self.vout)


def _output(row: sqlite3.Row) -> StoredOutput:
    return StoredOutput(
        topic=str(row["topic"]),
        txid=str(row["txid"]),
        vout=int(row["vout"]),
        script=bytes(row["script"]),
        satoshis=int(row["satoshis"]),
        spent=bool(row["spent"]),
        score=float(row["score"]),
        consumed=_links(str(row["consumed"])),
        consumed_by=_links(str(row["consumed_by"])),
    )


_OUTPUT_COLUMNS = "topic, txid, vout, script, satoshis, spent, score, consumed, consumed_by"


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexWrite:
    """What one lookup service indexes of one admitted output."""

    service: str
    vout: int
    fields: Mapping[str, Sequence[str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicWrite:
    """What a submission changes in one topic.

    ``previous``: the topic's outputs the transaction spends (all marked spent); ``retained``: those kept in
    history (the rest are deleted deep); ``admit``: ``(vout, script, satoshis)`` of each admitted output;
    ``unindex_on_spend``: the services whose entries for a spent output go.
    """

    topic: str
    admit: tuple[tuple[int, bytes, int], ...] = ()
    previous: tuple[Outpoint, ...] = ()
    retained: tuple[Outpoint, ...] = ()
    index: tuple[IndexWrite, ...] = ()
    unindex_on_spend: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitWrite:
    """One submission's changes, applied in one transaction."""

    txid: str
    beef: bytes
    block_height: int | None
    score: int
    created_at: float
    topics: tuple[TopicWrite, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitOutcome:
    """What :meth:`OverlayRepository.apply` did with one submission: the topics it found already applied
    (nothing written there), and the ``(topic, txid, vout)`` outputs deleted as stale."""

    duplicate_topics: frozenset[str] = frozenset()
    evicted: tuple[tuple[str, str, int], ...] = ()


@dataclass(slots=True)
class PreviousCoins:
    """What the engine needs to know before it asks the topic managers: per topic, whether the transaction was
    applied already, and which of the outpoints it spends are the topic's outputs."""

    applied: set[str] = field(default_factory=set)
    outputs: dict[str, set[Outpoint]] = field(default_factory=dict)


class OverlayRepository:
    """Typed access to the overlay engine's tables. Reach it as ``store.overlay``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- submissions ----------------------------------------------------------------------------------------

    async def previous_coins(self, txid: str, topics: Collection[str], spends: Collection[Outpoint]) -> PreviousCoins:
        """Which ``topics`` already applied ``txid``, and which of ``spends`` each topic holds (spent or not, as
        the reference engine's ``findOutput`` without a spent filter)."""

        def read(conn: sqlite3.Connection) -> PreviousCoins:
            found = PreviousCoins()
            topic_list = list(topics)
            rows = conn.execute(
                f"SELECT topic FROM overlay_applied WHERE txid = ? AND topic IN ({marks(len(topic_list))})",
                [txid, *topic_list],
            ).fetchall()
            found.applied = {str(r["topic"]) for r in rows}
            wanted = set(spends)
            txids = sorted({t for t, _ in wanted})
            for start in range(0, len(txids), MAX_PARAMS - len(topic_list)):
                chunk = txids[start : start + MAX_PARAMS - len(topic_list)]
                for row in conn.execute(
                    f"SELECT topic, txid, vout FROM overlay_outputs WHERE txid IN ({marks(len(chunk))}) "
                    f"AND topic IN ({marks(len(topic_list))})",
                    [*chunk, *topic_list],
                ):
                    op = (str(row["txid"]), int(row["vout"]))
                    if op in wanted:
                        found.outputs.setdefault(str(row["topic"]), set()).add(op)
            return found

        return await self._db.read(read, inline=len(spends) <= _INLINE_ROWS)

    async def applied_txids(self, after: tuple[str, str] | None, limit: int) -> list[tuple[str, str]]:
        """One page of the ``(topic, txid)`` applied so far, in key order, after ``after`` (None: from the start):
        the engine's filter of known transactions pages through them at start."""

        def read(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            if after is None:
                rows = conn.execute("SELECT topic, txid FROM overlay_applied ORDER BY topic, txid LIMIT ?", (limit,))
            else:
                rows = conn.execute(
                    "SELECT topic, txid FROM overlay_applied WHERE (topic, txid) > (?, ?) ORDER BY topic, txid LIMIT ?",
                    (*after, limit),
                )
            return [(str(r[0]), str(r[1])) for r in rows]

        return await self._db.read(read)

    async def apply(self, writes: Sequence[SubmitWrite], *, durable: bool, inline: bool = False) -> list[SubmitOutcome]:
        """Write ``writes`` in one transaction (see the module docstring); one outcome each, in order. ``inline``:
        on the calling thread when the writer thread is idle (``Database.write``).

        Raises:
            StoreError: the database failed; nothing was written.
        """
        return await self._db.write(lambda conn: [_apply_one(conn, w) for w in writes], durable=durable, inline=inline)

    # -- reads ----------------------------------------------------------------------------------------------

    async def outputs(
        self, outpoints: Collection[Outpoint], *, topic: str | None = None
    ) -> dict[Outpoint, StoredOutput]:
        """The stored outputs among ``outpoints`` (in ``topic``, else the first topic that holds each)."""
        return await self._db.read(lambda conn: _outputs(conn, outpoints, topic))

    async def beefs(self, txids: Collection[str]) -> dict[str, bytes]:
        """The stored BEEF of each of ``txids`` that has one."""
        return await self._db.read(lambda conn: _beefs(conn, txids))

    async def outputs_with_beefs(
        self, outpoints: Collection[Outpoint], *, topic: str | None = None
    ) -> tuple[dict[Outpoint, StoredOutput], dict[str, bytes]]:
        """:meth:`outputs` and the BEEFs of their transactions, in one read."""

        def read(conn: sqlite3.Connection) -> tuple[dict[Outpoint, StoredOutput], dict[str, bytes]]:
            found = _outputs(conn, outpoints, topic)
            return found, _beefs(conn, {op[0] for op in found})

        return await self._db.read(read, inline=len(outpoints) <= _INLINE_ROWS)

    async def answerable(self, outpoints: Collection[Outpoint]) -> dict[Outpoint, bytes]:
        """The outpoints among ``outpoints`` stored in any topic, each with its transaction's BEEF, in one read: what
        a lookup's answer needs when it asks for no history (:meth:`outputs_with_beefs` builds every output whole).
        One outpoint, the common case, is one statement."""
        wanted = set(outpoints)
        if len(wanted) == 1:
            ((txid, vout),) = wanted

            def one(conn: sqlite3.Connection) -> dict[Outpoint, bytes]:
                row = conn.execute(_ANSWERABLE, (txid, txid, vout)).fetchone()
                return {} if row is None else {(txid, vout): bytes(row[0])}

            return await self._db.read_inline(one)

        def read(conn: sqlite3.Connection) -> dict[Outpoint, bytes]:
            found = _stored(conn, wanted)
            beefs = _beefs(conn, {txid for txid, _ in found})
            return {op: beefs[op[0]] for op in found if op[0] in beefs}

        return await self._db.read(read, inline=len(wanted) <= _INLINE_ROWS)

    async def find_index(
        self,
        service: str,
        where: Mapping[str, Sequence[str]],
        *,
        limit: int | None,
        skip: int,
        newest_first: bool,
    ) -> list[Outpoint]:
        """The outpoints ``service`` indexed whose fields match ``where`` (every key, any of its values), in
        admission order; an outpoint indexed under several topics comes once."""

        def read(conn: sqlite3.Connection) -> list[Outpoint]:
            conditions = list(where.items())
            if any(not values for _, values in conditions):
                return []
            sql = _find_sql(tuple(len(values) for _, values in conditions), newest_first)
            # in the statement's order: the first condition's field and values, the service, then the others'
            first = [conditions[0][0], *conditions[0][1]] if conditions else []
            params: list[object] = [*first, service]
            for key, values in conditions[1:]:
                params += [key, *values]
            # an outpoint indexed under several topics comes once: de-duplicated here, in admission order, so that
            # the scan stops as soon as the page is full
            found: list[Outpoint] = []
            seen: set[Outpoint] = set()
            want = None if limit is None else skip + limit
            for row in conn.execute(sql, params):
                op = (str(row[0]), int(row[1]))
                if op in seen:
                    continue
                seen.add(op)
                found.append(op)
                if want is not None and len(found) >= want:
                    break
            return found[skip:]

        return await self._db.read(read, inline=limit is not None and skip + limit <= _INLINE_ROWS)

    async def index_fields(self, service: str, outpoint: Outpoint) -> dict[str, list[str]] | None:
        """What ``service`` indexed for ``outpoint`` (under any topic), or None."""

        def read(conn: sqlite3.Connection) -> dict[str, list[str]] | None:
            items = conn.execute(
                "SELECT seq FROM overlay_index_items WHERE service = ? AND txid = ? AND vout = ?",
                (service, outpoint[0], outpoint[1]),
            ).fetchall()
            if not items:
                return None
            fields: dict[str, list[str]] = {}
            for item in items:
                for row in conn.execute(
                    "SELECT field, value FROM overlay_index_fields WHERE item = ? ORDER BY field, value", (item[0],)
                ):
                    values = fields.setdefault(str(row["field"]), [])
                    if str(row["value"]) not in values:
                        values.append(str(row["value"]))
            return fields

        return await self._db.read(read)

    async def counts(self) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
        """``({topic: (outputs, unspent outputs)}, {service: indexed outputs})``."""

        def read(conn: sqlite3.Connection) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
            topics = {
                str(r["topic"]): (int(r["n"]), int(r["unspent"]))
                for r in conn.execute(
                    "SELECT topic, count(*) AS n, sum(spent = 0) AS unspent FROM overlay_outputs GROUP BY topic"
                )
            }
            services = {
                str(r["service"]): int(r["n"])
                for r in conn.execute("SELECT service, count(*) AS n FROM overlay_index_items GROUP BY service")
            }
            return topics, services

        return await self._db.read(read)

    async def sync_since(self, peer: str, topic: str) -> int:
        """Where the next GASP sync of ``topic`` with ``peer`` starts (0: from the beginning)."""

        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT since FROM overlay_sync_state WHERE peer = ? AND topic = ?", (peer, topic)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return await self._db.read(read)

    async def set_sync_since(self, peer: str, topic: str, since: int, now: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO overlay_sync_state (peer, topic, since, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (peer, topic) DO UPDATE SET since = max(since, excluded.since), "
                "updated_at = excluded.updated_at",
                (peer, topic, since, now),
            )

        await self._db.write(write)

    async def max_score(self) -> int:
        """The highest admission score stored (0 when nothing is)."""

        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT max(score) FROM overlay_outputs").fetchone()
            return int(row[0] or 0)

        return await self._db.read(read)

    async def unspent(self, topic: str, *, since: float, limit: int | None) -> list[StoredOutput]:
        """The unspent outputs of ``topic`` admitted at ``score >= since`` (all when ``since`` is 0), oldest first."""

        def read(conn: sqlite3.Connection) -> list[StoredOutput]:
            rows = conn.execute(
                f"SELECT {_OUTPUT_COLUMNS} FROM overlay_outputs WHERE topic = ? AND spent = 0 AND score >= ? "
                "ORDER BY score, id LIMIT ?",
                (topic, since, -1 if limit is None else limit),
            )
            return [_output(r) for r in rows]

        return await self._db.read(read)


def _outputs(
    conn: sqlite3.Connection, outpoints: Collection[Outpoint], topic: str | None
) -> dict[Outpoint, StoredOutput]:
    wanted = set(outpoints)
    found: dict[Outpoint, StoredOutput] = {}
    txids = sorted({t for t, _ in wanted})
    for start in range(0, len(txids), MAX_PARAMS - 1):
        chunk = txids[start : start + MAX_PARAMS - 1]
        sql = f"SELECT {_OUTPUT_COLUMNS} FROM overlay_outputs WHERE txid IN ({marks(len(chunk))})"
        params: list[object] = list(chunk)
        if topic is not None:
            sql += " AND topic = ?"
            params.append(topic)
        for row in conn.execute(sql + " ORDER BY id", params):
            out = _output(row)
            if out.outpoint in wanted and out.outpoint not in found:
                found[out.outpoint] = out
    return found


#: one outpoint's BEEF, if the outpoint is stored (the outpoint's key in ``overlay_outputs`` alone: no row read)
_ANSWERABLE = (
    "SELECT beef FROM overlay_txs WHERE txid = ? AND EXISTS (SELECT 1 FROM overlay_outputs WHERE txid = ? AND vout = ?)"
)


@functools.lru_cache(maxsize=256)
def _find_sql(counts: tuple[int, ...], newest_first: bool) -> str:
    """:meth:`OverlayRepository.find_index`'s statement for conditions of ``counts`` values each; its parameters: the
    first condition's field and values, the service, then each other condition's field and values."""
    order = "DESC" if newest_first else "ASC"
    if not counts:
        return f"SELECT i.txid, i.vout FROM overlay_index_items i WHERE i.service = ? ORDER BY i.seq {order}"
    # driven by the first condition's (field, value) key (CROSS JOIN keeps that order: SQLite's planner would rather
    # walk every item of the service in seq order), the others checked per item; ordered by the key's own item
    # column (the same number as i.seq), which the key already holds in order for one value: no sort, and the scan
    # stops at the page's end
    sql = (
        "SELECT i.txid, i.vout FROM overlay_index_fields f CROSS JOIN overlay_index_items i ON i.seq = f.item "
        f"WHERE f.field = ? AND f.value IN ({marks(counts[0])}) AND i.service = ?"
    )
    for count in counts[1:]:
        sql += (
            " AND EXISTS (SELECT 1 FROM overlay_index_fields g WHERE g.item = i.seq AND g.field = ? "
            f"AND g.value IN ({marks(count)}))"
        )
    return sql + f" ORDER BY f.item {order}"


def _stored(conn: sqlite3.Connection, wanted: set[Outpoint]) -> set[Outpoint]:
    """Which of ``wanted`` are stored in some topic (read from the outpoint's key alone)."""
    found: set[Outpoint] = set()
    txids = sorted({t for t, _ in wanted})
    for start in range(0, len(txids), MAX_PARAMS):
        chunk = txids[start : start + MAX_PARAMS]
        for txid, vout in conn.execute(
            f"SELECT txid, vout FROM overlay_outputs WHERE txid IN ({marks(len(chunk))})", chunk
        ):
            op = (str(txid), int(vout))
            if op in wanted:
                found.add(op)
    return found


def _beefs(conn: sqlite3.Connection, txids: Collection[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    ids = sorted(set(txids))
    for start in range(0, len(ids), MAX_PARAMS):
        chunk = ids[start : start + MAX_PARAMS]
        for row in conn.execute(f"SELECT txid, beef FROM overlay_txs WHERE txid IN ({marks(len(chunk))})", chunk):
            out[str(row["txid"])] = bytes(row["beef"])
    return out


# -- own tokens -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnToken:
    """A token of this node's on chain: a SHIP/SLAP advert (``name`` the topic or service) or a UHRP advertisement
    (``name`` the content hash in hex), admitted into ``topic``."""

    txid: str
    vout: int
    kind: str
    name: str
    topic: str
    script: bytes
    satoshis: int
    state: str = "active"
    created_at: float = 0.0

    @property
    def outpoint(self) -> str:
        return f"{self.txid}.{self.vout}"


class OwnTokensRepository:
    """This node's own tokens. Reach it as ``store.own_tokens``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, token: OwnToken) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO overlay_own_tokens (txid, vout, kind, name, topic, script, satoshis, state, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token.txid,
                    token.vout,
                    token.kind,
                    token.name,
                    token.topic,
                    token.script,
                    token.satoshis,
                    token.state,
                    token.created_at,
                ),
            )

        await self._db.write(write, durable=True)

    async def active(self, kind: str, name: str | None = None) -> list[OwnToken]:
        """The tokens of ``kind`` (for ``name``, when given) not revoked yet, oldest first."""

        def read(conn: sqlite3.Connection) -> list[OwnToken]:
            sql = "SELECT * FROM overlay_own_tokens WHERE state = 'active' AND kind = ?"
            params: list[object] = [kind]
            if name is not None:
                sql += " AND name = ?"
                params.append(name)
            rows = conn.execute(sql + " ORDER BY created_at", params).fetchall()
            return [
                OwnToken(
                    txid=str(r["txid"]),
                    vout=int(r["vout"]),
                    kind=str(r["kind"]),
                    name=str(r["name"]),
                    topic=str(r["topic"]),
                    script=bytes(r["script"]),
                    satoshis=int(r["satoshis"]),
                    state=str(r["state"]),
                    created_at=float(r["created_at"]),
                )
                for r in rows
            ]

        return await self._db.read(read)

    async def revoked(self, txid: str, vout: int, by: str) -> None:
        """``txid.vout`` was spent by ``by`` (its revocation)."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE overlay_own_tokens SET state = 'revoked', revoked_by = ? WHERE txid = ? AND vout = ?",
                (by, txid, vout),
            )

        await self._db.write(write, durable=True)


# -- the write --------------------------------------------------------------------------------------------------


def _apply_one(conn: sqlite3.Connection, w: SubmitWrite) -> SubmitOutcome:
    duplicates: set[str] = set()
    evicted: list[tuple[str, str, int]] = []
    stored_beef = False
    for t in w.topics:
        cur = conn.execute("INSERT OR IGNORE INTO overlay_applied (topic, txid) VALUES (?, ?)", (t.topic, w.txid))
        if cur.rowcount == 0:
            duplicates.add(t.topic)
            continue
        _spend_previous(conn, t, evicted)
        stored_beef = _admit_outputs(conn, w, t) or stored_beef
        _index_outputs(conn, w, t)
    if stored_beef:
        conn.execute(
            "INSERT OR IGNORE INTO overlay_txs (txid, beef, block_height, created_at) VALUES (?, ?, ?, ?)",
            (w.txid, w.beef, w.block_height, w.created_at),
        )
    for txid in {txid for _, txid, _ in evicted}:
        conn.execute(
            "DELETE FROM overlay_txs WHERE txid = ? AND NOT EXISTS (SELECT 1 FROM overlay_outputs WHERE txid = ?)",
            (txid, txid),
        )
    return SubmitOutcome(duplicate_topics=frozenset(duplicates), evicted=tuple(evicted))


def _spend_previous(conn: sqlite3.Connection, t: TopicWrite, evicted: list[tuple[str, str, int]]) -> None:
    """Mark the topic's outputs the transaction spends as spent (unindexed for ``unindex_on_spend``), then delete
    deep the ones not retained."""
    for txid, vout in t.previous:
        conn.execute(
            "UPDATE overlay_outputs SET spent = 1 WHERE topic = ? AND txid = ? AND vout = ?", (t.topic, txid, vout)
        )
        for service in t.unindex_on_spend:
            conn.execute(
                "DELETE FROM overlay_index_items WHERE service = ? AND topic = ? AND txid = ? AND vout = ?",
                (service, t.topic, txid, vout),
            )
    retained = set(t.retained)
    for op in t.previous:
        if op not in retained:
            _delete_deep(conn, t.topic, op, evicted)


def _admit_outputs(conn: sqlite3.Connection, w: SubmitWrite, t: TopicWrite) -> bool:
    """Store the admitted outputs, each consuming the retained ones, which are linked to them; whether any was."""
    consumed = _text(t.retained)
    for vout, script, satoshis in t.admit:
        conn.execute(
            "INSERT OR IGNORE INTO overlay_outputs (topic, txid, vout, script, satoshis, score, consumed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (t.topic, w.txid, vout, script, satoshis, w.score, consumed),
        )
    if not t.admit:
        return False
    new_outputs = [(w.txid, vout) for vout, _, _ in t.admit]
    for txid, vout in t.retained:
        row = conn.execute(
            "SELECT consumed_by FROM overlay_outputs WHERE topic = ? AND txid = ? AND vout = ?",
            (t.topic, txid, vout),
        ).fetchone()
        if row is not None:
            links = list(dict.fromkeys([*_links(str(row[0])), *new_outputs]))
            conn.execute(
                "UPDATE overlay_outputs SET consumed_by = ? WHERE topic = ? AND txid = ? AND vout = ?",
                (_text(links), t.topic, txid, vout),
            )
    return True


_INSERT_FIELD = "INSERT OR IGNORE INTO overlay_index_fields (item, field, value) VALUES (?, ?, ?)"


def _index_outputs(conn: sqlite3.Connection, w: SubmitWrite, t: TopicWrite) -> None:
    """The lookup services' entries for the admitted outputs (an entry already there is left as it is)."""
    for entry in t.index:
        cur = conn.execute(
            "INSERT OR IGNORE INTO overlay_index_items (service, topic, txid, vout) VALUES (?, ?, ?, ?)",
            (entry.service, t.topic, w.txid, entry.vout),
        )
        if cur.rowcount == 0:
            continue
        item = cur.lastrowid
        rows = [(item, key, value) for key, values in entry.fields.items() for value in dict.fromkeys(values)]
        if len(rows) == 1:  # the common case: one field, one value (``executemany`` costs more for one row)
            conn.execute(_INSERT_FIELD, rows[0])
        elif rows:
            conn.executemany(_INSERT_FIELD, rows)


def _delete_deep(conn: sqlite3.Connection, topic: str, start: Outpoint, evicted: list[tuple[str, str, int]]) -> None:
    """Delete ``start`` unless something retains it, then walk its retained predecessors: each forgets it, and
    goes too once nothing retains it (the reference engine's ``deleteUTXODeep``, without recursion)."""
    todo = [start]
    seen: set[Outpoint] = set()
    while todo:
        op = todo.pop()
        if op in seen:
            continue
        seen.add(op)
        row = conn.execute(
            "SELECT consumed, consumed_by FROM overlay_outputs WHERE topic = ? AND txid = ? AND vout = ?",
            (topic, op[0], op[1]),
        ).fetchone()
        if row is None:
            continue
        if not str(row["consumed_by"]).strip():
            conn.execute("DELETE FROM overlay_outputs WHERE topic = ? AND txid = ? AND vout = ?", (topic, *op))
            conn.execute(
                "DELETE FROM overlay_index_items WHERE topic = ? AND txid = ? AND vout = ?", (topic, op[0], op[1])
            )
            evicted.append((topic, op[0], op[1]))
        for pred in _links(str(row["consumed"])):
            prow = conn.execute(
                "SELECT consumed_by FROM overlay_outputs WHERE topic = ? AND txid = ? AND vout = ?", (topic, *pred)
            ).fetchone()
            if prow is None:
                continue
            remaining = [link for link in _links(str(prow[0])) if link != op]
            conn.execute(
                "UPDATE overlay_outputs SET consumed_by = ? WHERE topic = ? AND txid = ? AND vout = ?",
                (_text(remaining), topic, *pred),
            )
            todo.append(pred)
