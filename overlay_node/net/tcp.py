"""TCP streams whose sends hand the event loop over only when the kernel cannot take the bytes at once.

trio's ``SocketStream.send_all`` ends every send with a schedule point: the task goes to the back of the run queue
even when the kernel took every byte at once, as it nearly always does for a peer link's frames. A paid stream at
one payment per packet sends several frames per payment on each side, and without those trips through the
scheduler it carried a seventh more (``bench/bench_streams.py --w1-only --w1-packets 8000``, runs in A-B-B-A order;
figures in ``docs/design.md``, "Peer links"). :func:`eager_stream` gives the same ``trio.SocketStream`` over a
socket whose ``send`` writes straight away (trio-websocket and the TLS layer take a ``SocketStream`` as before, and
its peer address with it).

Both the streams a node dials (``peers.py``) and those its swarm port accepts (``listen.py``) are eager. Making the
dialed ones eager showed a race the schedule points had hidden: a dialed link's ``aclose`` could wait out its whole
close grace, because the link's end cancelled the websocket's reader before the peer's close answer came in
(``peers.py`` now lets that reader finish, up to the grace; ``tests/integration/test_simultaneous_dial.py`` checks
that no close overran).

Invariants:

1. A send is a cancel point: a cancelled caller sends nothing. It waits, and yields, only when the socket's buffer
   is full (then as trio's own send does); otherwise it returns without a schedule point. A task that sends in a
   loop with no other wait must yield itself (a peer link's writer waits on its queue between frames).
2. Everything else (receiving, closing, options, addresses, errors and their mapping to stream errors) is the
   wrapped trio socket's, unchanged: ``SocketStream`` still owns the conflict detection and ``send_all``'s loop.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from socket import AddressFamily, SocketKind

    from typing_extensions import Buffer

__all__ = ["EagerListener", "eager_stream"]


class _EagerSocket(trio.socket.SocketType):
    """A connected trio socket whose :meth:`send` writes at once when it can (invariant 1); the rest is the inner
    socket's."""

    def __init__(self, inner: trio.socket.SocketType) -> None:
        super().__init__()
        self._inner = inner

    async def send(self, data: Buffer, flags: int = 0, /) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        fd = self._inner.fileno()
        if fd >= 0 and not flags:  # -1 once closed: the inner socket says so
            try:
                return os.write(fd, data)  # send(2) without flags; the process ignores SIGPIPE
            except BlockingIOError:
                pass
            except OSError:
                pass  # a reset or broken connection: the inner send meets it and raises it as trio does
        return await self._inner.send(data, flags)

    def recv(self, buflen: int, flags: int = 0, /) -> Awaitable[bytes]:
        return self._inner.recv(buflen, flags)

    async def wait_writable(self) -> None:
        await self._inner.wait_writable()

    def is_readable(self) -> bool:
        return self._inner.is_readable()

    def fileno(self) -> int:
        return self._inner.fileno()

    def getpeername(self) -> Any:
        return self._inner.getpeername()

    def getsockname(self) -> Any:
        return self._inner.getsockname()

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        if buflen is None:
            return self._inner.getsockopt(level, optname)
        return self._inner.getsockopt(level, optname, buflen)

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        if optlen is None:
            self._inner.setsockopt(level, optname, value)
        else:
            self._inner.setsockopt(level, optname, None, optlen)

    @property
    def family(self) -> AddressFamily:
        return self._inner.family

    @property
    def type(self) -> SocketKind:
        return self._inner.type

    @property
    def proto(self) -> int:
        return self._inner.proto

    @property
    def did_shutdown_SHUT_WR(self) -> bool:  # trio's name
        return self._inner.did_shutdown_SHUT_WR

    def shutdown(self, flag: int) -> None:
        self._inner.shutdown(flag)

    def close(self) -> None:
        self._inner.close()

    def __repr__(self) -> str:
        return f"<eager {self._inner!r}>"


def eager_stream(stream: trio.SocketStream) -> trio.SocketStream:
    """The stream over ``stream``'s socket with sends that yield only for room in the buffer (module docstring).
    ``stream`` itself must not be used afterwards."""
    return trio.SocketStream(_EagerSocket(stream.socket))


class EagerListener(trio.abc.Listener[trio.SocketStream]):
    """A TCP listener whose accepted streams are :func:`eager_stream`'s."""

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner

    async def accept(self) -> trio.SocketStream:
        return eager_stream(await self.inner.accept())

    async def aclose(self) -> None:
        await self.inner.aclose()
