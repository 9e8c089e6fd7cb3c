"""Group commit: many callers each wait for their own item to be written, one task writes all the items waiting
in one database transaction (one fsync for many payments).

Theory of operation: :meth:`GroupCommit.submit` queues an item and waits; :meth:`GroupCommit.run` takes every
item waiting (up to ``max_batch``), calls ``write(items)`` once, which returns one outcome per item, calls
``on_written(item, outcome)`` for each (still in the writer task, shielded, so memory follows the database even
when a caller was cancelled meanwhile), then wakes the callers. When the write raises an
:class:`~overlay_node.errors.OverlayError` (e.g. ``StoreError``), every caller of that batch gets it. Before
:meth:`run` starts, or after it stopped, :meth:`submit` writes its item alone.

Given a repository's :class:`~overlay_node.store.engine.BatchTxn` instead of a ``write`` function, the batching
happens in the store's writer thread itself (``Database.write_batches``): items submitted while a batch is being
committed make the next batch, which the writer thread starts the moment the commit returns, without waiting for
the event loop to run this task; ``on_written`` and the callers' wake-ups then come on the event loop's thread
(``TrioToken.run_sync_soon``) after the commit, in batch order. :meth:`run` has nothing to do then, and
:meth:`submit` never writes an item alone. In that mode :meth:`submit_many` may also take ``before``, a transaction
function of the caller's that runs first in the transaction of the batch its first item goes in (a paid stream's
consumer writes its subscription's row so, in the one transaction of its payments' write-ahead).

Used by the payee (payments recorded before their receipts, batched by :meth:`run`) and the payer (payments
written ahead before they are sent, batched by the writer thread): both sit on a paid stream's critical path,
where one write per payment would cap the stream at the rate of the writer's round trips. The writer thread's
batching saves the payer a turn of its event loop before each write-ahead; the payee keeps its task because a
busy payee's loop turn lets many payments gather, and each commit has a fixed cost (measured with 32 payers at
once: batches a quarter of the size, payments per core a quarter lower, when the writer thread batched them).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import outcome
import trio

from overlay_node.errors import OverlayError, StoreError
from overlay_node.store.engine import BatchTxn, TxnFn, WriteBatches

__all__ = ["GroupCommit", "Slot"]

logger = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741 - the item type
O = TypeVar("O")  # noqa: E741 - the outcome type


@dataclass(slots=True)
class _Waiter:
    """The task of a :meth:`GroupCommit.submit_many` call waiting for its slots, and how many are not done yet (the
    task is woken once, when the last one is; None once it stopped waiting)."""

    task: trio.lowlevel.Task | None
    left: int


@dataclass(slots=True)
class Slot(Generic[I, O]):
    """One item submitted: ``written`` with its ``outcome``, or the ``error`` its batch failed with; ``done`` once
    either is known."""

    item: I
    outcome: O | None = None
    written: bool = False
    error: OverlayError | None = None
    #: run first in the transaction that writes this item (``submit_many``'s ``before``, on the first item)
    before: TxnFn[None] | None = None
    done: bool = False
    waiter: _Waiter | None = None

    def finish(self) -> None:
        """Mark the slot done, and wake its caller if it was the last one it waited for (on the event loop)."""
        self.done = True
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.left -= 1
            if waiter.left == 0 and waiter.task is not None:
                trio.lowlevel.reschedule(waiter.task)
                waiter.task = None


def _with_before(txn: BatchTxn[I, O]) -> BatchTxn[Slot[I, O], O]:
    """``txn`` over slots: the ``before`` functions of the batch's slots run first, in the same transaction."""
    fn = txn.fn

    def batch(conn: Any, slots: list[Slot[I, O]]) -> list[O]:
        for slot in slots:
            if slot.before is not None:
                slot.before(conn)
        return fn(conn, [slot.item for slot in slots])

    batch.__qualname__ = getattr(fn, "__qualname__", batch.__qualname__)
    return BatchTxn(txn.db, batch, txn.durable, txn.urgent)


async def _wait_all(slots: Sequence[Slot[I, O]]) -> None:
    """Wait until every slot is done: the task sleeps once, and the last of its slots to be done wakes it (an event
    per slot cost a payee two objects per payment, and a wait per slot a turn each). Slots done already are not
    waited for: on a busy payee one turn per slot kept a batch of 16 payments waiting 16 turns (each another
    message's checks) after its commit. Cancellation leaves the slots to be written (see ``submit_many``)."""
    pending = [slot for slot in slots if not slot.done]
    if not pending:
        return
    waiter = _Waiter(trio.lowlevel.current_task(), len(pending))
    for slot in pending:
        slot.waiter = waiter

    def abort(_raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        waiter.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)


