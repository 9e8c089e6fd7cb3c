"""The SQLite engine under trio: one write connection, a small pool of read connections, errors mapped once.

Theory of operation (datasette's write thread, shaped for trio): writes run in one persistent writer thread that
owns the write connection and takes its work from a queue; reads run in worker threads through
``trio.to_thread.run_sync``, each borrowing one of ``read_connections`` read tokens. Each unit of work runs one whole
transaction and returns plain Python values. The writer thread wakes the task waiting on a write with
``TrioToken.run_sync_soon``, and goes on to the next write at once: it never waits for a turn of the event loop.
Group commits (:meth:`Database.write_batches`) are collected by the writer thread itself: items submitted while a
batch is being written form the next batch, which the thread starts as soon as the last one is committed.

Invariants:

1. Only one thread uses the write connection at a time: the writer thread (started by the first write; it ends
   when :meth:`Database.aclose` has seen the queue drained), or the event loop's for an inline write (invariant
   8). The queue is guarded by ``self._cond``. A write marked ``urgent`` (a payment on its way to a receipt)
   goes before the ordinary writes that wait: an ordinary write lets pass the urgent writes queued when it came,
   and one more (the next group commit of a paid stream), then goes before later urgent ones, so it is never
   starved. Under a paid stream's steady flow of group commits, background work (settlement batches,
   accounting) slips in between them instead of ahead of them.
2. Every write runs inside ``BEGIN IMMEDIATE ... COMMIT``. Anything raised inside rolls back, so a write lands
   whole or not at all. ``durable=True`` commits with ``synchronous=FULL``, every other write with ``NORMAL``
   (the writer switches the level only when it changes).
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
7. A write's caller is woken only after its ``COMMIT`` returned (for a ``durable`` write: after the fsync), so
   nothing acknowledged on the strength of a write can be lost.
8. ``write(inline=True)`` is the one exception to "every write runs in the writer thread": when the writer thread
   is idle with nothing queued and no checkpoint due, and the last commit was quick (under ``INLINE_COMMIT_LIMIT``),
   the write runs on the calling (event loop) thread, on the write connection, which the writer thread leaves alone
   meanwhile (``_inline``, under ``_cond``). It is for a caller with nothing else to wait for (the overlay engine's
   lone submission): a hand-off to the writer thread and back is two thread wake-ups, which on a virtual machine
   whose idle CPU has halted cost a third of a durable commit. The event loop is blocked for the commit (its
   fsync): a slow commit (a busy disk) sends the following inline writes to the writer thread until one is quick.
9. Checkpoints (the log copied into the database file, which is then fsynced) run in the writer thread between
   writes, once the log holds ``CHECKPOINT_PAGES`` pages (a write that comes meanwhile waits for it, as it would
   for a write); none runs inside a commit, so none on the event loop's thread. After each commit the log's length
   is read from the wal-index header (``mxFrame``, in the ``-shm`` file: SQLite's documented WAL format). SQLite's
   own checkpoint inside a commit is left as a bound only, at twice that. A checkpoint's cost is mostly the fsync
   of the database pages it copies, in a stall of a few ms that the commit which triggers it used to pay whole;
   between writes, the event loop goes on meanwhile, and a group commit gathers what comes.
10. A store opened with ``presize_log`` writes the log's file out with zeros to ``LOG_PRESIZE_FRAMES`` frames
    (what it holds between two checkpoints) and fsyncs it, when the write connection opens and before any write,
    past the file's end only: the frames it holds are never touched. So the commits after a start overwrite
    blocks the file already has instead of appending (an append's fsync also commits the file's new length and
    blocks, and took half as long again as an overwrite's). SQLite reads a log's frames from its start up to the
    first one whose salt and checksum do not follow (``walIndexRecover``); a frame of zeros never does, so a
    zeroed tail is no more than the stale frames a log restarted after a checkpoint keeps anyway. SQLite never
    shortens the log (no ``journal_size_limit``) and deletes it when the last connection closes.
11. The write connection keeps its pages between commits in a cache of ``store.cache_mib`` (the readers keep
    SQLite's default: a read transaction that begins after a commit drops its connection's whole cache anyway), and
    its statement journals in memory (``temp_store = MEMORY``). A statement that may fail halfway (one with many
    rows, or a constraint to check: the multi-row statements of ``rows.py``, the settlement's batches) keeps the
    pages it changes as they were, to undo it alone; SQLite holds that journal in memory up to 64 KiB and then
    spills it to a temporary file, where every further page is a write system call and the file is created and
    deleted within the transaction. In memory it is a copy of the page. A migration may rewrite a whole table in
    one statement, so the writes inside :meth:`Database.journals_on_disk` (``migrations.py``) spill as before. The
    level is switched before a write's ``BEGIN`` (SQLite refuses it inside a transaction that holds temporary
    storage), and only when it changes.

The functions given to :meth:`Database.write`, :meth:`Database.write_batches` and :meth:`Database.read` run in
another thread: they must only touch the connection they are given, fetch all rows before returning, and never
``COMMIT``, ``BEGIN`` or call ``executescript`` (which commits).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import outcome
import trio

from overlay_node.errors import StoreError

if TYPE_CHECKING:
    from overlay_node.config import StoreSection

logger = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E")  # an entry of a group commit
R = TypeVar("R")  # what a group commit's transaction returns

#: a transaction function: runs in the writer (or a worker) thread with the connection inside an open transaction
TxnFn = Callable[[sqlite3.Connection], T]

#: the writer thread's name (in thread dumps and profiles)
WRITER_THREAD = "overlay-store-writer"
#: pages of log (4 KiB each) past which the writer thread checkpoints between writes (invariant 9)
CHECKPOINT_PAGES = 2000
#: where the wal-index header (at the start of the ``-shm`` file) keeps ``mxFrame``, the pages in the log
_MX_FRAME = struct.Struct("=I")
_MX_FRAME_OFFSET = 16
#: a commit longer than this (seconds) sends the next inline writes to the writer thread (invariant 8). Above the
#: interpreter's switch interval (5 ms): a commit's time includes taking the GIL back after SQLite let it go, which in
#: a busy process (a payee, several nodes on one loop) waits up to that interval. At 2 ms, such waits made most
#: commits look slow in a slow hour of the host, and a busy payee's records went through the writer thread (its
#: share 0.30-0.37 ms per payment, against 0.06-0.07 at 8 ms: docs/design.md, "Inline writes")
INLINE_COMMIT_LIMIT = 0.008
#: the frames the log's file is written out to at open (invariant 10): a checkpoint's worth, and a commit's more
LOG_PRESIZE_FRAMES = CHECKPOINT_PAGES + 64
#: the sizes of the log's header and of each frame's header (SQLite's WAL format)
_WAL_HEADER = 32
_FRAME_HEADER = 24


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _rollback(conn: sqlite3.Connection) -> None:
    """End the open transaction, if any; a failing rollback must not hide the error that caused it."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.exception("rollback failed")


