"""A node accepts peer links from its first start step on, before its later services have registered their methods:
a peer's request that arrives meanwhile waits for the start to finish and is served, never refused as
``unknown_method`` (a peer reconnecting to a restarting node must not be told that its streams do not exist).
Real nodes in process, real sockets; the node's ledger is a real devnet behind a TCP relay that holds the first
connection (the wallet's ARC policy request) until the test lets it through."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from overlay_node.devnet import DevnetSettings, run_devnet
from overlay_node.errors import OverlayError
from overlay_node.node import Node
from tests.conftest import NodeFactory, new_data_dir, test_config

LIMIT = 30


async def _pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _relay(target_port: int, held: trio.Event, release: trio.Event, *, task_status: trio.TaskStatus[int]) -> None:
    """Relay TCP connections to 127.0.0.1:target_port; the first one is held (``held`` set) until ``release``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    first = True

    async def handle(client: trio.SocketStream) -> None:
        nonlocal first
        if first:
            first = False
            held.set()
            await release.wait()
        async with (
            client,
            await trio.open_tcp_stream("127.0.0.1", target_port) as upstream,
            trio.open_nursery() as pipes,
        ):
            pipes.start_soon(_pipe, client, upstream)
            pipes.start_soon(_pipe, upstream, client)

    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)


async def test_a_request_that_arrives_during_startup_is_served(
    tmp_path: Path, nursery: trio.Nursery, start_node: NodeFactory
) -> None:
    with trio.fail_after(LIMIT):
        stop = trio.Event()
        settings = DevnetSettings(data_dir=tmp_path / "devnet", port=0, block_interval=0, graceful_timeout=0.5)
        devnet = await nursery.start(lambda task_status: run_devnet(settings, shutdown=stop, task_status=task_status))
        held, release = trio.Event(), trio.Event()
        relay_port: int = await nursery.start(_relay, int(devnet.url.rsplit(":", 1)[1].split("/")[0]), held, release)
        a = await start_node("a", **{"wallet.arc_url": devnet.url})

        # b stops in its wallet step (its ARC policy request is held): its peer links are up, streams not yet
        b = Node(new_data_dir(tmp_path, "b"), test_config(**{"wallet.arc_url": f"http://127.0.0.1:{relay_port}"}))
        b_ready = trio.Event()

        async def run_b() -> None:
            await nursery.start(b.run)
            b_ready.set()

        nursery.start_soon(run_b)
        await held.wait()
        assert not b_ready.is_set()
        link = await a.peers.connect(b.peers.listen_addresses[0])
        answers: dict[str, object] = {}

        async def ask(method: str, body: dict[str, object]) -> None:
            try:
                answers[method] = await link.request(method, body)
            except OverlayError as exc:
                answers[method] = exc.code

        b_link = b.peers.link(a.info.identity_key) or await b.peers.wait_linked(a.info.identity_key)
        frames_before = b_link.info().frames_in
        async with trio.open_nursery() as asking:
            for method in ("stream.subscribe", "node.info", "no.such.method"):
                asking.start_soon(ask, method, {"stream_id": "early", "window": 1})
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert b_link.info().frames_in >= frames_before + 3  # b has the three requests
            assert answers == {}  # and holds them while it starts
            release.set()
        await b_ready.wait()
        assert answers["stream.subscribe"] == "not_found"  # served by the streams service: b has no such stream
        info = answers["node.info"]
        assert isinstance(info, dict), info
        assert info["identity_key"] == b.info.identity_key
        assert answers["no.such.method"] == "unknown_method"  # a method nobody registers is still refused
        b.request_shutdown()
        await b.wait_stopped()
        stop.set()
