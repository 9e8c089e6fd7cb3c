"""The two ends of a chunked transfer over a peer link: :class:`TransferSender` and :class:`TransferReceiver`.

The credit rules live in :mod:`overlay_node.protocol.transfer`; these classes add the waiting: a sender blocks
while it holds no credit, a receiver hands chunks to the application through a channel that credit keeps bounded.
Both are driven by their :class:`~overlay_node.net.link.PeerLink`: its reader calls the ``_on_*`` methods, which
never block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import trio

from overlay_node.errors import ConnectionLost, LocalProtocolError, OverlayError
from overlay_node.protocol.transfer import IncomingTransfer, OutgoingTransfer, TransferState
from overlay_node.wire.frames import TransferChunk, TransferCredit

if TYPE_CHECKING:
    from overlay_node.net.link import PeerLink

__all__ = ["TransferReceiver", "TransferSender"]


class TransferSender:
    """The sending end of one transfer (from :meth:`PeerLink.open_transfer`)."""

    def __init__(self, link: PeerLink, state: OutgoingTransfer, chunk_size: int) -> None:
        self._link = link
        self._state = state
        self._chunk_size = chunk_size
        self._wake = trio.Event()
        self._finished = trio.Event()
        self._error: OverlayError | None = None

    @property
    def id(self) -> int:
        return self._state.id

    @property
    def chunks_sent(self) -> int:
        return self._state.sent

    @property
    def credit(self) -> int:
        return self._state.credit

    @property
    def chunk_size(self) -> int:
        """The largest piece sent in one chunk frame; :meth:`send` splits larger data."""
        return self._chunk_size

    async def send(self, data: bytes) -> None:
        """Send ``data`` as one or more chunks, waiting while out of credit.

        Raises:
            ConnectionLost: the link closed.
            OverlayError: the receiver cancelled the transfer (its code, rebuilt).
        """
        size = self._chunk_size
        if len(data) <= size:
            await self._send_piece(bytes(data))
            return
        view = memoryview(data)
        for start in range(0, len(view), size):
            await self._send_piece(bytes(view[start : start + size]))

    async def _send_piece(self, piece: bytes) -> None:
        state = self._state
        while not state.can_send:
            self._raise_if_failed()
            if state.state is not TransferState.OPEN:
                raise LocalProtocolError(f"transfer {state.id} is {state.state.value}", reason="transfer_state")
            await self._wake.wait()
            self._wake = trio.Event()
        state.spend()
        await self._link._send_frame(TransferChunk(id=state.id, data=piece))

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # called by the link's reader
    def _on_credit(self, credit: int) -> None:
        self._state.on_credit(credit)
        self._wake.set()

    def _on_ack(self) -> None:
        self._state.on_ack()
        self._finished.set()
        self._wake.set()

    def _on_cancel(self, error: OverlayError) -> None:
        self._state.on_cancel()
        if self._error is None:
            self._error = error
        self._finished.set()
        self._wake.set()

    def _on_lost(self, error: ConnectionLost) -> None:
        if self._error is None:
            self._error = error
        self._finished.set()
        self._wake.set()


_END: Final = object()


class TransferReceiver:
    """The receiving end of one transfer, given to an ``on_transfer`` handler: an async iterator of chunks.

    Iteration ends at the sender's ``end``; a sender's ``abort`` raises its error (rebuilt from code and
    message); a lost link raises :class:`~overlay_node.errors.ConnectionLost`. Each chunk taken returns credit to
    the sender, so a slow consumer slows the sender down (at most ``window`` chunks are ever buffered).
    """

    def __init__(self, link: PeerLink, state: IncomingTransfer, method: str, header: dict[str, Any]) -> None:
        self._link = link
        self._state = state
        self.method = method
        self.header = header
        # at most `window` chunks plus the end/abort marker; a lost link closes the channel instead
        self._tx, self._rx = trio.open_memory_channel[object](state.window + 2)
        self._ended = False
        self.max_buffered = 0

    @property
    def id(self) -> int:
        return self._state.id

    @property
    def window(self) -> int:
        return self._state.window

    @property
    def chunks_received(self) -> int:
        return self._state.received

    @property
    def complete(self) -> bool:
        """Whether iteration reached the sender's end."""
        return self._ended

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        try:
            item = await self._rx.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionLost(f"link to {self._link.peer_key[:16]} closed during transfer {self.id}") from None
        if item is _END:
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, OverlayError):
            raise item
        assert isinstance(item, bytes)
        credit = self._state.consumed()
        if credit:
            try:
                await self._link._send_frame(TransferCredit(id=self._state.id, credit=credit))
            except ConnectionLost:
                pass  # the next receive reports the lost link
        return item

    # called by the link's reader; never blocks (credit bounds the buffer)
    def _on_chunk(self, data: bytes) -> None:
        self._state.on_chunk()
        self._tx.send_nowait(data)
        self.max_buffered = max(self.max_buffered, self._state.buffered)

    def _on_end(self) -> None:
        self._state.on_end()
        self._tx.send_nowait(_END)

    def _on_abort(self, error: OverlayError) -> None:
        self._state.on_abort()
        self._tx.send_nowait(error)

    def _on_lost(self) -> None:
        self._tx.close()
