"""Credit-based flow control for chunked transfers over a peer link, sans-IO.

Invariants:

1. Credit is counted in chunks. The receiver grants ``window`` credits when it accepts a transfer and grants more
   only as the application consumes chunks, so at most ``window`` chunks of one transfer are ever buffered:
   ``granted + buffered + pending == window`` at all times (``pending``: consumed but not yet re-granted).
2. The sender spends one credit per chunk and may send only while it holds credit; a chunk that arrives without
   credit is ``credit_exceeded``. Credits are batched: the receiver re-grants once half a window was consumed.
3. After ``end`` or ``abort`` the sender sends nothing more for that id; a chunk, end or abort for a finished
   transfer of the peer is ``transfer_state``. Transfer ids are chosen by the sender and increase
   (:class:`PeerIdSpace`): a reused id is ``transfer_id_reused``; an id never opened is ``unknown_transfer``.
   Frames for ids that were opened and have since finished are stale, not errors (they may cross a cancel).
4. Ids of our own requests and transfers come from :class:`LocalIdSpace`; a peer frame naming an id we never
   issued is ``unknown_request`` / ``unknown_transfer``.

Violations by the peer raise :class:`~overlay_node.errors.RemoteProtocolError`; misuse by our own code raises
:class:`~overlay_node.errors.LocalProtocolError`. The link layer holds one state object per transfer and performs
what these objects decide (send a credit frame, wake a blocked sender).
"""

from __future__ import annotations

import enum
from typing import Final

from overlay_node.errors import LocalProtocolError, RemoteProtocolError
from overlay_node.wire.frames import MAX_CREDIT, MAX_ID

__all__ = [
    "IncomingTransfer",
    "LocalIdSpace",
    "OutgoingTransfer",
    "PeerIdSpace",
    "TransferState",
]

#: the most credit a sender may hold at once (a peer granting more is broken)
MAX_HELD_CREDIT: Final = MAX_CREDIT


class TransferState(enum.Enum):
    #: chunks may flow
    OPEN = "open"
    #: the sender sent ``end``; the receiver may still be consuming
    ENDED = "ended"
    #: the receiver's handler finished successfully (sender side: ack received)
    DONE = "done"
    #: the sender gave up (``abort``)
    ABORTED = "aborted"
    #: the receiver refused or failed (``cancel``)
    CANCELLED = "cancelled"


class LocalIdSpace:
    """Ids we allocate for our requests or transfers: 0, 1, 2, ..."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def allocate(self) -> int:
        value = self._next
        if value > MAX_ID:  # pragma: no cover - 2**63 ids per link
            raise LocalProtocolError("id space exhausted", reason="ids_exhausted")
        self._next = value + 1
        return value

    def issued(self, value: int) -> bool:
        """Whether we ever allocated ``value`` (a peer may only answer those)."""
        return 0 <= value < self._next


class PeerIdSpace:
    """Ids the peer allocates for its transfers: each new one must be larger than the last."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = -1

    def open(self, value: int) -> None:
        """Register a new id from the peer. Raises RemoteProtocolError ``transfer_id_reused``."""
        if value <= self._last:
            raise RemoteProtocolError(f"transfer id {value} reused", reason="transfer_id_reused")
        self._last = value

    def check_known(self, value: int) -> None:
        """Raise ``unknown_transfer`` for an id the peer never opened."""
        if value > self._last:
            raise RemoteProtocolError(f"transfer {value} was never opened", reason="unknown_transfer")


