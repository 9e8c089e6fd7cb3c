"""The SQLite engine under trio: one write connection, a small pool of read connections, errors mapped once.

Theory of operation (datasette's write thread, shaped for trio): blocking SQLite calls run in worker threads
through ``trio.to_thread.run_sync``. A write borrows the single write token, a read borrows one of
``read_connections`` read tokens; each thread call runs one whole transaction and returns plain Python values.

Invariants:

1. Only one thread at a time uses the write connection: every write runs under ``limiter=self._write_limiter``
   (capacity 1).
   A write marked ``urgent`` (a payment on its way to a receipt) goes before the ordinary writes that came
   while urgent writes were waiting or running: those wait until the urgent ones are done (once, so they are
   never starved). Under a paid stream's steady flow of group commits, background work (settlement batches,
   accounting) slips in between them instead of ahead of them.
2. Every write runs inside ``BEGIN IMMEDIATE ... COMMIT``. Anything raised inside rolls back, so a write lands
   whole or not at all. ``durable=True`` switches that one commit to ``synchronous=FULL``.
3. Every read runs inside one deferred transaction on a read connection (``query_only``), so it sees one
   consistent snapshot; thanks to WAL, reads never wait for the writer.
4. A read connection is used by one thread at a time: a thread takes one from the idle pool (or opens one) and
   gives it back. The read limiter bounds how many exist.
5. ``sqlite3.Error`` never leaves this module: it becomes :class:`~overlay_node.errors.StoreError` with
   ``raise ... from exc``. Other exceptions raised by a transaction function (e.g. ``NotFound``) roll back and
   pass through unchanged.
6. :meth:`Database.read_inline` is the one exception to "every call runs in a worker thread": it runs a read on
   the event loop's own thread, on a connection of its own, for the hot paths whose reads touch a few rows by key
   (an overlay lookup, a submission's previous coins): there a thread hand-off costs ten times the query. It never
   waits for a lock (WAL readers do not wait for the writer; if SQLite still says busy, the read goes to a worker
   thread as :meth:`Database.read` would), and a function given to it must stay that small.

The functions given to :meth:`Database.write` and :meth:`Database.read` run in a worker thread: they must only
touch the connection they are given, fetch all rows before returning, and never ``COMMIT``, ``BEGIN`` or call
``executescript`` (which commits).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from overlay_node.errors import StoreError

if TYPE_CHECKING:
    from overlay_node.config import StoreSection

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: a transaction function: runs in a worker thread with the connection inside an open transaction
TxnFn = Callable[[sqlite3.Connection], T]


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _rollback(conn: sqlite3.Connection) -> None:
    """End the open transaction, if any; a failing rollback must not hide the error that caused it."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.exception("rollback failed")