class _Work(Protocol):
    """What the writer thread runs: a write (:class:`_Job`) or the next batch of a group commit
    (:class:`WriteBatches`)."""

    urgent: bool
    #: an ordinary write's turn: it runs once this many urgent writes have started (invariant 1)
    turn: int

    def execute(self, db: Database) -> None:
        """Run in the writer thread; never raises (the outcome goes to the waiting task)."""


@dataclass(eq=False, slots=True)
class _Job(Generic[T]):
    """One write: its function, how it commits, and the task waiting for it."""

    fn: TxnFn[T]
    durable: bool
    urgent: bool
    task: trio.lowlevel.Task
    turn: int = 0

    def execute(self, db: Database) -> None:
        result = outcome.capture(db._write_in_thread, self.fn, self.durable)
        db._release()
        db._post(trio.lowlevel.reschedule, self.task, result)


class _Checkpoint:
    """What the writer thread runs between writes once a checkpoint is due (invariant 9)."""

    urgent = False
    turn = 0

    def execute(self, db: Database) -> None:
        db._checkpoint()
        db._release()


_CHECKPOINT = _Checkpoint()


@dataclass(frozen=True, slots=True)
class BatchTxn(Generic[E, R]):
    """A repository's transaction over a batch of items, for a group commit (``services/group_commit.py``):
    ``fn(conn, items)`` runs inside one write transaction and returns one outcome per item."""

    db: Database
    fn: Callable[[sqlite3.Connection, list[E]], list[R]]
    durable: bool = False
    urgent: bool = False


