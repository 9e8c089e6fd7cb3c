"""Link liveness over real sockets on 127.0.0.1: a link that has gone silent is dropped after a keepalive ping goes
unanswered and a kept peer is redialled; a link whose peer is slow, or whose reader is held up by our own
back-pressure while the other direction flows, is kept.

The silent link is made by a small TCP relay between the two nodes that the test freezes: it keeps every connection
open and stops forwarding, as a network cut does (no FIN, no RST, nothing answers).
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from overlay_node.errors import DialError
from overlay_node.net.peers import PeerLink

from .peer_fixtures import GoodNode, start_good_node

LIMIT = 20.0
#: short liveness settings (real time): a ping after this much silence, a drop this long after it
INTERVAL = 0.2
TIMEOUT = 0.6
#: scheduling slack on a loaded machine
SLACK = 1.5
#: settings under which a dead link would be dropped quickly and a kept peer redialled at once
LIVENESS: dict[str, Any] = {
    "keepalive_interval": INTERVAL,
    "keepalive_timeout": TIMEOUT,
    "reconnect_min": 0.05,
    "reconnect_max": 0.2,
    "handshake_timeout": 1.0,
}


class Relay:
    """A TCP relay from a port of its own to ``target``; ``freeze()`` stops it forwarding (connections stay open,
    new ones are accepted and held), ``resume()`` lets everything through again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.flowing = trio.Event()
        self.flowing.set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/p2p/1"

    def freeze(self) -> None:
        self.flowing = trio.Event()

    def resume(self) -> None:
        self.flowing.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, client: trio.SocketStream) -> None:
        await self.flowing.wait()
        server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with client, server, trio.open_nursery() as pumps:
            pumps.start_soon(self._pump, client, server, pumps.cancel_scope)
            pumps.start_soon(self._pump, server, client, pumps.cancel_scope)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope) -> None:
        try:
            while data := await source.receive_some(65536):
                await self.flowing.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        both.cancel()


async def start_pair(nursery: trio.Nursery, **overrides: Any) -> tuple[GoodNode, GoodNode]:
    settings = {**LIVENESS, **overrides}
    return await start_good_node(nursery, **settings), await start_good_node(nursery, **settings)


async def test_a_link_gone_silent_is_dropped_and_redialled_when_the_network_heals(nursery: trio.Nursery) -> None:
    a, b = await start_pair(nursery)
    relay = Relay(int(b.url.rsplit(":", 1)[1].split("/")[0]))
    await nursery.start(relay.run)
    with trio.fail_after(LIMIT):
        first = await a.manager.connect(relay.url, persistent=True)
        assert (await first.request("echo", {"n": 1}))["body"] == {"n": 1}
        relay.freeze()
        frozen_at = trio.current_time()
        await first.wait_closed()
        took = trio.current_time() - frozen_at
        assert first.close_reason == "keepalive_timeout"
        assert a.drops("keepalive_timeout") == 1
        # the last frame came in at most at the freeze: a ping after INTERVAL of silence, the drop TIMEOUT later
        assert took <= INTERVAL + TIMEOUT + SLACK, took
        assert a.manager.link(b.key) is None
        relay.resume()
        second = await a.manager.wait_linked(b.key)
        assert second is not first
        assert (await second.request("echo", {"n": 2}))["body"] == {"n": 2}


