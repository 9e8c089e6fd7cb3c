"""The store's writer thread on a real SQLite file: group commits it runs from one batch to the next by itself,
urgent writes before ordinary ones without starving them, cancellation, and callers woken only after the commit."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from overlay_node.config import StoreSection
from overlay_node.errors import StoreError
from overlay_node.services.group_commit import GroupCommit
from overlay_node.store import open_store
from overlay_node.store.db import Store
from overlay_node.store.engine import WRITER_THREAD, BatchTxn

CONFIG = StoreSection(busy_timeout=5.0, read_connections=4)
LIMIT = 10  # seconds per test


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "node.db"


class Held:
    """A batch transaction that writes its items into table ``t`` (an item 0 is a bug: it raises) and can hold its
    first batch open (a slow fsync), noting every batch, in ``order`` too, and the thread it ran in."""

    def __init__(self, order: list[str] | None = None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.second = threading.Event()
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.order = order if order is not None else []

    def __call__(self, conn: sqlite3.Connection, items: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        if 0 in items:
            raise ValueError("a bug in the transaction function")
        conn.executemany("INSERT INTO t (x) VALUES (?)", [(i,) for i in items])
        self.batches.append(list(items))
        self.order.append(f"batch {items}")
        if len(self.batches) == 1:
            self.entered.set()
            if not self.release.wait(timeout=LIMIT):
                raise AssertionError("never released")  # pragma: no cover
        elif len(self.batches) == 2:
            self.second.set()
        return [i * 10 for i in items]


async def _table(store: Store) -> None:
    await store._write(lambda c: c.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)"))


def _committed(path: Path, x: int) -> bool:
    """Whether a connection of our own sees row ``x`` (it sees committed rows only)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT 1 FROM t WHERE x = ?", (x,)).fetchone() is not None
    finally:
        conn.close()


async def test_the_writer_thread_starts_the_next_group_commit_without_the_event_loop(db_path: Path) -> None:
    held = Held()
    seen_committed: list[bool] = []
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store, trio.open_nursery() as nursery:
            await _table(store)
            group = GroupCommit(
                BatchTxn(store._db, held, durable=True, urgent=True),
                # a receipt goes out only after its commit: what on_written sees is in the database already
                on_written=lambda i, _o: seen_committed.append(_committed(db_path, i)),
                max_batch=10,
            )
            await nursery.start(group.run)
            results: dict[int, int] = {}

            async def submit(i: int) -> None:
                results[i] = await group.submit(i)

            nursery.start_soon(submit, 1)
            await trio.to_thread.run_sync(held.entered.wait)  # the first batch is being written
            nursery.start_soon(submit, 2)
            nursery.start_soon(submit, 3)
            await trio.testing.wait_all_tasks_blocked()  # 2 and 3 wait for the next batch
            held.release.set()
            # the event loop stays blocked here: only the writer thread itself can start the next batch
            assert held.second.wait(timeout=LIMIT), "the next batch waited for the event loop"
            while len(results) < 3:
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert held.batches[0] == [1]
    assert sorted(held.batches[1]) == [2, 3]
    assert results == {1: 10, 2: 20, 3: 30}
    assert seen_committed == [True, True, True]
    assert held.threads == {WRITER_THREAD}


async def test_an_ordinary_write_lets_one_more_urgent_write_pass_at_most(db_path: Path) -> None:
    # under a paid stream's steady flow of urgent group commits, a background write slips in between them
    order: list[str] = []
    held = Held(order)

    def note(name: str) -> Callable[[sqlite3.Connection], None]:
        return lambda _conn: order.append(name)

    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store, trio.open_nursery() as nursery:
            await _table(store)
            group = GroupCommit(BatchTxn(store._db, held, durable=True, urgent=True), max_batch=1)
            nursery.start_soon(group.submit, 1)
            await trio.to_thread.run_sync(held.entered.wait)  # a payment's group commit is being written
            nursery.start_soon(store._write, note("ordinary"))  # e.g. a settlement batch
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(partial(store._write, note("urgent"), urgent=True))  # e.g. a payment written ahead
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(group.submit, 2)  # the next payments, and more after them
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(group.submit, 3)
            await trio.testing.wait_all_tasks_blocked()
            held.release.set()
    # first come, first served would put it second; waiting until no urgent write is left, last (and under a
    # steady flow, never)
    assert order == ["batch [1]", "urgent", "ordinary", "batch [2]", "batch [3]"]


async def test_cancelled_writes_are_withdrawn_while_queued_and_finish_once_started(db_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def blocking(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (x) VALUES (1)")
        entered.set()
        if not release.wait(timeout=LIMIT):
            raise AssertionError("never released")  # pragma: no cover
        return "written"

    outcomes: dict[str, str] = {}

    async def write(
        store: Store, name: str, fn: Callable[[sqlite3.Connection], object], scope: trio.CancelScope
    ) -> None:
        with scope:
            outcomes[name] = str(await store._write(fn))
            await trio.lowlevel.checkpoint()  # a cancellation that came while it ran is delivered here
        if scope.cancelled_caught:
            outcomes[name] = outcomes.get(name, "never ran") + ", cancelled"

    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            await _table(store)
            running, queued = trio.CancelScope(), trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write, store, "running", blocking, running)
                await trio.to_thread.run_sync(entered.wait)
                insert = lambda c: c.execute("INSERT INTO t (x) VALUES (2)")  # noqa: E731
                nursery.start_soon(write, store, "queued", insert, queued)
                await trio.testing.wait_all_tasks_blocked()
                queued.cancel()
                running.cancel()
                await trio.testing.wait_all_tasks_blocked()
                release.set()
            rows = await store._read(lambda c: [r[0] for r in c.execute("SELECT x FROM t")])
            # the writer goes on after both
            assert await store._write(lambda c: c.execute("INSERT INTO t (x) VALUES (3)").rowcount) == 1
    assert outcomes == {"running": "written, cancelled", "queued": "never ran, cancelled"}
    assert rows == [1]


async def test_a_failing_batch_fails_its_callers_and_the_writer_goes_on(db_path: Path) -> None:
    held = Held()
    held.release.set()
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            await _table(store)
            group = GroupCommit(BatchTxn(store._db, held), max_batch=10)
            with pytest.raises(StoreError, match="batch write failed"):
                await group.submit(0)  # a bug in the transaction function: rolled back, reported as StoreError
            assert await group.submit(5) == 50
            assert await store._read(lambda c: [r[0] for r in c.execute("SELECT x FROM t")]) == [5]


async def test_close_runs_the_writes_already_queued_and_refuses_later_ones(db_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def blocking(_conn: sqlite3.Connection) -> None:
        entered.set()
        if not release.wait(timeout=LIMIT):
            raise AssertionError("never released")  # pragma: no cover

    done: list[int] = []
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            async with open_store(db_path, CONFIG) as store:
                await _table(store)
                held = Held()
                held.release.set()
                group = GroupCommit(BatchTxn(store._db, held, urgent=True), max_batch=10)
                nursery.start_soon(store._write, blocking)
                await trio.to_thread.run_sync(entered.wait)

                async def submit(i: int) -> None:
                    done.append(await group.submit(i))

                nursery.start_soon(submit, 7)
                await trio.testing.wait_all_tasks_blocked()
                release.set()
            # closed: the batch queued before the close was written; a new one is refused
            with pytest.raises(StoreError, match="closed"):
                await group.submit(8)
    assert done == [70]
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT x FROM t").fetchall() == [(7,)]
    conn.close()
