"""The peer link's writer task over real websockets on 127.0.0.1: notices are queued and written in order by one task,
callers wait only for room (or, for other frames, for their own frame), stalls and cancellations leave no gap.

Every test has a trio-clock time limit; nothing sleeps and polls: tests wait on events and on all tasks blocked.
"""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from overlay_node.errors import ConnectionLost
from overlay_node.net.link import NOTICE_TURN, OUTBOX_BYTES

from .peer_fixtures import SlowSocket, start_good_node

LIMIT = 20.0


async def test_notices_sent_in_a_loop_take_a_turn_of_the_event_loop_only_every_few(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery)
    b = await start_good_node(nursery)
    count = NOTICE_TURN * 4
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        turns = 0
        counting = True

        async def count_turns() -> None:
            nonlocal turns
            while counting:
                turns += 1
                await trio.lowlevel.checkpoint()

        nursery.start_soon(count_turns)
        await trio.lowlevel.checkpoint()  # the counter runs from now on at every turn
        turns = 0
        for seq in range(count):
            await link.notify("hello", {"seq": seq})
        taken = turns
        counting = False
        got = [await b.notices.receive() for _ in range(count)]
    assert [body["seq"] for _, body in got] == list(range(count))
    # one turn per NOTICE_TURN notices (each socket write used to take two turns of the sender)
    assert taken <= count // NOTICE_TURN + 1


async def test_notify_returns_while_the_socket_is_held_until_outbox_bytes_wait(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery)
    b = await start_good_node(nursery)
    pad = bytes(8 * 1024)
    count = OUTBOX_BYTES // len(pad) + 4
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        held = SlowSocket(link)
        returned = 0

        async def send_all() -> None:
            nonlocal returned
            for seq in range(count):
                await link.notify("hello", {"seq": seq, "pad": pad})
                returned += 1

        nursery.start_soon(send_all)
        await held.sending.wait()
        await trio.testing.wait_all_tasks_blocked()
        queued = returned
        held.release.set()
        got = [await b.notices.receive() for _ in range(count)]
    # the first notices were queued at once; the one beyond OUTBOX_BYTES waits for the writer
    assert 0 < queued < count
    assert queued * len(pad) <= OUTBOX_BYTES < (queued + 1) * (len(pad) + 64)
    assert [body["seq"] for _, body in got] == list(range(count))
    assert not link.closed


async def test_a_caller_cancelled_while_its_frame_waits_for_the_writer_leaves_no_gap(nursery: trio.Nursery) -> None:
    """A frame queued behind the writer is sealed (its sequence number is spent): cancelling its caller must not take
    it back, or the peer would see a gap and drop the link."""
    a = await start_good_node(nursery)
    b = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        held = SlowSocket(link)
        await link.notify("hello", {"seq": 0})  # queued; the writer is held writing it
        await held.sending.wait()
        async with trio.open_nursery() as calls:
            scope = trio.CancelScope()

            async def cancelled_call() -> None:
                with scope:
                    await link.request("echo", {"n": 1})

            calls.start_soon(cancelled_call)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
        held.release.set()
        assert await link.request("echo", {"n": 2}) == {"from": a.key, "body": {"n": 2}}
        await link.notify("hello", {"seq": 1})
        got = [await b.notices.receive() for _ in range(2)]
    assert [body["seq"] for _, body in got] == [0, 1]
    assert not link.closed
    assert b.drops("out_of_order") == 0


async def test_a_queued_write_that_stalls_past_the_request_timeout_closes_the_link(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery, request_timeout=0.3, keepalive_interval=0.05)
    b = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        SlowSocket(link)  # never released
        await link.notify("hello", {"seq": 0})  # returns at once: queued for the writer
        await link.wait_closed()
        with pytest.raises(ConnectionLost):
            await link.notify("hello", {"seq": 1})
    assert link.close_reason == "send_stalled"


async def test_a_stalled_write_nobody_waits_for_is_caught_by_the_keepalive(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery, request_timeout=0.3, keepalive_interval=0.05)
    b = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        link = await a.manager.connect(b.url)
        back = b.link_to(a)
        SlowSocket(link)  # never released
        await link.notify("hello", {"seq": 0})  # queued for the writer, which is held writing it; nobody waits

        async def keep_talking() -> None:
            # the peer is never silent, so the link never pings (a ping would wait for the writer, and see it too)
            with trio.CancelScope() as talking:
                while True:
                    try:
                        await back.notify("hello", {"from": "b"})
                    except ConnectionLost:
                        talking.cancel()
                    await a.notices.receive()

        async with trio.open_nursery() as talk:
            talk.start_soon(keep_talking)
            await link.wait_closed()
            talk.cancel_scope.cancel()
    assert link.close_reason == "send_stalled"
    assert link._written == 0  # the held notice never went out: the keepalive's watch closed the link