class Database:
    """The connections to one SQLite file. Used by :class:`~overlay_node.store.db.Store` and its repositories.

    Construct, then ``await open()``; ``await aclose()`` when done (``open_store`` does both).

    Args:
        path: the database file; created if missing (its directory must exist).
        config: the ``[store]`` section: ``busy_timeout`` and ``read_connections``.
    """

    def __init__(self, path: Path, config: StoreSection) -> None:
        self._path = Path(path)
        self._config = config
        self._writer: sqlite3.Connection | None = None
        self._write_limiter = trio.CapacityLimiter(1)
        self._urgent = 0  # urgent writes waiting or running (invariant 1)
        self._urgent_done = trio.Event()
        self._urgent_done.set()
        self._read_limiter = trio.CapacityLimiter(config.read_connections)
        self._idle_readers: list[sqlite3.Connection] = []
        self._inline_reader: sqlite3.Connection | None = None
        self._all_readers: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._closed = False

    @property
    def path(self) -> Path:
        return self._path

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the write connection and set WAL mode.

        Raises:
            StoreError: the file cannot be opened, is not a database, or cannot use WAL.
        """
        if self._writer is not None or self._closed:
            raise StoreError(f"{self._path}: database already opened")
        self._writer = await trio.to_thread.run_sync(self._connect_writer, limiter=self._write_limiter)
        logger.debug("opened %s", self._path)

    async def aclose(self) -> None:
        """Wait for running transactions to finish, then close every connection. Idempotent.

        New calls fail with StoreError from the moment this starts. Calls already queued behind a limiter
        either run (if queued before this call) or fail with StoreError.
        """
        if self._closed:
            return
        self._closed = True
        # Hold every token of both limiters: no thread can be inside a connection while we close them.
        async with self._write_limiter:
            tokens = [object() for _ in range(self._config.read_connections)]
            for token in tokens:
                await self._read_limiter.acquire_on_behalf_of(token)
            try:
                await trio.to_thread.run_sync(self._close_all)
            finally:
                for token in tokens:
                    self._read_limiter.release_on_behalf_of(token)
        logger.debug("closed %s", self._path)

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        try:
            # isolation_level=None: the module never opens transactions by itself; we issue BEGIN explicitly.
            conn = sqlite3.connect(
                self._path, timeout=self._config.busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self._path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self._config.busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if writer:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"database {self._path} cannot use WAL mode (journal_mode is {mode})")
                conn.execute("PRAGMA synchronous = NORMAL")
            else:
                conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open database {self._path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        return self._connect(writer=True)

    def _close_all(self) -> None:
        with self._pool_lock:
            readers, self._all_readers, self._idle_readers = self._all_readers, [], []
        inline, self._inline_reader = self._inline_reader, None
        if inline is not None:
            readers.append(inline)
        for conn in readers:
            conn.close()
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.execute("PRAGMA optimize")
            except sqlite3.Error:
                logger.warning("PRAGMA optimize failed on %s", self._path, exc_info=True)
            writer.close()

    def _check_open(self) -> None:
        if self._closed or self._writer is None:
            raise StoreError(f"database {self._path} is closed")

    # -- writes -----------------------------------------------------------------------------------------------

    async def write(self, fn: TxnFn[T], *, durable: bool = False, urgent: bool = False) -> T:
        """Run ``fn(conn)`` in one write transaction (``BEGIN IMMEDIATE ... COMMIT``) and return its result.

        Internal to ``store/``: repositories call this; nothing else should.

        Args:
            fn: the transaction function (see the module docstring for its rules).
            durable: commit with ``synchronous=FULL`` (fsync the WAL before returning), for commits that precede
                a receipt or an acknowledgement.
            urgent: go before ordinary writes still waiting (invariant 1): for the writes a payment waits on.

        Cancellation:
            A write that has started in its thread runs to its end (commit or rollback) before the cancellation
            is delivered; one still waiting for the writer is simply withdrawn.

        Raises:
            StoreError: the store is closed or SQLite failed; the transaction was rolled back.
        """
        self._check_open()
        if not urgent:
            if self._urgent:
                await self._urgent_done.wait()
            return await trio.to_thread.run_sync(self._write_in_thread, fn, durable, limiter=self._write_limiter)
        if not self._urgent:
            self._urgent_done = trio.Event()
        self._urgent += 1
        try:
            return await trio.to_thread.run_sync(self._write_in_thread, fn, durable, limiter=self._write_limiter)
        finally:
            self._urgent -= 1
            if not self._urgent:
                self._urgent_done.set()

    def _write_in_thread(self, fn: TxnFn[T], durable: bool) -> T:
        conn = self._writer
        if conn is None:
            raise StoreError(f"database {self._path} is closed")
        try:
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(f"store write {_name(fn)} failed on {self._path}: {exc}") from exc
        return result

    # -- reads ------------------------------------------------------------------------------------------------

    async def read(self, fn: TxnFn[T]) -> T:
        """Run ``fn(conn)`` on a read connection, inside one read transaction, and return its result.

        Internal to ``store/``: repositories call this; nothing else should. Reads run concurrently with each
        other (up to ``read_connections``) and with the writer; they see the last committed state.

        Raises:
            StoreError: the store is closed, ``fn`` tried to write, or SQLite failed.
        """
        self._check_open()
        return await trio.to_thread.run_sync(self._read_in_thread, fn, limiter=self._read_limiter)

    def _read_in_thread(self, fn: TxnFn[T]) -> T:
        try:
            conn = self._take_reader()
            try:
                conn.execute("BEGIN")
                try:
                    result = fn(conn)
                finally:
                    _rollback(conn)  # read-only: ending the snapshot is all that is left to do
            finally:
                self._give_back(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"store read {_name(fn)} failed on {self._path}: {exc}") from exc
        return result

    async def read_inline(self, fn: TxnFn[T]) -> T:
        """:meth:`read` on the calling (event loop) thread: see invariant 6. Internal to ``store/``.

        Raises:
            StoreError: the store is closed, ``fn`` tried to write, or SQLite failed.
        """
        self._check_open()
        conn = self._inline_reader
        if conn is None:
            conn = self._inline_reader = self._connect(writer=False)
            conn.execute("PRAGMA busy_timeout = 0")  # never block the event loop: busy goes to a thread instead
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                _rollback(conn)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise StoreError(f"store read {_name(fn)} failed on {self._path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"store read {_name(fn)} failed on {self._path}: {exc}") from exc
        return await self.read(fn)

    def _take_reader(self) -> sqlite3.Connection:
        with self._pool_lock:
            if self._writer is None:
                raise StoreError(f"database {self._path} is closed")
            if self._idle_readers:
                return self._idle_readers.pop()
        conn = self._connect(writer=False)
        with self._pool_lock:
            self._all_readers.append(conn)
        return conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._pool_lock:
            self._idle_readers.append(conn)
