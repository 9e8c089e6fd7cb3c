"""The :class:`Store` (the typed repositories over one SQLite file) and :func:`open_store`, its lifecycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from overlay_node.store.content import ContentRepository
from overlay_node.store.dht import DhtRepository
from overlay_node.store.engine import Database, TxnFn
from overlay_node.store.meta import MetaRepository
from overlay_node.store.migrations import MIGRATIONS, AppliedMigration, Migrations, applied_migrations
from overlay_node.store.overlay import OverlayRepository, OwnTokensRepository
from overlay_node.store.payments import PaymentsRepository
from overlay_node.store.peers import PeersRepository
from overlay_node.store.settlement import SettlementRepository
from overlay_node.store.streams import StreamsRepository
from overlay_node.store.wallet import WalletRepository

if TYPE_CHECKING:
    from overlay_node.config import StoreSection

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Store:
    """The node's database, as typed repositories: ``store.meta``, ``store.peers`` (more come with later features).

    Get one from :func:`open_store`; every method is async and raises
    :class:`~overlay_node.errors.StoreError` when SQLite fails.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self.meta = MetaRepository(db)
        self.peers = PeersRepository(db)
        self.dht = DhtRepository(db)
        self.content = ContentRepository(db)
        self.wallet = WalletRepository(db)
        self.settlement = SettlementRepository(db)
        self.payments = PaymentsRepository(db)
        self.streams = StreamsRepository(db)
        self.overlay = OverlayRepository(db)
        self.own_tokens = OwnTokensRepository(db)

    @property
    def path(self) -> Path:
        return self._db.path

    async def applied_migrations(self) -> list[AppliedMigration]:
        """The migrations recorded in the database, in the order they were applied."""
        return await applied_migrations(self._db)

    async def _write(self, fn: TxnFn[T], *, durable: bool = False, urgent: bool = False) -> T:
        """Internal to ``store/`` (and its tests): run ``fn`` in one write transaction; see ``Database.write``."""
        return await self._db.write(fn, durable=durable, urgent=urgent)

    async def _read(self, fn: TxnFn[T]) -> T:
        """Internal to ``store/`` (and its tests): run ``fn`` in one read transaction; see ``Database.read``."""
        return await self._db.read(fn)


@asynccontextmanager
async def open_store(path: Path, config: StoreSection, *, migrations: Migrations = MIGRATIONS) -> AsyncIterator[Store]:
    """Open (creating if needed) the database at ``path``, migrate it, and close it when the block exits.

    Args:
        path: the SQLite file (normally ``DataDir.db_path``); its directory must exist.
        config: the ``[store]`` config section.
        migrations: the schema steps to apply; tests pass a subset or an extended copy of the default.

    Resource handling:
        On exit, running transactions finish, then every connection is closed. The close is shielded from
        cancellation but bounded by ``config.busy_timeout``.

    Raises:
        StoreError: the file cannot be opened or is not a database, a migration failed, or the database was
            migrated by newer software.
    """
    db = Database(path, config)
    await db.open()
    try:
        done = await migrations.apply(db)
        logger.info("store %s open (%d migrations applied now)", path, len(done))
        yield Store(db)
    finally:
        with trio.move_on_after(config.busy_timeout, shield=True) as scope:
            await db.aclose()
        if scope.cancelled_caught:
            logger.error("store %s did not close within %.1fs", path, config.busy_timeout)