async def _stays_up(link: PeerLink, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        await link.wait_closed()
    return not link.closed


async def test_a_quiet_link_whose_peer_answers_slowly_is_kept(nursery: trio.Nursery) -> None:
    a, b = await start_pair(nursery)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        async with trio.open_nursery() as inner:
            inner.start_soon(link.request, "block", {})  # answered only after many keepalive timeouts
            assert await _stays_up(link, 4 * (INTERVAL + TIMEOUT))
            b.unblock.set()
        assert link.rtt_ms is not None  # the quiet link was pinged, and the pings answered
        assert a.drops("keepalive_timeout") == b.drops("keepalive_timeout") == 0


async def test_a_peer_whose_reader_is_held_up_keeps_its_link_while_it_keeps_sending(nursery: trio.Nursery) -> None:
    """B's only notice handler is stuck, so B stops reading (its queue of one is full) and A's sends fill the
    window; B still sends to A. Neither side drops the link: A hears B, and B's silence is its own doing."""
    a, b = await start_pair(nursery, max_inflight=1, request_timeout=30.0)  # our blocked sends are not stalls
    stuck = trio.Event()

    async def wait(_link: PeerLink, _body: dict[str, Any]) -> None:
        stuck.set()
        await b.unblock.wait()

    b.manager.on_notice("wait", wait)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        back = b.link_to(a)
        blob = bytes(60_000)

        async def flood() -> None:  # until the window is full and our sends block
            while not link.closed:
                await link.notify("wait", {"blob": blob})

        async def talk() -> None:  # the other direction flows
            while not back.closed:
                await back.notify("hello", {})
                await trio.sleep(INTERVAL / 4)

        async def drain() -> None:
            async for _ in a.notices:
                pass

        async with trio.open_nursery() as inner:
            inner.start_soon(flood)
            inner.start_soon(talk)
            inner.start_soon(drain)
            await stuck.wait()
            assert await _stays_up(link, 4 * (INTERVAL + TIMEOUT))
            assert not back.closed
            b.unblock.set()  # B reads again: the blocked send (shielded until it is out) completes
            inner.cancel_scope.cancel()
        assert a.drops("keepalive_timeout") == b.drops("keepalive_timeout") == 0


async def _connect_expecting_dial_error(node: GoodNode, url: str, outcome: list[BaseException]) -> None:
    try:
        await node.manager.connect(url)
    except DialError as exc:
        outcome.append(exc)


async def test_a_dial_its_first_caller_abandons_fails_the_others_with_a_dial_error(nursery: trio.Nursery) -> None:
    """Two callers share one dial; the first gives up (its own timeout). The second gets a DialError, not the first
    one's cancellation (which, raised in another task, would have stopped the whole manager), and the manager
    keeps dialing."""
    a, b = await start_pair(nursery, handshake_timeout=5.0)
    accepted = trio.Event()

    async def hold(_stream: trio.SocketStream) -> None:  # accepts, never answers the websocket upgrade
        accepted.set()
        await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, hold, listeners)
    url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/p2p/1"
    outcome: list[BaseException] = []
    first = trio.CancelScope()

    async def first_caller() -> None:
        with first:
            await a.manager.connect(url)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as inner:
            inner.start_soon(first_caller)
            await accepted.wait()  # the first caller's dial is under way: the second waits for it
            inner.start_soon(_connect_expecting_dial_error, a, url, outcome)
            await trio.testing.wait_all_tasks_blocked()  # ... which it does now
            first.cancel()
        assert first.cancelled_caught
        assert len(outcome) == 1
        assert "abandoned" in str(outcome[0])
        link = await a.manager.connect(b.url)
        assert (await link.request("echo", {}))["body"] == {}


async def test_a_kept_peer_that_does_not_answer_is_redialled_counting_the_attempt_as_part_of_the_backoff(
    nursery: trio.Nursery,
) -> None:
    """A bootstrap peer whose address accepts TCP and then says nothing (the dial times out after the handshake
    timeout): the next attempt starts one backoff delay after the start of the last, not a delay after its end."""
    accepts: list[float] = []
    second = trio.Event()

    async def hold(_stream: trio.SocketStream) -> None:
        accepts.append(trio.current_time())
        if len(accepts) == 2:
            second.set()
        await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, hold, listeners)
    address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    delay, handshake = 4.0, 3.0
    await start_good_node(
        nursery, bootstrap=(address,), reconnect_min=delay, reconnect_max=delay, handshake_timeout=handshake
    )
    with trio.fail_after(LIMIT):
        await second.wait()
    gap = accepts[1] - accepts[0]
    # the pause after a failed attempt is delay * uniform(0.5, 1) from its start, and never less than the attempt
    assert handshake <= gap <= delay + 0.6, gap
