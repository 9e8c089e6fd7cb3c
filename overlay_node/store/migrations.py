"""Named schema migrations, applied in order when the store opens (sqlite-utils ``Migrations`` style).

Each migration and the row recording it in ``_migrations(name, applied_at)`` commit in one transaction, so a crash
leaves a migration either fully applied and recorded or not at all. Re-opening a migrated database is a no-op. A
database that records a migration this code does not know was written by newer software and is refused.

To change the schema, append a function to the end of this module::

    @MIGRATIONS.register("0003_adverts")
    def _adverts(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE adverts (...)")

Rules: names are ``NNNN_words`` and strictly increasing; never edit or remove a migration that has shipped (add a
new one: ``tests/unit/test_migrations_frozen.py`` holds each one's SQL to the hash it shipped with); a migration holds
its own DDL as text and calls no repository code (which would change under it); use ``conn.execute`` per statement,
never ``executescript`` (it commits and would break the one transaction rule).
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from overlay_node.clock import wall_time
from overlay_node.errors import StoreError

if TYPE_CHECKING:
    from overlay_node.store.engine import Database

logger = logging.getLogger(__name__)

MigrationFn = Callable[[sqlite3.Connection], None]

_NAME = re.compile(r"^[0-9]{4}_[a-z0-9_]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    """One named schema step."""

    name: str
    fn: MigrationFn


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedMigration:
    """A row of ``_migrations``: which migration ran and when (wall-clock seconds)."""

    name: str
    applied_at: float


class Migrations:
    """An ordered set of named migrations."""

    def __init__(self) -> None:
        self._items: list[Migration] = []

    def register(self, name: str) -> Callable[[MigrationFn], MigrationFn]:
        """Decorator: append ``fn`` as migration ``name``.

        Raises:
            StoreError: the name is malformed, already used, or not after the last registered name.
        """
        if not _NAME.fullmatch(name):
            raise StoreError(f"migration name {name!r} must look like 0003_words")
        if self._items and name <= self._items[-1].name:
            raise StoreError(f"migration {name!r} must sort after {self._items[-1].name!r}")

        def decorator(fn: MigrationFn) -> MigrationFn:
            self._items.append(Migration(name=name, fn=fn))
            return fn

        return decorator

    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self._items)

    def __iter__(self) -> Iterator[Migration]:
        return iter(tuple(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def copy(self, *, stop_before: str | None = None) -> Migrations:
        """A new set holding these migrations, up to (not including) ``stop_before`` when given."""
        out = Migrations()
        for m in self._items:
            if m.name == stop_before:
                break
            out._items.append(m)
        return out

    async def apply(self, db: Database) -> list[str]:
        """Apply the pending migrations, each in its own transaction with its record.

        Returns:
            The names applied by this call (empty when the database was up to date).

        Raises:
            StoreError: the database records a migration we do not know (newer software), or a migration failed
                (that migration is rolled back; the ones before it stay applied).
        """
        applied = await db.write(_prepare)
        unknown = sorted(set(applied) - set(self.names()))
        if unknown:
            raise StoreError(
                f"{db.path} was written by a newer overlay-node (unknown migrations: {', '.join(unknown)}): "
                "upgrade overlay-node or use another data dir"
            )
        done: list[str] = []
        with db.journals_on_disk():  # a migration may rewrite a whole table in one statement
            for m in self._items:
                if m.name in applied:
                    continue
                try:
                    ran = await db.write(functools.partial(_apply_one, m))
                except StoreError as exc:
                    raise StoreError(f"migration {m.name} failed on {db.path}: {exc}") from exc
                if ran:
                    logger.info("applied migration %s to %s", m.name, db.path)
                    done.append(m.name)
        return done


async def applied_migrations(db: Database) -> list[AppliedMigration]:
    """The rows of ``_migrations`` in the order they were applied."""

    def query(conn: sqlite3.Connection) -> list[AppliedMigration]:
        rows = conn.execute("SELECT name, applied_at FROM _migrations ORDER BY rowid").fetchall()
        return [AppliedMigration(name=str(r["name"]), applied_at=float(r["applied_at"])) for r in rows]

    return await db.read(query)


def _prepare(conn: sqlite3.Connection) -> list[str]:
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    return [str(r["name"]) for r in conn.execute("SELECT name FROM _migrations")]


def _apply_one(m: Migration, conn: sqlite3.Connection) -> bool:
    # Re-check inside the write transaction: the list read by _prepare may be stale.
    if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (m.name,)).fetchone() is not None:
        return False
    m.fn(conn)
    conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (m.name, wall_time()))
    return True


#: the node's migrations, in order
MIGRATIONS = Migrations()


@MIGRATIONS.register("0001_meta")
def _meta(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")


@MIGRATIONS.register("0002_peers")
def _peers(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE known_peers (
            identity_key TEXT PRIMARY KEY,
            address      TEXT NOT NULL,
            first_seen   REAL,
            last_seen    REAL,
            failures     INTEGER DEFAULT 0
        )
        """
    )