class GroupCommit(Generic[I, O]):
    """Write items many at a time (see the module docstring).

    Args:
        write: writes a batch in one transaction and returns the outcomes in order; or a repository's batch
            transaction, run by the store's writer thread (see the module docstring).
        on_written: called for each item with its outcome once the batch is written (synchronous).
        max_batch: the most items in one write.
    """

    def __init__(
        self,
        write: Callable[[list[I]], Awaitable[Sequence[O]]] | BatchTxn[I, O],
        *,
        on_written: Callable[[I, O], None] | None = None,
        max_batch: int,
    ) -> None:
        self._on_written = on_written
        self._max_batch = max_batch
        self._send, self._recv = trio.open_memory_channel[Slot[I, O]](4 * max_batch)
        self._running = False
        self._batches: WriteBatches[Slot[I, O], list[O]] | None = None
        if isinstance(write, BatchTxn):
            txn = _with_before(write)
            self._batches = txn.db.write_batches(
                txn.fn, self._written, durable=txn.durable, urgent=txn.urgent, max_batch=max_batch
            )
        else:
            self._write = write

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled (in the writer thread's mode: only wait until cancelled)."""
        if self._batches is not None:
            task_status.started()
            await trio.sleep_forever()
        self._running = True
        try:
            task_status.started()
            while True:
                # items that came during the last write go at once: waiting for a turn of a busy event loop
                # first would leave the writer idle while they wait
                try:
                    first = self._recv.receive_nowait()
                except trio.WouldBlock:
                    first = await self._recv.receive()
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._write_batch(batch)
        finally:
            self._running = False

    async def submit(self, item: I) -> O:
        """Write ``item`` (with whatever else is waiting) and return its outcome.

        Cancellation: once queued, the item is written even if the caller is cancelled.

        Raises:
            OverlayError: the write failed (nothing of the batch was written).
        """
        (slot,) = await self.submit_many([item])
        if slot.error is not None:
            raise slot.error
        assert slot.written
        return slot.outcome  # type: ignore[return-value]  # O itself may include None

    async def submit_many(self, items: Sequence[I], *, before: TxnFn[None] | None = None) -> list[Slot[I, O]]:
        """Write ``items`` (in order, with whatever else is waiting; a batch may split them) and return their
        slots once all are written or failed: each has its outcome, or the error of the write it was in.
        ``before`` (the writer thread's mode only): a transaction function run first in the transaction that writes
        the first item, so that what it writes is committed no later than any of ``items``; if it raises, that
        transaction's items all fail with the error.

        Cancellation: once queued, the items are written even if the caller is cancelled.
        """
        slots: list[Slot[I, O]] = [Slot(item) for item in items]
        if before is not None:
            if self._batches is None:
                raise TypeError("'before' needs a group commit batched by the store's writer thread")
            if slots:
                slots[0].before = before
        if self._batches is not None:
            try:
                self._batches.put(slots)
            except StoreError as exc:  # the store is closed
                for slot in slots:
                    slot.error = exc
                return slots
            await _wait_all(slots)
            return slots
        if not self._running:
            await self._write_batch(slots)
            return slots
        for slot in slots:
            try:
                self._send.send_nowait(slot)  # the writer is woken by the first; no yield per item
            except trio.WouldBlock:
                await self._send.send(slot)
        await _wait_all(slots)
        return slots

    async def _write_batch(self, batch: list[Slot[I, O]]) -> None:
        try:
            with trio.CancelScope(shield=True):
                outcomes = await self._write([s.item for s in batch])
                for slot, outcome in zip(batch, outcomes, strict=True):
                    slot.outcome, slot.written = outcome, True
                    if self._on_written is not None:
                        self._on_written(slot.item, outcome)
        except OverlayError as exc:
            for slot in batch:
                slot.error = exc
        for slot in batch:
            slot.finish()

    def _written(self, batch: list[Slot[I, O]], result: outcome.Outcome[list[O]]) -> None:
        """A batch the writer thread committed (or failed), on the event loop's thread: set the outcomes, call
        ``on_written``, wake the callers. Runs as a ``run_sync_soon`` callback, so it must not raise."""
        if isinstance(result, outcome.Value) and len(result.value) != len(batch):  # a bug in the transaction
            result = outcome.Error(RuntimeError(f"{len(result.value)} outcomes for {len(batch)} items"))
        if isinstance(result, outcome.Value):
            for slot, out in zip(batch, result.value, strict=True):
                slot.outcome, slot.written = out, True
                if self._on_written is not None:
                    try:
                        self._on_written(slot.item, out)
                    except Exception:  # a bug; the item is written all the same and its caller must wake
                        logger.exception("group commit: on_written failed for %r", slot.item)
        else:
            assert isinstance(result, outcome.Error)
            error = result.error
            if not isinstance(error, OverlayError):  # a bug in the transaction function: it was rolled back
                logger.error("group commit: the batch write failed", exc_info=error)
                error = StoreError(f"the batch write failed: {error!r}")
            for slot in batch:
                slot.error = error
        for slot in batch:
            slot.finish()
