"""Two peer managers dial each other at once, many times, over real websockets on 127.0.0.1.

Whatever the timing, each ``connect`` must return the link both managers keep -- open, answering requests -- and
no other link to the peer may ever be registered in that round (a link that a caller may already hold is never
displaced). The second dial starts a few scheduler ticks after the first; the sweep over that offset covers the
orderings in which the responder of one link and the dialer of the other decide first (without the claim rules in
``net/peers.py`` the higher key's own dial was returned and then closed as ``duplicate_link`` at offsets of about
4 to 28 ticks). Nothing sleeps: the offset is counted in checkpoints, and everything else waits on events.
"""

from __future__ import annotations

import trio
import trio.lowlevel

from overlay_node.errors import OverlayError
from overlay_node.net.peers import PeerLink

from .peer_fixtures import GoodNode, start_good_node

LIMIT = 20  # seconds of trio time for the whole test (it takes about 2 s)
ROUNDS = 30


async def _dial_round(first: GoodNode, second: GoodNode, offset: int, *, named: bool) -> dict[str, PeerLink]:
    """``first`` dials ``second`` while ``second`` dials ``first`` ``offset`` checkpoints later."""
    got: dict[str, PeerLink] = {}

    async def dial(src: GoodNode, dst: GoodNode, ticks: int) -> None:
        for _ in range(ticks):
            await trio.lowlevel.checkpoint()
        got[src.key] = await src.manager.connect(dst.url, expect_key=dst.key if named else None)

    async with trio.open_nursery() as dials:
        dials.start_soon(dial, first, second, 0)
        dials.start_soon(dial, second, first, offset)
    return got


async def _check_round(nodes: tuple[GoodNode, GoodNode], got: dict[str, PeerLink], tag: int) -> list[str]:
    """What is wrong with the links ``connect`` returned (empty when they are the kept, working link)."""
    problems: list[str] = []
    pairs = (nodes, nodes[::-1])
    for src, dst in pairs:
        link = got[src.key]
        if link.peer_key != dst.key:
            problems.append(f"{src.key[:8]} got a link to {link.peer_key[:8]}")
        if link.closed or src.manager.link(dst.key) is not link:
            problems.append(f"{src.key[:8]} got a link that is not kept ({link.direction}, {link.close_reason})")
    a, b = (got[n.key] for n in nodes)
    if a.initiator_key != b.initiator_key or {a.direction, b.direction} != {"in", "out"}:
        problems.append("the two sides returned different connections")
    for src in nodes:
        link = got[src.key]
        try:
            answer = await link.request("echo", {"round": tag})
        except OverlayError as exc:
            problems.append(f"{src.key[:8]}: request failed: {exc!r}")
        else:
            if answer != {"from": src.key, "body": {"round": tag}}:
                problems.append(f"{src.key[:8]}: wrong answer {answer!r}")
    for src, dst in pairs:
        # still the kept link after a round trip each way, and the only link either side has
        if src.manager.link(dst.key) is not got[src.key] or len(src.manager.links()) != 1:
            now = [(info.identity_key[:8], info.direction) for info in src.manager.links()]
            problems.append(f"{src.key[:8]}: links changed after connect returned: {now}")
    return problems


async def test_simultaneous_dials_return_the_kept_link(nursery: trio.Nursery) -> None:
    x = await start_good_node(nursery)
    y = await start_good_node(nursery)
    low, high = sorted((x, y), key=lambda node: node.key)
    failures: list[str] = []
    with trio.fail_after(LIMIT):
        for rnd in range(ROUNDS):
            # two rounds in three the higher key dials first (its own dial is the one at risk), one in three the
            # lower; the offset sweeps 0..29 ticks; every other round names the expected key
            first, second = (high, low) if rnd % 3 != 2 else (low, high)
            named = rnd % 2 == 0
            seen = {node.key: len(node.links_seen) for node in (low, high)}
            got = await _dial_round(first, second, rnd, named=named)
            problems = await _check_round((low, high), got, rnd)

            # end the round: close every link that came up (normally just the one) and wait until both sides ended
            links = list(got.values()) + [link for node in (low, high) for link in node.links_seen[seen[node.key] :]]
            for link in links:
                await link.aclose("next round")
            for link in links:
                await link.wait_closed()
            overran = [link.direction for link in links if link.close_overran]
            if overran:
                # a close waited out its grace: the dialing side's websocket reader was cancelled mid-handshake
                problems.append(f"the close handshake of {overran} did not finish")
            for node in (low, high):
                registered = node.links_seen[seen[node.key] :]
                if registered != [got[node.key]]:
                    problems.append(f"{node.key[:8]} registered {len(registered)} links in the round: {registered}")
                assert node.manager.links() == []
            if problems:
                order = "high first" if first is high else "low first"
                failures.append(f"round {rnd} ({order}, offset {rnd}, named={named}): " + "; ".join(problems))
    assert not failures, f"{len(failures)} of {ROUNDS} rounds went wrong:\n" + "\n".join(failures)