@MIGRATIONS.register("0003_dht")
def _dht(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE dht_records (
            key       BLOB NOT NULL,
            publisher BLOB NOT NULL,
            value     BLOB NOT NULL,
            seq       INTEGER NOT NULL,
            expires   INTEGER NOT NULL,
            sig       BLOB NOT NULL,
            PRIMARY KEY (key, publisher)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX dht_records_expires ON dht_records (expires)")
    conn.execute(
        """
        CREATE TABLE dht_own_records (
            key       BLOB PRIMARY KEY,
            publisher BLOB NOT NULL,
            value     BLOB NOT NULL,
            seq       INTEGER NOT NULL,
            expires   INTEGER NOT NULL,
            sig       BLOB NOT NULL,
            ttl       REAL NOT NULL
        )
        """
    )


@MIGRATIONS.register("0004_wallet")
def _wallet(conn: sqlite3.Connection) -> None:
    # transactions the wallet holds outputs of, or needs as unproven ancestors to build BEEF; ``parents``
    # lists the txids its inputs spend (space separated), ``merkle_path`` is its BUMP once mined
    conn.execute(
        """
        CREATE TABLE wallet_txs (
            txid         TEXT PRIMARY KEY,
            raw          BLOB NOT NULL,
            parents      TEXT NOT NULL,
            merkle_path  BLOB,
            block_height INTEGER,
            state        TEXT NOT NULL,
            created_at   REAL NOT NULL
        )
        """
    )
    # our outputs; the private key is derived again from (protocol, key_id, counterparty)
    conn.execute(
        """
        CREATE TABLE wallet_utxos (
            txid         TEXT NOT NULL,
            vout         INTEGER NOT NULL,
            satoshis     INTEGER NOT NULL,
            script       BLOB NOT NULL,
            protocol     TEXT NOT NULL,
            key_id       TEXT NOT NULL,
            counterparty TEXT NOT NULL,
            origin       TEXT NOT NULL,
            state        TEXT NOT NULL,
            spent_by     TEXT,
            created_at   REAL NOT NULL,
            PRIMARY KEY (txid, vout)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX wallet_utxos_state ON wallet_utxos (state)")
    conn.execute("CREATE INDEX wallet_utxos_spent_by ON wallet_utxos (spent_by) WHERE spent_by IS NOT NULL")
    conn.execute(
        """
        CREATE TABLE wallet_history (
            id           INTEGER PRIMARY KEY,
            txid         TEXT NOT NULL,
            direction    TEXT NOT NULL,
            kind         TEXT NOT NULL,
            amount       INTEGER NOT NULL,
            fee          INTEGER NOT NULL,
            counterparty TEXT,
            quote_id     TEXT,
            resource     TEXT,
            status       TEXT NOT NULL,
            detail       TEXT NOT NULL DEFAULT '',
            receipt      BLOB,
            created_at   REAL NOT NULL,
            updated_at   REAL NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX wallet_history_txid ON wallet_history (txid)")
    # the settlement queue: transactions to submit to ARC and follow until mined (or failed)
    conn.execute(
        """
        CREATE TABLE settlement (
            id          INTEGER PRIMARY KEY,
            txid        TEXT NOT NULL UNIQUE,
            beef        BLOB NOT NULL,
            kind        TEXT NOT NULL,
            state       TEXT NOT NULL,
            attempts    INTEGER NOT NULL DEFAULT 0,
            next_at     REAL NOT NULL,
            deadline    REAL,
            arc_status  TEXT,
            detail      TEXT NOT NULL DEFAULT '',
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL
        )
        """
    )
    conn.execute(
        "CREATE INDEX settlement_due ON settlement (next_at) WHERE state NOT IN ('mined', 'failed', 'abandoned')"
    )
    # payments received: one per quote; the derivation prefix is unique, so a replay cannot be recorded twice
    conn.execute(
        """
        CREATE TABLE payments (
            quote_id          TEXT PRIMARY KEY,
            derivation_prefix TEXT NOT NULL UNIQUE,
            derivation_suffix TEXT NOT NULL,
            payer             TEXT NOT NULL,
            resource          TEXT NOT NULL,
            price             INTEGER NOT NULL,
            amount            INTEGER NOT NULL,
            txid              TEXT NOT NULL,
            status            TEXT NOT NULL,
            detail            TEXT NOT NULL DEFAULT '',
            receipt           BLOB NOT NULL,
            accepted_at       REAL NOT NULL,
            updated_at        REAL NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX payments_txid ON payments (txid)")
    conn.execute("CREATE INDEX payments_resource ON payments (resource)")
    # outputs spent by accepted payments: a second payment spending one of them is a double spend
    conn.execute(
        """
        CREATE TABLE payment_spends (
            txid         TEXT NOT NULL,
            vout         INTEGER NOT NULL,
            payment_txid TEXT NOT NULL,
            PRIMARY KEY (txid, vout)
        ) WITHOUT ROWID
        """
    )


@MIGRATIONS.register("0006_streams")
def _streams(conn: sqlite3.Connection) -> None:
    # paid live streams (store/streams.py): streams produced here and each subscription's accounting
    conn.execute(
        """
        CREATE TABLE streams (
            stream_id     TEXT PRIMARY KEY,
            title         TEXT NOT NULL DEFAULT '',
            tags          TEXT NOT NULL DEFAULT '[]',
            pricing_model TEXT NOT NULL,
            rate          INTEGER NOT NULL,
            max_consumers INTEGER NOT NULL,
            created_at    REAL NOT NULL,
            closed_at     REAL,
            next_seq      INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE stream_subs (
            stream_id       TEXT NOT NULL,
            peer            TEXT NOT NULL,
            role            TEXT NOT NULL CHECK (role IN ('producer', 'consumer')),
            window          INTEGER NOT NULL,
            start_seq       INTEGER NOT NULL,
            charged_through INTEGER NOT NULL,
            packets         INTEGER NOT NULL,
            paid            INTEGER NOT NULL,
            payments        INTEGER NOT NULL,
            state           TEXT NOT NULL,
            reason          TEXT NOT NULL DEFAULT '',
            updated_at      REAL NOT NULL,
            PRIMARY KEY (stream_id, peer, role)
        )
        """
    )


@MIGRATIONS.register("0007_content")
def _content(conn: sqlite3.Connection) -> None:
    # UHRP content (store/content.py): what this node holds and publishes, and where its replicas are
    conn.execute(
        """
        CREATE TABLE content (
            hash         TEXT PRIMARY KEY,
            size         INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            title        TEXT NOT NULL DEFAULT '',
            tags         TEXT NOT NULL DEFAULT '[]',
            price        INTEGER NOT NULL DEFAULT 0,
            expires      INTEGER NOT NULL DEFAULT 0,
            parents      TEXT NOT NULL DEFAULT '[]',
            relationship TEXT NOT NULL DEFAULT '',
            chunk_size   INTEGER NOT NULL,
            manifest     BLOB NOT NULL,
            producer     TEXT NOT NULL DEFAULT '',
            replication  INTEGER NOT NULL DEFAULT 0,
            pinned       INTEGER NOT NULL DEFAULT 0,
            local        INTEGER NOT NULL DEFAULT 0,
            published    INTEGER NOT NULL DEFAULT 0,
            created_at   REAL NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX content_local ON content (local)")
    conn.execute(
        """
        CREATE TABLE content_replicas (
            hash         TEXT NOT NULL,
            identity_key TEXT NOT NULL,
            state        TEXT NOT NULL,
            detail       TEXT NOT NULL DEFAULT '',
            updated_at   REAL NOT NULL,
            PRIMARY KEY (hash, identity_key)
        ) WITHOUT ROWID
        """
    )


@MIGRATIONS.register("0008_overlay")
def _overlay(conn: sqlite3.Connection) -> None:
    # the overlay engine (store/overlay.py): each admitted transaction's BEEF as it was submitted, once per txid
    conn.execute(
        """
        CREATE TABLE overlay_txs (
            txid         TEXT PRIMARY KEY,
            beef         BLOB NOT NULL,
            block_height INTEGER,
            created_at   REAL NOT NULL
        )
        """
    )
    # outputs admitted into a topic; `score` is the admission time in ms (GASP pages by it), `consumed` the
    # retained predecessors (BRC-64 outputsConsumed) and `consumed_by` the outputs that retain this one, each as
    # space-separated "txid.vout"
    conn.execute(
        """
        CREATE TABLE overlay_outputs (
            id          INTEGER PRIMARY KEY,
            topic       TEXT NOT NULL,
            txid        TEXT NOT NULL,
            vout        INTEGER NOT NULL,
            script      BLOB NOT NULL,
            satoshis    INTEGER NOT NULL,
            spent       INTEGER NOT NULL DEFAULT 0,
            score       REAL NOT NULL,
            consumed    TEXT NOT NULL DEFAULT '',
            consumed_by TEXT NOT NULL DEFAULT '',
            UNIQUE (topic, txid, vout)
        )
        """
    )
    conn.execute("CREATE INDEX overlay_outputs_outpoint ON overlay_outputs (txid, vout)")
    conn.execute("CREATE INDEX overlay_outputs_unspent ON overlay_outputs (topic, score) WHERE spent = 0")
    # transactions applied to a topic (a second submission is a duplicate)
    conn.execute(
        """
        CREATE TABLE overlay_applied (
            topic TEXT NOT NULL,
            txid  TEXT NOT NULL,
            PRIMARY KEY (topic, txid)
        ) WITHOUT ROWID
        """
    )
    # lookup services' indexes: one item per indexed output (`seq` is the admission order), and its fields
    conn.execute(
        """
        CREATE TABLE overlay_index_items (
            seq     INTEGER PRIMARY KEY,
            service TEXT NOT NULL,
            topic   TEXT NOT NULL,
            txid    TEXT NOT NULL,
            vout    INTEGER NOT NULL,
            UNIQUE (service, topic, txid, vout)
        )
        """
    )
    conn.execute("CREATE INDEX overlay_index_items_outpoint ON overlay_index_items (txid, vout)")
    conn.execute("CREATE INDEX overlay_index_items_service ON overlay_index_items (service, seq)")
    conn.execute(
        """
        CREATE TABLE overlay_index_fields (
            item  INTEGER NOT NULL REFERENCES overlay_index_items (seq) ON DELETE CASCADE,
            field TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (field, value, item)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX overlay_index_fields_item ON overlay_index_fields (item)")
    # this node's own tokens on chain (SHIP/SLAP adverts, UHRP advertisements), so that it can revoke them
    conn.execute(
        """
        CREATE TABLE overlay_own_tokens (
            txid       TEXT NOT NULL,
            vout       INTEGER NOT NULL,
            kind       TEXT NOT NULL,
            name       TEXT NOT NULL,
            topic      TEXT NOT NULL,
            script     BLOB NOT NULL,
            satoshis   INTEGER NOT NULL,
            state      TEXT NOT NULL,
            revoked_by TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (txid, vout)
        )
        """
    )
    conn.execute("CREATE INDEX overlay_own_tokens_active ON overlay_own_tokens (kind, name) WHERE state = 'active'")


@MIGRATIONS.register("0009_overlay_sync")
def _overlay_sync(conn: sqlite3.Connection) -> None:
    # GASP: the highest admission score of each peer's topic this node has synced up to (the next page starts there)
    conn.execute(
        """
        CREATE TABLE overlay_sync_state (
            peer       TEXT NOT NULL,
            topic      TEXT NOT NULL,
            since      INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (peer, topic)
        ) WITHOUT ROWID
        """
    )


@MIGRATIONS.register("0010_reports")
def _reports(conn: sqlite3.Connection) -> None:
    # what this node consumed besides stream packets (store/reports.py): one row per purchase or download, with the
    # provider it came from and its size, so that `ctl report` can say bytes per provider and per content
    conn.execute(
        """
        CREATE TABLE consumption (
            id          INTEGER PRIMARY KEY,
            resource    TEXT NOT NULL,
            provider    TEXT NOT NULL,
            packets     INTEGER NOT NULL,
            bytes       INTEGER NOT NULL,
            txid        TEXT,
            consumed_at REAL NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX consumption_at ON consumption (consumed_at)")
    # reports read payments made and received by time range
    conn.execute("CREATE INDEX wallet_history_created ON wallet_history (created_at)")
    conn.execute("CREATE INDEX payments_accepted ON payments (accepted_at)")


@MIGRATIONS.register("0011_stream_bytes")
def _stream_bytes(conn: sqlite3.Connection) -> None:
    # payload bytes of each subscription (store/streams.py): received (consumer) or sent (producer), each packet once
    conn.execute("ALTER TABLE stream_subs ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0")


@MIGRATIONS.register("0012_fewer_index_pages")
def _fewer_index_pages(conn: sqlite3.Connection) -> None:
    # Every index a row goes into is one more page a commit dirties (a WAL frame each), and a key of random values
    # (a txid) lands on a different leaf each time. A submitted BEEF's table becomes a WITHOUT ROWID table keyed by
    # txid (one b-tree instead of the table and its key's index); two indexes that only duplicated the leading
    # columns of a uniqueness rule go, the rule reordered so that it serves their queries; the wallet's index of
    # outputs by state becomes an index of the spendable ones by time. Every uniqueness rule stays. Tables are
    # rebuilt (copy, drop, rename), all in this migration's transaction. (Tables with large rows keyed by random
    # values, payments and wallet_txs, stay rowid tables: as WITHOUT ROWID tables a leaf holds a few rows, and a
    # batch of payments dirtied more pages than the table and its key's index together.)

    # a submitted BEEF, once per txid
    conn.execute(
        """
        CREATE TABLE overlay_txs_new (
            txid         TEXT PRIMARY KEY,
            beef         BLOB NOT NULL,
            block_height INTEGER,
            created_at   REAL NOT NULL
        ) WITHOUT ROWID
        """
    )
    conn.execute(
        "INSERT INTO overlay_txs_new (txid, beef, block_height, created_at) "
        "SELECT txid, beef, block_height, created_at FROM overlay_txs"
    )
    conn.execute("DROP TABLE overlay_txs")
    conn.execute("ALTER TABLE overlay_txs_new RENAME TO overlay_txs")

    # admitted outputs: the outpoint first in the uniqueness rule (lookups by txid use it: no index of their own)
    conn.execute(
        """
        CREATE TABLE overlay_outputs_new (
            id          INTEGER PRIMARY KEY,
            topic       TEXT NOT NULL,
            txid        TEXT NOT NULL,
            vout        INTEGER NOT NULL,
            script      BLOB NOT NULL,
            satoshis    INTEGER NOT NULL,
            spent       INTEGER NOT NULL DEFAULT 0,
            score       REAL NOT NULL,
            consumed    TEXT NOT NULL DEFAULT '',
            consumed_by TEXT NOT NULL DEFAULT '',
            UNIQUE (txid, vout, topic)
        )
        """
    )
    conn.execute(
        "INSERT INTO overlay_outputs_new (id, topic, txid, vout, script, satoshis, spent, score, consumed, "
        "consumed_by) SELECT id, topic, txid, vout, script, satoshis, spent, score, consumed, consumed_by "
        "FROM overlay_outputs"
    )
    conn.execute("DROP TABLE overlay_outputs")
    conn.execute("ALTER TABLE overlay_outputs_new RENAME TO overlay_outputs")
    conn.execute("CREATE INDEX overlay_outputs_unspent ON overlay_outputs (topic, score) WHERE spent = 0")

    # lookup index items, the same way; their fields reference them (ON DELETE CASCADE), so the fields are set
    # aside first (dropping the items would otherwise delete them) and put back under the same definition
    conn.execute(
        "CREATE TABLE overlay_index_fields_copy (item INTEGER NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL)"
    )
    conn.execute(
        "INSERT INTO overlay_index_fields_copy (item, field, value) SELECT item, field, value FROM overlay_index_fields"
    )
    conn.execute("DROP TABLE overlay_index_fields")
    conn.execute(
        """
        CREATE TABLE overlay_index_items_new (
            seq     INTEGER PRIMARY KEY,
            service TEXT NOT NULL,
            topic   TEXT NOT NULL,
            txid    TEXT NOT NULL,
            vout    INTEGER NOT NULL,
            UNIQUE (txid, vout, service, topic)
        )
        """
    )
    conn.execute(
        "INSERT INTO overlay_index_items_new (seq, service, topic, txid, vout) "
        "SELECT seq, service, topic, txid, vout FROM overlay_index_items"
    )
    conn.execute("DROP TABLE overlay_index_items")
    conn.execute("ALTER TABLE overlay_index_items_new RENAME TO overlay_index_items")
    conn.execute("CREATE INDEX overlay_index_items_service ON overlay_index_items (service, seq)")
    conn.execute(
        """
        CREATE TABLE overlay_index_fields (
            item  INTEGER NOT NULL REFERENCES overlay_index_items (seq) ON DELETE CASCADE,
            field TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (field, value, item)
        ) WITHOUT ROWID
        """
    )
    conn.execute(
        "INSERT INTO overlay_index_fields (item, field, value) SELECT item, field, value FROM overlay_index_fields_copy"
    )
    conn.execute("DROP TABLE overlay_index_fields_copy")
    conn.execute("CREATE INDEX overlay_index_fields_item ON overlay_index_fields (item)")

    # the wallet's spendable outputs, oldest first (coin selection): by admission time rather than by
    # (state, txid, vout), whose random keys dirtied a leaf of their own for every output recorded
    conn.execute("DROP INDEX wallet_utxos_state")
    conn.execute("CREATE INDEX wallet_utxos_spendable ON wallet_utxos (created_at) WHERE state = 'spendable'")


@MIGRATIONS.register("0013_coins_by_rowid")
def _coins_by_rowid(conn: sqlite3.Connection) -> None:
    # The wallet's coins, keyed by a txid (a random value) in a WITHOUT ROWID table, put every coin recorded on a leaf
    # of its own, and a leaf of these rows (a script, a key id, a counterparty key: about 250 bytes) holds a dozen
    # of them, so a batch of payments received dirtied more leaves than it had payments. As a rowid table, a batch's
    # coins share the table's last page, and only the outpoint's uniqueness rule (its own index: small entries, many
    # to a leaf) is keyed by the txid: 0.66 fewer log frames per payment recorded. Rebuilt as 0012 did (copy, drop,
    # rename), with both of its indexes, in this migration's transaction.
    conn.execute(
        """
        CREATE TABLE wallet_utxos_new (
            txid         TEXT NOT NULL,
            vout         INTEGER NOT NULL,
            satoshis     INTEGER NOT NULL,
            script       BLOB NOT NULL,
            protocol     TEXT NOT NULL,
            key_id       TEXT NOT NULL,
            counterparty TEXT NOT NULL,
            origin       TEXT NOT NULL,
            state        TEXT NOT NULL,
            spent_by     TEXT,
            created_at   REAL NOT NULL,
            UNIQUE (txid, vout)
        )
        """
    )
    conn.execute(
        "INSERT INTO wallet_utxos_new (txid, vout, satoshis, script, protocol, key_id, counterparty, origin, state, "
        "spent_by, created_at) SELECT txid, vout, satoshis, script, protocol, key_id, counterparty, origin, state, "
        "spent_by, created_at FROM wallet_utxos ORDER BY created_at"
    )
    conn.execute("DROP TABLE wallet_utxos")
    conn.execute("ALTER TABLE wallet_utxos_new RENAME TO wallet_utxos")
    conn.execute("CREATE INDEX wallet_utxos_spendable ON wallet_utxos (created_at) WHERE state = 'spendable'")
    conn.execute("CREATE INDEX wallet_utxos_spent_by ON wallet_utxos (spent_by) WHERE spent_by IS NOT NULL")


@MIGRATIONS.register("0014_spent_by_unindexed")
def _spent_by_unindexed(conn: sqlite3.Connection) -> None:
    # The index of coins by the transaction that spent them keyed every coin spent by a txid (a random value): a leaf
    # of its own, one log frame more, in every commit that spends a coin (each payment written ahead, a paid stream's
    # batches). It served two rare writes only, a refused payment undone and a failed transaction's coins given
    # back; they now find those coins among the outputs of the transaction's parents (``wallet_txs.parents``),
    # through the outpoint's uniqueness rule (``store.records.spent_by``).
    conn.execute("DROP INDEX IF EXISTS wallet_utxos_spent_by")


@MIGRATIONS.register("0015_payments_unindexed_by_txid")
def _payments_unindexed_by_txid(conn: sqlite3.Connection) -> None:
    # The payments received were indexed by txid (a random value): a leaf of its own, one log frame more, for every
    # payment a batch records. Only the settlement queue looked them up so, to move their status; it now reaches them
    # through their history entries, which name the quote (``direction = 'in'``, written with every payment
    # received). Entries that lack it (none should) get it first, through the index about to go.
    conn.execute(
        "UPDATE wallet_history SET quote_id = (SELECT p.quote_id FROM payments p WHERE p.txid = wallet_history.txid) "
        "WHERE direction = 'in' AND quote_id IS NULL AND txid IN (SELECT txid FROM payments)"
    )
    conn.execute("DROP INDEX IF EXISTS payments_txid")
