"""The :class:`Store` (the typed repositories over one SQLite file) and :func:`open_store`, its lifecycle.

A database is created whole or not at all: a new one is made and migrated under a temporary name, fsynced, and
only then linked into place (and the directory fsynced). So a database file that exists but is empty, or does not
start with SQLite's header, can only be damage, and :func:`open_store` refuses it rather than take it for a new,
empty database (which would show an empty wallet and content list over the blobs still on disk). Database files
are private to the node's user (mode 0600; SQLite gives its ``-wal`` and ``-shm`` files the database's mode).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from overlay_node.errors import StoreError
from overlay_node.store.content import ContentRepository
from overlay_node.store.dht import DhtRepository
from overlay_node.store.engine import Database, TxnFn
from overlay_node.store.meta import MetaRepository
from overlay_node.store.migrations import MIGRATIONS, AppliedMigration, Migrations, applied_migrations
from overlay_node.store.overlay import OverlayRepository, OwnTokensRepository
from overlay_node.store.payments import PaymentsRepository
from overlay_node.store.peers import PeersRepository
from overlay_node.store.reports import ReportsRepository
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
        self.reports = ReportsRepository(db)

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
async def open_store(
    path: Path, config: StoreSection, *, migrations: Migrations = MIGRATIONS, presize_log: bool = False
) -> AsyncIterator[Store]:
    """Open (creating if needed) the database at ``path``, migrate it, and close it when the block exits.

    Args:
        path: the SQLite file (normally ``DataDir.db_path``); its directory must exist.
        config: the ``[store]`` config section.
        migrations: the schema steps to apply; tests pass a subset or an extended copy of the default.
        presize_log: write the log's file out at open (``store/engine.py``, invariant 10): the node's own store,
            whose durable commits an acknowledgment waits on.

    Resource handling:
        On exit, running transactions finish, then every connection is closed. The close is shielded from
        cancellation but bounded by ``config.busy_timeout``.

    A missing database is created atomically (see the module docstring); an existing one that is empty or not an
    SQLite database is refused.

    Raises:
        StoreError: the file is damaged (empty, not an SQLite database, or missing beside its write-ahead log),
            cannot be opened or created, a migration failed, or the database was migrated by newer software.
    """
    if not _existing_database(path):
        await _create_database(path, config, migrations)
        _existing_database(path)  # ours, or one another process put there meanwhile: checked all the same
    db = Database(path, config, presize_log=presize_log)
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


#: the first 16 bytes of every SQLite database file
_SQLITE_HEADER = b"SQLite format 3\x00"
#: the mode of database files: the node's user only
_DB_MODE = 0o600
#: the suffix of a database being created (``.<name>.<random>.new``; removed if creation fails or is abandoned)
_NEW_SUFFIX = ".new"


def _damaged(path: Path, what: str) -> StoreError:
    return StoreError(
        f"database {path} {what}: it is damaged; restore it from a backup, or move it aside to start afresh "
        f"with an empty one (mv {path} {path}.damaged)"
    )


def _existing_database(path: Path) -> bool:
    """Whether the database at ``path`` exists (and looks like one); False when there is none yet.

    Also makes an existing database (and its ``-wal``/``-shm``) private, for files made by older versions.

    Raises:
        StoreError: ``path`` is there but empty, not a regular file, or not an SQLite database; or it is missing
            while its write-ahead log is there.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise _damaged(path, f"is missing but its write-ahead log {wal.name} is there") from None
        return False
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _damaged(path, "is not a regular file")
        head = os.pread(fd, len(_SQLITE_HEADER), 0)
    except OSError as exc:
        raise StoreError(f"cannot read database {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if not head:
        raise _damaged(path, "is empty")
    if head != _SQLITE_HEADER:
        raise _damaged(path, "is not a database (no SQLite header)")
    if stat.S_IMODE(st.st_mode) & 0o077:
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(file, _DB_MODE)
    return True


async def _create_database(path: Path, config: StoreSection, migrations: Migrations) -> None:
    """Create and migrate a new database at a temporary name next to ``path``, then put it in place.

    Closing the last connection checkpoints the write-ahead log into the file and deletes the log, so the one
    file holds the whole schema; it is fsynced, linked to ``path`` (never replacing a file that appeared
    meanwhile) and the directory fsynced. A crash at any point leaves either no database or the whole new one.

    Raises:
        StoreError: the file cannot be created or migrated.
    """
    for stale in path.parent.glob(f".{path.name}.*{_NEW_SUFFIX}*"):  # from a creation a crash interrupted
        with contextlib.suppress(OSError):
            stale.unlink()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_NEW_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _DB_MODE)
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: cannot create it ({exc.strerror or exc})") from exc
    os.close(fd)
    try:
        db = Database(tmp, config)
        await db.open()
        try:
            await migrations.apply(db)
        finally:
            with trio.move_on_after(config.busy_timeout, shield=True):
                await db.aclose()
        await trio.to_thread.run_sync(_install, tmp, path)
    finally:
        for file in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            with contextlib.suppress(OSError):
                file.unlink()
    logger.info("created database %s", path)


def _install(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, link it to ``path`` unless that exists by now, fsync the directory."""
    try:
        if tmp.with_name(tmp.name + "-wal").exists():
            raise StoreError(f"cannot create database {path}: its write-ahead log was not checkpointed")
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # made meanwhile by someone else: theirs is checked on open
            os.link(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StoreError(f"cannot create database {path}: {exc.strerror or exc}") from exc
