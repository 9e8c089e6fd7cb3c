"""``net/tcp.py`` on real loopback sockets: sends that yield only for a full buffer, and trio's stream otherwise."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from overlay_node.net.tcp import EagerListener, eager_stream
from tests.conftest import runs_without_yielding

LIMIT = 10  # seconds per test, on trio's clock


@asynccontextmanager
async def _pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """(dialed, accepted): both eager, connected over loopback."""
    (raw,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = EagerListener(raw)
    port = raw.socket.getsockname()[1]
    try:
        dialed = eager_stream(await trio.open_tcp_stream("127.0.0.1", port))
        accepted = await listener.accept()
        try:
            yield dialed, accepted
        finally:
            await dialed.aclose()
            await accepted.aclose()
    finally:
        await listener.aclose()


async def test_a_send_the_kernel_takes_is_a_cancel_point_but_no_schedule_point() -> None:
    with trio.fail_after(LIMIT):
        async with _pair() as (dialed, accepted):

            async def burst() -> None:
                for n in range(20):
                    await dialed.send_all(b"%02d" % n)
                    await accepted.send_all(b"%02d" % n)

            assert await runs_without_yielding(burst)
            expected = b"".join(b"%02d" % n for n in range(20))
            for stream in (accepted, dialed):
                got = b""
                while len(got) < len(expected):
                    got += await stream.receive_some()
                assert got == expected
            with trio.CancelScope() as scope:
                scope.cancel()
                await dialed.send_all(b"never")
            assert scope.cancelled_caught
            await dialed.send_all(b"after")
            assert await accepted.receive_some() == b"after"


async def test_a_full_buffer_waits_for_room_and_loses_nothing() -> None:
    with trio.fail_after(LIMIT):
        async with _pair() as (dialed, accepted):
            blob = bytes(range(256)) * 65536  # 16 MiB: more than the two sockets' buffers hold
            received = bytearray()

            async def read_all() -> None:
                while len(received) < len(blob):
                    received.extend(await accepted.receive_some(65536))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                await dialed.send_all(blob)
            assert bytes(received) == blob


async def test_the_peer_address_errors_and_end_of_stream_are_trio_s() -> None:
    with trio.fail_after(LIMIT):
        async with _pair() as (dialed, accepted):
            assert accepted.socket.getpeername() == dialed.socket.getsockname()
            assert dialed.socket.getpeername() == accepted.socket.getsockname()
            await dialed.send_eof()
            assert await accepted.receive_some() == b""
            with pytest.raises(trio.ClosedResourceError):
                await dialed.send_all(b"after the end")
            await accepted.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await accepted.send_all(b"closed here")


async def test_a_send_to_a_reset_connection_is_a_broken_resource() -> None:
    with trio.fail_after(LIMIT):
        async with _pair() as (dialed, accepted):
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await accepted.aclose()
            with pytest.raises(trio.BrokenResourceError):
                await dialed.send_all(b"x" * 1024)
