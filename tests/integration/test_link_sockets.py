"""A link's TCP connection is closed when the link ends, however it ends: real nodes in process, real sockets."""

from __future__ import annotations

import trio
import trio.testing

from tests.conftest import NodeFactory

LIMIT = 30


async def test_a_link_to_a_peer_that_shut_down_leaves_no_socket_open(start_node: NodeFactory) -> None:
    # the peer shuts down: its close handshake ends our link, and the websocket's close on our side then returns
    # at once without closing its stream; the dialer's socket is closed as its link ends all the same, not left
    # open until the garbage collector finds the link (before, it outlived even our own shutdown)
    with trio.fail_after(LIMIT):
        a = await start_node("a")
        b = await start_node("b")
        link = await a.peers.connect(b.info.swarm[0])
        tcp = link._ws._stream.inner  # type: ignore[attr-defined]  # the dialer's TCP stream, under its websocket
        b.request_shutdown()
        await b.wait_stopped()
        await link.wait_closed()
        await trio.testing.wait_all_tasks_blocked()  # the dial task is done with the link
        assert tcp.socket.fileno() == -1