@dataclass(eq=False)
class WriteBatches(Generic[E, R]):
    """A group commit run by the writer thread itself (see :meth:`Database.write_batches`)."""

    db: Database
    fn: Callable[[sqlite3.Connection, list[E]], R]
    done: Callable[[list[E], outcome.Outcome[R]], None]
    durable: bool
    urgent: bool
    max_batch: int
    turn: int = 0
    _pending: deque[E] = field(default_factory=deque)
    _scheduled: bool = False  # queued or running in the writer thread (guarded by the database's lock)

    def put(self, entries: Iterable[E]) -> None:
        """Queue ``entries`` (from the event loop's thread; never blocks): the writer thread writes them with
        whatever else is waiting, at most ``max_batch`` at a time, and calls ``done(batch, outcome)`` on the event
        loop's thread once each batch is committed (or failed: then nothing of that batch was written).

        Raises:
            StoreError: the database is closed (nothing was queued).
        """
        db = self.db
        db._check_open()
        db._start_writer()
        with db._cond:
            self._pending.extend(entries)
            if self._pending and not self._scheduled:
                self._scheduled = True
                db._enqueue(self)

    def execute(self, db: Database) -> None:
        with db._cond:
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
        fn = self.fn

        def txn(conn: sqlite3.Connection) -> R:
            return fn(conn, batch)

        txn.__qualname__ = _name(fn)
        result = outcome.capture(db._write_in_thread, txn, self.durable)
        db._release()
        db._post(self.done, batch, result)
        with db._cond:
            if self._pending:  # came while this batch was written: the next batch, without the event loop
                db._enqueue(self)
            else:
                self._scheduled = False


