"""Requests on a peer link over real websockets on 127.0.0.1: the request clock that times out requests made with
the default timeout, the request workers that serve the peer's requests, and the stall watch over the link's own
answers (written without a shielded scope).

Every test has a trio-clock time limit; nothing sleeps and polls: tests wait on events and on all tasks blocked.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from overlay_node.errors import ConnectionLost, PeerTimeout
from overlay_node.net.link import _IDLE_WORKERS, PeerLink

from .peer_fixtures import SlowSocket, start_good_node

LIMIT = 20.0


async def test_requests_with_the_default_timeout_time_out_each_at_its_own_deadline(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    timeout = 0.4
    a = await start_good_node(nursery, request_timeout=timeout)
    b = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        outcomes: dict[int, tuple[float, float, str]] = {}

        async def blocked(n: int) -> None:
            began = trio.current_time()
            try:
                await link.request("block", {"n": n})
            except PeerTimeout as exc:
                outcomes[n] = (began, trio.current_time(), str(exc))

        async with trio.open_nursery() as calls:
            for n in range(3):
                calls.start_soon(blocked, n)
                # answered requests in between: each leaves the clock, none times out
                for _ in range(5):
                    assert await link.request("echo", {"n": n}) == {"from": a.key, "body": {"n": n}}
                virtual_clock.jump(0.05)  # staggered deadlines
        assert sorted(outcomes) == [0, 1, 2]
        # a request still waiting holds many answered ones behind it on the clock: they do not pile up
        async with trio.open_nursery() as calls:
            calls.start_soon(blocked, 3)
            await trio.testing.wait_all_tasks_blocked()  # its request is out: it waits for the answer
            assert len(link._deadlines) == 1
            for n in range(200):
                assert await link.request("echo", {"n": n}) == {"from": a.key, "body": {"n": n}}
            assert len(link._deadlines) <= 2 * len(link._waiters) + 17
            virtual_clock.jump(timeout)
        assert sorted(outcomes) == [0, 1, 2, 3]
        for began, ended, message in outcomes.values():
            assert timeout <= ended - began < timeout + 0.3
            assert message.endswith(f"timed out after {timeout:g}s")
        # the link still answers; nothing is left waiting, and answered requests do not pile up on the clock
        b.unblock.set()
        assert await link.request("echo", {"after": True}) == {"from": a.key, "body": {"after": True}}
        assert link._waiters == {}
        assert len(link._deadlines) <= 1
    assert not link.closed


async def test_a_request_with_its_own_timeout_still_times_out_after_it(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery, request_timeout=5.0)
    b = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        began = trio.current_time()
        with pytest.raises(PeerTimeout, match=r"timed out after 0\.2s"):
            await link.request("block", {}, timeout=0.2)
        assert trio.current_time() - began < 1.0
        b.unblock.set()
        assert await link.request("echo", {}) == {"from": a.key, "body": {}}


async def test_requests_in_flight_at_once_are_served_at_once_and_workers_end_with_the_link(
    nursery: trio.Nursery,
) -> None:
    a = await start_good_node(nursery)
    b = await start_good_node(nursery)
    count = _IDLE_WORKERS * 3
    inside = 0
    all_inside = trio.Event()

    async def gate(_link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        # answers only once every request is inside a handler: requests served one after another would never be
        nonlocal inside
        inside += 1
        if inside == count:
            all_inside.set()
        await all_inside.wait()
        return body

    b.manager.on_request("gate", gate)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        back = b.link_to(a)
        for _ in range(3):  # the second and third waves are served by the workers the first left waiting
            inside = 0
            all_inside = trio.Event()
            answers: list[dict[str, Any]] = []

            async def call(n: int, into: list[dict[str, Any]]) -> None:
                into.append(await link.request("gate", {"n": n}))

            async with trio.open_nursery() as calls:
                for n in range(count):
                    calls.start_soon(call, n, answers)
            assert sorted(answer["n"] for answer in answers) == list(range(count))
            await trio.testing.wait_all_tasks_blocked()
            assert len(back._idle_workers) == _IDLE_WORKERS
            assert back._inflight == 0
        await link.aclose()
        await back.wait_closed()
    assert back._idle_workers == []


async def test_an_answer_that_stalls_past_the_request_timeout_closes_the_link(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery)
    b = await start_good_node(nursery, request_timeout=0.3, keepalive_interval=0.05)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        back = b.link_to(a)
        slow = SlowSocket(back)  # never released: the answer's write is held up as by a full socket buffer
        async with trio.open_nursery() as calls:

            async def call() -> None:
                with pytest.raises(ConnectionLost):
                    await link.request("echo", {})

            async def keep_talking() -> None:
                # b never hears silence, so it never pings (a ping would wait behind the answer, and see it too)
                try:
                    while True:
                        await link.notify("hello", {})
                        await b.notices.receive()
                except ConnectionLost:
                    return

            calls.start_soon(call)
            await slow.sending.wait()
            began = trio.current_time()
            async with trio.open_nursery() as talk:
                talk.start_soon(keep_talking)
                await back.wait_closed()
                assert trio.current_time() - began >= 0.3
                await link.wait_closed()
                talk.cancel_scope.cancel()
    assert back.close_reason == "send_stalled"
    assert back._written == 0  # nothing went out behind the held answer: the keepalive's watch closed the link
