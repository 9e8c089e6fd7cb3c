"""GroupCommit: callers waiting at once share one write, each gets its own outcome, a failure reaches them all."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from overlay_node.config import StoreSection
from overlay_node.errors import StoreError
from overlay_node.services.group_commit import GroupCommit
from overlay_node.store.engine import BatchTxn, Database


class Writer:
    """A write function that records its batches and can be held open (a slow fsync)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = trio.Event()
        self.gate.set()
        self.fail = False

    async def write(self, items: list[int]) -> list[int]:
        await self.gate.wait()
        if self.fail:
            raise StoreError("disk full")
        self.batches.append(list(items))
        return [i * 10 for i in items]


async def test_items_waiting_during_a_write_share_the_next_one() -> None:
    writer = Writer()
    written: list[tuple[int, int]] = []
    group = GroupCommit(writer.write, on_written=lambda i, o: written.append((i, o)), max_batch=3)
    results: dict[int, int] = {}

    async def submit(i: int) -> None:
        results[i] = await group.submit(i)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            writer.gate = trio.Event()  # the first write is slow
            nursery.start_soon(submit, 0)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(1, 6):
                nursery.start_soon(submit, i)
            await trio.testing.wait_all_tasks_blocked()
            writer.gate.set()
            while len(results) < 6:
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    # the five that came during the first write share two writes (at most max_batch each; trio starts tasks in
    # no fixed order, so which items go together is not fixed)
    assert [len(b) for b in writer.batches] == [1, 3, 2]
    assert writer.batches[0] == [0]
    assert sorted(i for b in writer.batches for i in b) == list(range(6))
    assert results == {i: i * 10 for i in range(6)}
    assert sorted(written) == [(i, i * 10) for i in range(6)]


async def test_a_failed_write_fails_every_caller_of_its_batch_and_the_next_goes_on() -> None:
    writer = Writer()
    group: GroupCommit[int, int] = GroupCommit(writer.write, max_batch=10)
    errors: list[str] = []

    async def submit(i: int) -> None:
        try:
            await group.submit(i)
        except StoreError as exc:
            errors.append(f"{i}: {exc}")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            writer.fail = True
            async with trio.open_nursery() as callers:
                for i in range(3):
                    callers.start_soon(submit, i)
            writer.fail = False
            assert await group.submit(7) == 70
            nursery.cancel_scope.cancel()
    assert sorted(errors) == [f"{i}: disk full" for i in range(3)]


async def test_without_its_task_an_item_is_written_alone() -> None:
    writer = Writer()
    group: GroupCommit[int, int] = GroupCommit(writer.write, max_batch=10)
    assert await group.submit(4) == 40
    writer.fail = True
    with pytest.raises(StoreError):
        await group.submit(5)
    assert writer.batches == [[4]]


async def test_submit_many_waits_for_its_items_across_batches_each_with_its_own_outcome() -> None:
    batches: list[list[int]] = []

    async def write(items: list[int]) -> list[int]:
        await trio.lowlevel.checkpoint()
        if 3 in items:
            raise StoreError("disk full")
        batches.append(list(items))
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(write, max_batch=2)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            slots = await group.submit_many([1, 2, 3, 4, 5])
            nursery.cancel_scope.cancel()
    # queued at once, written max_batch at a time, in order; the batch that failed fails only its own items
    assert batches == [[1, 2], [5]]
    assert [s.item for s in slots] == [1, 2, 3, 4, 5]
    assert [s.outcome if s.written else str(s.error) for s in slots] == [10, 20, "disk full", "disk full", 50]


async def test_before_is_written_in_the_transaction_of_the_first_item_and_fails_with_it(tmp_path: Path) -> None:
    db = Database(tmp_path / "node.db", StoreSection())
    await db.open()
    try:

        def tables(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE marks (n INTEGER)")
            conn.execute("CREATE TABLE items (i INTEGER)")

        await db.write(tables)

        def txn(conn: sqlite3.Connection, items: list[int]) -> list[int]:
            if 99 in items:
                raise StoreError("disk full")
            conn.executemany("INSERT INTO items (i) VALUES (?)", [(i,) for i in items])
            # what the items' transaction sees of the marks: the one written before it, in it
            return [int(conn.execute("SELECT count(*) FROM marks").fetchone()[0])] * len(items)

        def mark(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO marks (n) VALUES (1)")

        def broken(_conn: sqlite3.Connection) -> None:
            raise StoreError("the row could not be written")

        group = GroupCommit(BatchTxn(db, txn, urgent=True), max_batch=2)
        with trio.fail_after(5):
            written = await group.submit_many([1, 2, 3], before=mark)
            failed = await group.submit_many([99], before=mark)
            refused = await group.submit_many([4], before=broken)

        def counts(conn: sqlite3.Connection) -> tuple[int, int]:
            marks = conn.execute("SELECT count(*) FROM marks").fetchone()[0]
            return int(marks), int(conn.execute("SELECT count(*) FROM items").fetchone()[0])

        totals = await db.read(counts)
    finally:
        await db.aclose()
    # the mark went with the first batch (items 1 and 2), before them; the next batch (3) saw it committed
    assert [s.outcome for s in written] == [1, 1, 1]
    # a batch that fails takes its mark back with it; a mark that fails fails its batch, whose items are not written
    assert [str(s.error) for s in failed] == ["disk full"]
    assert [str(s.error) for s in refused] == ["the row could not be written"]
    assert totals == (1, 3)


async def test_before_needs_the_writer_threads_batches() -> None:
    group: GroupCommit[int, int] = GroupCommit(Writer().write, max_batch=10)
    with pytest.raises(TypeError, match="writer thread"):
        await group.submit_many([1], before=lambda _conn: None)


async def test_a_cancelled_caller_leaves_its_items_to_be_written_and_the_others_of_its_batch_wake() -> None:
    writer = Writer()
    writer.gate = trio.Event()  # the write is held open until the caller is cancelled
    written: list[tuple[int, int]] = []
    group = GroupCommit(writer.write, on_written=lambda i, o: written.append((i, o)), max_batch=8)
    cancelled = trio.CancelScope()
    results: list[int] = []

    async def first() -> None:
        with cancelled:
            await group.submit_many([1, 2])

    async def second() -> None:
        results.append(await group.submit(3))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            async with trio.open_nursery() as callers:
                callers.start_soon(first)
                callers.start_soon(second)
                await trio.testing.wait_all_tasks_blocked()
                cancelled.cancel()  # the first caller stops waiting while its items are being written
                await trio.testing.wait_all_tasks_blocked()
                writer.gate.set()
            nursery.cancel_scope.cancel()
    assert cancelled.cancelled_caught
    # one batch (the callers may queue in either order), written whole though its first caller left
    assert [sorted(batch) for batch in writer.batches] == [[1, 2, 3]]
    assert sorted(written) == [(1, 10), (2, 20), (3, 30)]
    assert results == [30]
