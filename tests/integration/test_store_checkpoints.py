"""Inline writes, checkpoints and the presized log on a real SQLite file (``store/engine.py``, invariants 8, 9 and
10): a write asked for inline runs on the event loop's thread only while the writer thread is idle and commits are
quick; checkpoints run in the writer thread once the log holds ``CHECKPOINT_PAGES`` pages, never inside a commit; a
presized log's file is written out at open and then overwritten, never grown; and a kill -9 in the middle of all
this loses no acknowledged write."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from overlay_node.config import StoreSection
from overlay_node.store import engine
from overlay_node.store.engine import CHECKPOINT_PAGES, LOG_PRESIZE_FRAMES, WRITER_THREAD, Database

CONFIG = StoreSection(busy_timeout=5.0, read_connections=2)
LIMIT = 30  # seconds per test
ROOT = Path(__file__).resolve().parents[2]


def _rows_in_main_file(path: Path, scratch: Path) -> int:
    """The rows of ``t`` in the database file alone (a copy of it without its log)."""
    copy = scratch / "main-only.db"
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    except sqlite3.OperationalError:  # not even the table
        return 0
    finally:
        conn.close()


class Where:
    """A transaction function that inserts ``x`` and notes the thread it ran in (and can be held open)."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, x: int) -> engine.TxnFn[None]:
        def txn(conn: sqlite3.Connection) -> None:
            self.threads.append(threading.current_thread().name)
            self.entered.set()
            if not self.release.wait(timeout=LIMIT):
                raise AssertionError("never released")  # pragma: no cover
            conn.execute("INSERT INTO t (x) VALUES (?)", (x,))

        return txn


def _insert(x: int, pad: bytes | None) -> engine.TxnFn[None]:
    def txn(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (?, ?)", (x, pad))

    return txn


async def _open(path: Path, *, presize_log: bool = False) -> Database:
    db = Database(path, CONFIG, presize_log=presize_log)
    await db.open()
    await db.write(lambda c: c.execute("CREATE TABLE t (x INTEGER PRIMARY KEY, pad BLOB)"))
    return db


async def test_an_inline_write_runs_on_the_event_loop_thread_only_while_the_writer_thread_is_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "INLINE_COMMIT_LIMIT", 60.0)  # no commit here counts as slow
    where = Where()
    loop_thread = threading.current_thread().name
    with trio.fail_after(LIMIT):
        db = await _open(tmp_path / "node.db")
        try:
            await db.write(where(1), durable=True, inline=True)
            assert where.threads == [loop_thread]
            assert db.inline_writes == 1
            # the writer thread busy with a write: an inline write waits for its turn there, the loop free
            where.release.clear()
            where.entered.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(db.write, where(2))
                await trio.to_thread.run_sync(where.entered.wait)
                nursery.start_soon(partial_write(db, where(3)))
                await trio.testing.wait_all_tasks_blocked()
                assert where.threads == [loop_thread, WRITER_THREAD]  # 3 waits, and the loop runs meanwhile
                where.release.set()
            assert where.threads == [loop_thread, WRITER_THREAD, WRITER_THREAD]
            assert db.inline_writes == 1
            # idle again: inline again
            await db.write(where(4), durable=True, inline=True)
            assert where.threads[-1] == loop_thread
            rows = await db.read(lambda c: [r[0] for r in c.execute("SELECT x FROM t ORDER BY x")])
            assert rows == [1, 2, 3, 4]
        finally:
            await db.aclose()