class OutgoingTransfer:
    """Sender side of one transfer: how much credit we hold and whether we may still send."""

    __slots__ = ("credit", "id", "sent", "state")

    def __init__(self, transfer_id: int) -> None:
        self.id = transfer_id
        self.credit = 0
        self.sent = 0
        self.state = TransferState.OPEN

    @property
    def can_send(self) -> bool:
        return self.state is TransferState.OPEN and self.credit > 0

    def on_credit(self, credit: int) -> None:
        """The receiver granted ``credit`` more chunks. Raises RemoteProtocolError ``credit_overflow``."""
        if self.state is not TransferState.OPEN:
            return  # a credit crossing our end/abort is harmless
        if self.credit + credit > MAX_HELD_CREDIT:
            raise RemoteProtocolError("peer granted more credit than allowed", reason="credit_overflow")
        self.credit += credit

    def spend(self) -> None:
        """Take one credit for a chunk about to be sent. Raises LocalProtocolError without credit."""
        if self.state is not TransferState.OPEN:
            raise LocalProtocolError(f"transfer {self.id} is {self.state.value}", reason="transfer_state")
        if self.credit <= 0:
            raise LocalProtocolError(f"transfer {self.id} has no credit", reason="no_credit")
        self.credit -= 1
        self.sent += 1

    def end(self) -> None:
        if self.state is not TransferState.OPEN:
            raise LocalProtocolError(f"transfer {self.id} is {self.state.value}", reason="transfer_state")
        self.state = TransferState.ENDED

    def abort(self) -> None:
        if self.state in (TransferState.OPEN, TransferState.ENDED):
            self.state = TransferState.ABORTED

    def on_ack(self) -> None:
        """The receiver finished. An ack before our ``end`` is ``transfer_state``."""
        if self.state is TransferState.ENDED:
            self.state = TransferState.DONE
        elif self.state is TransferState.OPEN:
            raise RemoteProtocolError(f"transfer {self.id} acknowledged before its end", reason="transfer_state")

    def on_cancel(self) -> None:
        if self.state in (TransferState.OPEN, TransferState.ENDED):
            self.state = TransferState.CANCELLED


class IncomingTransfer:
    """Receiver side of one transfer: credit granted, chunks buffered, and when to grant more."""

    __slots__ = ("buffered", "granted", "id", "pending", "received", "state", "window")

    def __init__(self, transfer_id: int, window: int) -> None:
        if not 1 <= window <= MAX_CREDIT:
            raise LocalProtocolError(f"transfer window must be in [1, 2**31], got {window}", reason="bad_window")
        self.id = transfer_id
        self.window = window
        self.granted = 0
        self.buffered = 0
        self.pending = window  # nothing granted yet
        self.received = 0
        self.state = TransferState.OPEN

    def initial_credit(self) -> int:
        """The credit to grant when the transfer is accepted (the whole window)."""
        credit, self.pending = self.pending, 0
        self.granted += credit
        return credit

    def on_chunk(self) -> None:
        """A chunk arrived. Raises RemoteProtocolError ``credit_exceeded`` or ``transfer_state``."""
        if self.state is not TransferState.OPEN:
            raise RemoteProtocolError(f"chunk for transfer {self.id} after its end", reason="transfer_state")
        if self.granted <= 0:
            raise RemoteProtocolError(f"chunk for transfer {self.id} without credit", reason="credit_exceeded")
        self.granted -= 1
        self.buffered += 1
        self.received += 1

    def on_end(self) -> None:
        if self.state is not TransferState.OPEN:
            raise RemoteProtocolError(f"end of transfer {self.id} after its end", reason="transfer_state")
        self.state = TransferState.ENDED

    def on_abort(self) -> None:
        if self.state not in (TransferState.OPEN, TransferState.ENDED):
            raise RemoteProtocolError(f"abort of finished transfer {self.id}", reason="transfer_state")
        self.state = TransferState.ABORTED

    def consumed(self) -> int:
        """The application took one chunk; returns the credit to grant now (0 to wait for more)."""
        if self.buffered <= 0:
            raise LocalProtocolError(f"transfer {self.id}: nothing buffered", reason="transfer_state")
        self.buffered -= 1
        self.pending += 1
        if self.state is TransferState.OPEN and self.pending >= max(1, self.window // 2):
            credit, self.pending = self.pending, 0
            self.granted += credit
            return credit
        return 0

    def finish(self, state: TransferState) -> None:
        """The receiver is done with the transfer (``DONE`` or ``CANCELLED``); further chunks are stale."""
        self.state = state
