"""GroupCommit on a busy event loop: a caller of ``submit_many`` wakes one turn of the loop after its batch is written,
not one turn per item (each turn of a busy payee is another message's checks)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
import trio.lowlevel
import trio.testing

from overlay_node.config import StoreSection
from overlay_node.services.group_commit import GroupCommit
from overlay_node.store.engine import BatchTxn, Database

ITEMS = 16


class Turns:
    """Counts turns of the event loop: a task that only passes a checkpoint, over and over."""

    def __init__(self) -> None:
        self.count = 0

    async def run(self) -> None:
        while True:
            self.count += 1
            await trio.lowlevel.checkpoint()


async def test_a_batch_of_items_wakes_its_caller_in_one_turn_not_one_per_item() -> None:
    turns = Turns()
    written_at: list[int] = []

    async def write(items: list[int]) -> list[int]:
        await trio.lowlevel.checkpoint()
        return [i * 10 for i in items]

    group = GroupCommit(write, on_written=lambda _i, _o: written_at.append(turns.count), max_batch=64)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            nursery.start_soon(turns.run)
            slots = await group.submit_many(list(range(ITEMS)))
            woke = turns.count
            nursery.cancel_scope.cancel()
    assert [s.outcome for s in slots] == [i * 10 for i in range(ITEMS)]
    assert len(written_at) == ITEMS
    # one turn for the writer task to set the events, one for this task to run (it waited once, not 16 times)
    assert woke - written_at[-1] <= 3, f"{woke - written_at[-1]} turns of the loop after the write"


async def test_the_writer_threads_batches_wake_their_caller_in_one_turn(tmp_path: Path) -> None:
    turns = Turns()
    db = Database(tmp_path / "node.db", StoreSection())
    await db.open()
    try:

        def txn(_conn: sqlite3.Connection, items: list[int]) -> list[int]:
            return [i * 10 for i in items]

        written_at: list[int] = []
        group = GroupCommit(
            BatchTxn(db, txn, urgent=True),
            on_written=lambda _i, _o: written_at.append(turns.count),
            max_batch=64,
        )
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(group.run)
                nursery.start_soon(turns.run)
                slots = await group.submit_many(list(range(ITEMS)))
                woke = turns.count
                nursery.cancel_scope.cancel()
    finally:
        await db.aclose()
    assert [s.outcome for s in slots] == [i * 10 for i in range(ITEMS)]
    assert woke - written_at[-1] <= 3, f"{woke - written_at[-1]} turns of the loop after the write"
