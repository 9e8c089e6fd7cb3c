"""A download when most holders are dead: it starts from the live holder without waiting on the dead ones' dials.

The dead holders are stopped nodes whose swarm ports are taken over by a listener that accepts connections and never
answers: a dial there hangs until ``swarm.handshake_timeout``, as one to a host that went silent. The dead holders
sort before the live one in the provider records, so a download that asked them in turn would wait out their
timeouts first.
"""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from overlay_node.node import Node
from overlay_node.protocol.content import ReplicaState
from overlay_node.services.content_fetch import fetch
from tests.conftest import NodeFactory
from tests.integration.test_content import file_hash, start_network, write_random

#: the dial timeout; the download must be done long before it
HANDSHAKE_TIMEOUT = 30.0


async def _silent_listener(
    address: str, accepted: list[trio.socket.SocketType], task_status: trio.TaskStatus[None]
) -> None:
    """Listen on ``address`` (a dead node's swarm ``host:port``), accept and keep every connection, answer nothing."""
    host, port = address.removeprefix("ws://").split("/", 1)[0].rsplit(":", 1)
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await listener.bind((host, int(port)))
    listener.listen(16)
    task_status.started()
    with listener:
        while True:
            conn, _ = await listener.accept()
            accepted.append(conn)


async def test_download_from_the_one_live_holder_of_three_does_not_wait_on_the_dead(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        nodes = await start_network(
            start_node, 4, **{"swarm.handshake_timeout": HANDSHAKE_TIMEOUT, "content.hedge_delay": 0.05}
        )
        producer = nodes[0]
        source = tmp_path / "dead.bin"
        cid = write_random(source, 3 * 1024 * 1024 + 17)
        item = await producer.content.publish(source, replication=2, replicate=False)
        rows = await producer.content.distribute(item.hash)
        replicas = [r.identity_key for r in rows if r.state == ReplicaState.AVAILABLE]
        assert len(replicas) == 2
        by_key = {n.info.identity_key: n for n in nodes}
        holders = sorted([producer.info.identity_key, *replicas])
        reader = next(n for n in nodes if n.info.identity_key not in holders)
        live = by_key[holders[-1]]  # the dead ones come first in the provider records
        dead: list[Node] = [by_key[k] for k in holders[:-1]]

        accepted: list[trio.socket.SocketType] = []
        async with trio.open_nursery() as nursery:
            for node in dead:
                node.request_shutdown()
                await node.wait_stopped()
                await nursery.start(_silent_listener, node.info.swarm[0], accepted)

            # the dials to the dead hang for HANDSHAKE_TIMEOUT: the download ends long before any of them gives up
            with trio.fail_after(HANDSHAKE_TIMEOUT / 3):
                result = await fetch(reader.content, item.hash, tmp_path / "out.bin")
            nursery.cancel_scope.cancel()

        assert file_hash(tmp_path / "out.bin") == cid
        assert result.holders_used == [live.info.identity_key]
        assert result.bad_holders == []
        # the dead holders were dialled (their dials were under way, not skipped by luck of the order)
        assert accepted
        for conn in accepted:
            conn.close()