def partial_write(db: Database, fn: engine.TxnFn[None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await db.write(fn, durable=True, inline=True)

    return run


async def test_a_slow_commit_sends_the_next_inline_write_to_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = Where()
    loop_thread = threading.current_thread().name
    # the commits of the open count as quick however loaded the machine is (the first write below goes inline)
    monkeypatch.setattr(engine, "INLINE_COMMIT_LIMIT", LIMIT)
    with trio.fail_after(LIMIT):
        db = await _open(tmp_path / "node.db")
        try:
            monkeypatch.setattr(engine, "INLINE_COMMIT_LIMIT", 0.0)  # every commit is slow (a busy disk)
            await db.write(where(1), inline=True)
            monkeypatch.setattr(engine, "INLINE_COMMIT_LIMIT", LIMIT)  # every commit is quick
            await db.write(where(2), inline=True)  # to the thread: the loop is not blocked twice in a row
            await db.write(where(3), inline=True)  # that commit was quick: inline again
        finally:
            await db.aclose()
    assert where.threads == [loop_thread, WRITER_THREAD, loop_thread]


async def test_checkpoints_run_in_the_writer_thread_between_writes_never_inside_one(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    wal = tmp_path / "node.db-wal"
    pad = bytes(30_000)  # 8 to 10 pages of log a commit
    with trio.fail_after(LIMIT):
        db = await _open(path)
        try:
            # 1,200 pages of log: SQLite's own checkpoint (every 1,000 pages) would have run inside a commit
            for i in range(150):
                await db.write(_insert(i, pad), inline=i % 2 == 0)
            assert db.checkpoints == 0
            assert _rows_in_main_file(path, scratch) == 0
            assert wal.stat().st_size > 1000 * 4096
            # once the log holds CHECKPOINT_PAGES pages, the writer thread checkpoints before the next write
            # (inline or not): the log is in the file then, and starts afresh
            written = 150
            while db.checkpoints == 0:
                await db.write(_insert(written, pad), inline=True)
                written += 1
                assert written * 8 < CHECKPOINT_PAGES * 1.1
            assert written * 10 > CHECKPOINT_PAGES * 0.9
            assert _rows_in_main_file(path, scratch) == written - 1  # all but the write after the checkpoint
            size = wal.stat().st_size
            for i in range(written, 3 * written):
                await db.write(_insert(i, pad), inline=True)
            assert db.checkpoints == 2 or db.checkpoints == 3
            # reused from its start: about one checkpoint's pages, not the pages written since
            assert wal.stat().st_size < size * 1.5
        finally:
            await db.aclose()
        assert not wal.exists()  # closing still checkpoints the whole log and deletes it
        assert _rows_in_main_file(path, scratch) == 3 * written


#: a presized log's file: its header and LOG_PRESIZE_FRAMES frames of 4 KiB pages
PRESIZED = 32 + LOG_PRESIZE_FRAMES * (24 + 4096)


async def test_a_presized_log_is_written_out_at_open_then_overwritten_never_grown(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    wal = tmp_path / "node.db-wal"
    pad = bytes(30_000)  # 8 to 10 pages of log a commit
    with trio.fail_after(LIMIT):
        db = await _open(path, presize_log=True)
        try:
            # written out (blocks on disk, not a sparse file) before the first commit that needs them
            assert wal.stat().st_size == PRESIZED
            assert wal.stat().st_blocks * 512 >= PRESIZED
            written = 0
            while db.checkpoints < 2:  # the log filled twice: from a fresh start, then from its start again
                await db.write(_insert(written, pad), durable=True, inline=written % 2 == 0)
                written += 1
                assert wal.stat().st_size == PRESIZED
            assert written * 8 > CHECKPOINT_PAGES
            rows = await db.read(lambda c: [r[0] for r in c.execute("SELECT x FROM t ORDER BY x")])
            assert rows == list(range(written))
        finally:
            await db.aclose()
        assert not wal.exists()  # closing still checkpoints the whole log and deletes it
        assert _rows_in_main_file(path, scratch) == written
        # opened again: written out again, and nothing of the file's is lost
        db = Database(path, CONFIG, presize_log=True)
        await db.open()
        try:
            assert wal.stat().st_size == PRESIZED
            assert await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == written
        finally:
            await db.aclose()


#: the child: durable inline writes, each printed once its commit returned (a checkpoint every CHECKPOINT_PAGES);
#: with a second argument, its log presized (invariant 10)
_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import trio
    from overlay_node.config import StoreSection
    from overlay_node.store.engine import Database

    async def main() -> None:
        config = StoreSection(busy_timeout=5.0, read_connections=2)
        db = Database(Path(sys.argv[1]), config, presize_log=len(sys.argv) > 2)
        await db.open()
        await db.write(lambda c: c.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY, pad BLOB)"))
        i = 0
        while True:
            fn = lambda c: c.execute("INSERT INTO t (x, pad) VALUES (?, ?)", (i, bytes(12_000)))
            await db.write(fn, durable=True, inline=i % 3 != 0)
            print(i, db.checkpoints, flush=True)
            i += 1

    trio.run(main)
    """
)


async def _kill_9_after(path: Path, after: int, *extra: str) -> list[int]:
    """Run the child on ``path`` until it has acknowledged ``after`` writes, then kill -9 it; the acknowledged."""
    acknowledged: list[int] = []
    command = [sys.executable, "-c", _CHILD, str(path), *extra]
    proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        with trio.fail_after(LIMIT):
            assert proc.stdout is not None
            buffer = b""
            while len(acknowledged) < after:
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, "the writer exited"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                acknowledged += [int(line.split()[0]) for line in lines]
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return acknowledged


#: 4 pages a commit: after 1 checkpoint and some, after 2; and the same with the log presized
@pytest.mark.parametrize(("after", "presized"), [(1500, False), (2300, False), (300, True), (2300, True)])
async def test_kill_9_during_inline_writes_and_checkpoints_loses_no_acknowledged_write(
    tmp_path: Path, after: int, presized: bool
) -> None:
    path = tmp_path / "node.db"
    acknowledged = await _kill_9_after(path, after, *(["presize"] if presized else []))
    if presized:  # the log was written out past the frames the child wrote, then killed: kept as it was
        assert (tmp_path / "node.db-wal").stat().st_size == PRESIZED
        # opened again with its log presized: the frames a crash left are read back, none overwritten
        with trio.fail_after(LIMIT):
            db = Database(path, CONFIG, presize_log=True)
            await db.open()
            try:
                stored = await db.read(lambda c: {int(r[0]) for r in c.execute("SELECT x FROM t")})
            finally:
                await db.aclose()
        assert set(acknowledged) <= stored
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {int(r[0]) for r in conn.execute("SELECT x FROM t")}
    finally:
        conn.close()
    assert set(acknowledged) <= stored


async def test_a_shielded_write_once_queued_is_waited_for_through_a_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # write(shielded=True): the caller learns the outcome of a write it queued, even when it is cancelled meanwhile
    # (the cancellation comes at its next checkpoint); cancelled before, nothing is written
    monkeypatch.setattr(engine, "INLINE_COMMIT_LIMIT", 60.0)  # no commit here counts as slow
    where = Where()
    outcomes: list[object] = []
    with trio.fail_after(LIMIT):
        db = await _open(tmp_path / "node.db")
        try:

            async def shielded(x: int, scope: trio.CancelScope) -> None:
                with scope:
                    await db.write(where(x), inline=True, shielded=True)
                    outcomes.append(("written", x))
                    await trio.lowlevel.checkpoint()
                    outcomes.append("not cancelled")  # pragma: no cover - the checkpoint raises
                outcomes.append(("cancelled", scope.cancelled_caught))

            # the writer thread busy: write 2 queues behind it, and its caller is cancelled while it waits
            where.release.clear()
            where.entered.clear()
            scope = trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(db.write, where(1))
                await trio.to_thread.run_sync(where.entered.wait)
                nursery.start_soon(shielded, 2, scope)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert outcomes == []  # still waiting for its write, not withdrawn
                where.release.set()
            assert outcomes == [("written", 2), ("cancelled", True)]

            # cancelled before the call: nothing is written
            outcomes.clear()
            early = trio.CancelScope()
            early.cancel()
            await shielded(3, early)
            assert outcomes == [("cancelled", True)]
            rows = await db.read(lambda c: [r[0] for r in c.execute("SELECT x FROM t ORDER BY x")])
            assert rows == [1, 2]
        finally:
            await db.aclose()