class Database:
    """The connections to one SQLite file. Used by :class:`~overlay_node.store.db.Store` and its repositories.

    Construct, then ``await open()``; ``await aclose()`` when done (``open_store`` does both).

    Args:
        path: the database file; created if missing (its directory must exist).
        config: the ``[store]`` section: ``busy_timeout``, ``read_connections`` and ``cache_mib``.
        presize_log: write the log's file out at open (invariant 10), for a store whose commits wait on fsync.
    """

    def __init__(self, path: Path, config: StoreSection, *, presize_log: bool = False) -> None:
        self._path = Path(path)
        self._config = config
        self._presize_log = presize_log
        self._writer: sqlite3.Connection | None = None
        self._write_limiter = trio.CapacityLimiter(1)
        # the writer thread and its queue (invariant 1), all guarded by _cond
        self._cond = threading.Condition()
        self._urgent_queue: deque[_Work] = deque()
        self._ordinary_queue: deque[_Work] = deque()
        self._urgent_started = 0  # urgent writes the writer thread has started so far
        self._stopping = False
        self._running = False  # the writer thread is running a write or a checkpoint
        self._inline = False  # the event loop's thread is running a write (invariant 8)
        self._checkpoint_due = False  # the log holds CHECKPOINT_PAGES pages (invariant 9)
        self._checkpoint_at = CHECKPOINT_PAGES  # the log's length that makes the next checkpoint due
        self._shm: int | None = None  # the -shm file, read for the log's length (by whoever holds the writer)
        self._quick = True  # the last commit took less than INLINE_COMMIT_LIMIT
        #: writes run on the event loop's thread, and checkpoints run by the writer thread, so far
        self.inline_writes = 0
        self.checkpoints = 0
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread_done = trio.Event()
        self._sync_full = False  # the write connection's synchronous level is FULL (writer thread only)
        self._temp_store = "MEMORY"  # where the writes keep their statement journals (invariant 11)
        self._temp_store_set = ""  # the write connection's temp_store (writer thread only)
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

        New calls fail with StoreError from the moment this starts. Writes already queued run first (the writer
        thread drains its queue, then ends); reads queued behind the read limiter either run (if queued before
        this call) or fail with StoreError.
        """
        if self._closed:
            return
        self._closed = True
        await self._stop_writer()
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
                conn.execute(f"PRAGMA cache_size = {-1024 * self._config.cache_mib}")  # KiB when negative
                conn.execute(f"PRAGMA wal_autocheckpoint = {2 * CHECKPOINT_PAGES}")
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
        conn = self._connect(writer=True)
        if self._presize_log:
            try:
                self._presize(int(conn.execute("PRAGMA page_size").fetchone()[0]))
            except (OSError, sqlite3.Error) as exc:  # only slower commits until the log has grown by itself
                logger.warning("store %s: cannot presize its log: %s", self._path, exc)
        return conn

    def _presize(self, page_size: int) -> None:
        """Write the log's file out with zeros past its end to ``LOG_PRESIZE_FRAMES`` frames, and fsync it (and the
        directory, when the file is new): invariant 10. Runs before the first write, by the thread that opens."""
        size = _WAL_HEADER + LOG_PRESIZE_FRAMES * (_FRAME_HEADER + page_size)
        log = f"{self._path}-wal"
        mode = stat.S_IMODE(os.stat(self._path).st_mode)  # SQLite gives its log the database's mode
        created = not os.path.exists(log)
        fd = os.open(log, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), mode)
        try:
            at = os.fstat(fd).st_size
            if at >= size:
                return
            zeros = memoryview(bytes(1 << 20))
            while at < size:
                at += os.pwrite(fd, zeros[: size - at], at)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            dir_fd = os.open(self._path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _close_all(self) -> None:
        with self._pool_lock:
            readers, self._all_readers, self._idle_readers = self._all_readers, [], []
        inline, self._inline_reader = self._inline_reader, None
        if inline is not None:
            readers.append(inline)
        for conn in readers:
            conn.close()
        shm, self._shm = self._shm, None
        if shm is not None:
            with contextlib.suppress(OSError):
                os.close(shm)
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

    async def write(
        self, fn: TxnFn[T], *, durable: bool = False, urgent: bool = False, inline: bool = False, shielded: bool = False
    ) -> T:
        """Run ``fn(conn)`` in one write transaction (``BEGIN IMMEDIATE ... COMMIT``) and return its result.

        Internal to ``store/``: repositories call this; nothing else should.

        Args:
            fn: the transaction function (see the module docstring for its rules).
            durable: commit with ``synchronous=FULL`` (fsync the WAL before returning), for commits that precede
                a receipt or an acknowledgement.
            urgent: go before ordinary writes still waiting (invariant 1): for the writes a payment waits on.
            inline: run on this (the event loop's) thread when the writer thread is idle (invariant 8): for a
                caller with nothing else to wait for.
            shielded: once the write is queued, the caller's cancellation waits for its outcome (a caller that
                must know whether it was written); before, it comes at the first checkpoint, with nothing written.
                A shielded scope around the wait, made only when the write does not run inline.

        Cancellation:
            A write that has started in the writer thread runs to its end (commit or rollback) before the
            cancellation is delivered; one still waiting in the queue is simply withdrawn (``shielded``: it is not).
            An inline write is synchronous: a cancellation comes at the caller's next checkpoint.

        Raises:
            StoreError: the store is closed or SQLite failed; the transaction was rolled back.
        """
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._start_writer()
        if inline and self._quick:
            with self._cond:
                idle = not (self._running or self._checkpoint_due or self._urgent_queue or self._ordinary_queue)
                self._inline = idle
            if idle:
                self.inline_writes += 1
                try:
                    return self._write_in_thread(fn, durable)
                finally:
                    with self._cond:
                        self._inline = False
                        if self._checkpoint_due or self._urgent_queue or self._ordinary_queue:
                            self._cond.notify()
        job = _Job(fn, durable, urgent, trio.lowlevel.current_task())
        with self._cond:
            self._enqueue(job)
        if shielded:
            with trio.CancelScope(shield=True):
                written: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
            return written

        def abort(_raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            with self._cond:
                queue = self._urgent_queue if urgent else self._ordinary_queue
                try:
                    queue.remove(job)
                except ValueError:
                    return trio.lowlevel.Abort.FAILED  # running: its outcome comes, then the cancellation
            return trio.lowlevel.Abort.SUCCEEDED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def write_batches(
        self,
        fn: Callable[[sqlite3.Connection, list[E]], R],
        done: Callable[[list[E], outcome.Outcome[R]], None],
        *,
        durable: bool = False,
        urgent: bool = False,
        max_batch: int,
    ) -> WriteBatches[E, R]:
        """A group commit the writer thread runs itself: entries put in it are written ``max_batch`` at a time by
        ``fn(conn, batch)``, each batch in one write transaction (``durable`` and ``urgent`` as :meth:`write`),
        and ``done(batch, outcome)`` is called on the event loop's thread after its commit. The entries that come
        while a batch is being written make the next batch, which the writer thread starts as soon as the commit
        returns (no turn of the event loop in between). Internal to ``store/`` and ``services/group_commit.py``.
        """
        return WriteBatches(self, fn, done, durable, urgent, max_batch)

    # -- the writer thread (runs every write, invariant 1) -----------------------------------------------------

    def _start_writer(self) -> None:
        if self._thread is not None:
            return
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._writer_loop, name=WRITER_THREAD, daemon=True)
        self._thread.start()

    def _enqueue(self, work: _Work) -> None:
        """Queue ``work`` (the caller holds ``self._cond``)."""
        if work.urgent:
            self._urgent_queue.append(work)
        else:
            # it lets pass the urgent writes queued now and one more (invariant 1)
            work.turn = self._urgent_started + len(self._urgent_queue) + 1
            self._ordinary_queue.append(work)
        self._cond.notify()

    def _next_work(self) -> _Work | None:
        """The next write (or a checkpoint that is due) to run, waiting for one; None once stopping with nothing
        left (holds ``_cond``)."""
        self._running = False
        while True:
            ordinary, urgent = self._ordinary_queue, self._urgent_queue
            if self._inline:  # the event loop's thread has the write connection (invariant 8)
                pass
            elif self._checkpoint_due:
                self._checkpoint_due = False
                self._running = True
                return _CHECKPOINT
            elif ordinary and (not urgent or self._urgent_started >= ordinary[0].turn):
                self._running = True
                return ordinary.popleft()
            elif urgent:
                self._urgent_started += 1
                self._running = True
                return urgent.popleft()
            elif self._stopping:
                return None
            self._cond.wait()

    def _writer_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    work = self._next_work()
                if work is None:
                    return
                try:
                    work.execute(self)
                except BaseException:  # a bug: the thread must go on, or every later write would wait forever
                    logger.exception("the writer thread of %s failed to run a write", self._path)
        finally:
            self._post(self._thread_done.set)

    def _release(self) -> None:
        """The writer thread is done with the write connection (before it wakes the waiting task, so that the
        task's next inline write finds it free: invariant 8)."""
        with self._cond:
            self._running = False

    def _post(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the event loop's thread (from the writer thread)."""
        assert self._token is not None
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            logger.warning("store %s: a write finished after its event loop ended", self._path)

    async def _stop_writer(self) -> None:
        """Let the writer thread run what is queued, then end it."""
        if self._thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify()
        await self._thread_done.wait()

    @contextlib.contextmanager
    def journals_on_disk(self) -> Iterator[None]:
        """The writes started inside keep their statement journals in memory only up to 64 KiB, then in temporary
        files (SQLite's default): for migrations, one statement of which may rewrite a whole table (invariant 11).
        Nothing else may write meanwhile."""
        self._temp_store = "FILE"
        try:
            yield
        finally:
            self._temp_store = "MEMORY"

    def _write_in_thread(self, fn: TxnFn[T], durable: bool) -> T:
        """One write transaction, by whoever holds the write connection: the writer thread, or the event loop's
        thread for an inline write (invariant 8)."""
        conn = self._writer
        if conn is None:
            raise StoreError(f"database {self._path} is closed")
        try:
            if durable != self._sync_full:
                # switched only when it changes: a paid stream's run of durable group commits pays no extra
                # statements (each is a GIL hand-off while the event loop is busy)
                self._sync_full = False
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._sync_full = durable
            if self._temp_store != self._temp_store_set:
                conn.execute(f"PRAGMA temp_store = {self._temp_store}")
                self._temp_store_set = self._temp_store
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            self._quick = time.perf_counter() - started < INLINE_COMMIT_LIMIT
            if self._log_pages() >= self._checkpoint_at:
                self._checkpoint_due = True  # the writer thread sees it before its next write
        except sqlite3.Error as exc:
            raise StoreError(f"store write {_name(fn)} failed on {self._path}: {exc}") from exc
        return result

    def _log_pages(self) -> int:
        """The pages in the log now (0 if the ``-shm`` file cannot be read: then SQLite's own checkpoint, inside
        a commit, is all there is)."""
        if self._shm is None:
            try:
                self._shm = os.open(f"{self._path}-shm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return 0
        try:
            head = os.pread(self._shm, _MX_FRAME.size, _MX_FRAME_OFFSET)
        except OSError:
            return 0
        return _MX_FRAME.unpack(head)[0] if len(head) == _MX_FRAME.size else 0

    def _checkpoint(self) -> None:
        """Copy the log into the database file (in the writer thread, between writes: invariant 9); the next
        write then starts the log afresh. One that could not copy it all (a read still needs part of it) is tried
        again a quarter of the way on. A failure is logged: SQLite's own checkpoint remains."""
        conn = self._writer
        if conn is None:
            return
        try:
            busy, logged, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        except sqlite3.Error:
            logger.warning("store %s: checkpoint failed", self._path, exc_info=True)
            busy, logged, copied = 1, self._log_pages(), 0
        done = not busy and logged == copied
        self._checkpoint_at = CHECKPOINT_PAGES if done else logged + CHECKPOINT_PAGES // 4
        self.checkpoints += 1

    # -- reads ------------------------------------------------------------------------------------------------

    async def read(self, fn: TxnFn[T], *, inline: bool = False) -> T:
        """Run ``fn(conn)`` on a read connection, inside one read transaction, and return its result.

        Internal to ``store/``: repositories call this; nothing else should. Reads run concurrently with each
        other (up to ``read_connections``) and with the writer; they see the last committed state. ``inline``:
        :meth:`read_inline` (a read that touches a few rows by key, invariant 6).

        Raises:
            StoreError: the store is closed, ``fn`` tried to write, or SQLite failed.
        """
        if inline:
            return await self.read_inline(fn)
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
