"""``content status`` is live: a repair pass records each holder's last confirmed time, marks a holder that stopped
answering ``unreachable`` (keeping when it was last confirmed), and lists replicas another node placed."""

from __future__ import annotations

from pathlib import Path

import trio

from overlay_node.protocol.content import ReplicaState
from tests.conftest import NodeFactory
from tests.integration.test_content import FAST, start_network, write_random

SLOW_CHECKS = {"content.check_timeout": 10.0, "swarm.handshake_timeout": 5.0}


async def test_a_repair_pass_marks_dead_holders_and_lists_replicas_placed_elsewhere(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        nodes = await start_network(start_node, 5, **SLOW_CHECKS)
        producer = nodes[0]
        by_key = {n.info.identity_key: n for n in nodes}
        source = tmp_path / "s.bin"
        write_random(source, 200_000)
        item = await producer.content.publish(source, replication=2, replicate=False)
        rows = await producer.content.distribute(item.hash)
        holders = [r.identity_key for r in rows if r.state == ReplicaState.AVAILABLE]
        assert len(holders) == 2
        placed_at = {r.identity_key: r.updated_at for r in rows}

        # a replica placed by another node (a holder's own placement, as its repair would): the producer's table
        # has no row for it until its pass reads the provider records
        survivor = by_key[holders[1]]
        spare = next(n for n in nodes if n.info.identity_key not in (*holders, producer.info.identity_key))
        await survivor.content.distribute(item.hash, nodes=(spare.info.identity_key,), replication=3)
        before = await producer.content.status(item.hash)
        assert spare.info.identity_key not in {r["identity_key"] for r in before["replicas"]}

        dead = by_key[holders[0]]
        dead.request_shutdown()
        await dead.wait_stopped()
        await producer.content.repair_pass()

        status = await producer.content.status(item.hash)
        by_holder = {r["identity_key"]: r for r in status["replicas"]}
        gone = by_holder[dead.info.identity_key]
        assert gone["state"] == "unreachable"
        assert gone["last_confirmed"] == placed_at[dead.info.identity_key]  # when it was last seen holding it
        for live in (survivor, spare):
            row = by_holder[live.info.identity_key]
            assert row["state"] == "available"
            assert row["detail"] == "confirmed"
            assert row["last_confirmed"] >= placed_at[holders[1]]
        assert status["available"] == 2

        # the holder comes back on its data dir: the next pass confirms it again
        shared = {"wallet.arc_url": producer.status()["ledger"], "dht.bootstrap": [producer.info.dht]}
        back = await start_node(dead.data_dir.path.name, **FAST, **shared, **SLOW_CHECKS)
        assert back.info.identity_key == dead.info.identity_key
        await back.content._announce()  # its node and provider records name its new ports
        await producer.content.repair_pass()
        again = {r["identity_key"]: r for r in (await producer.content.status(item.hash))["replicas"]}
        assert again[dead.info.identity_key]["state"] == "available"
        assert again[dead.info.identity_key]["last_confirmed"] > placed_at[dead.info.identity_key]
