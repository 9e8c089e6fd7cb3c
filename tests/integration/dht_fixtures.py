"""A harness for DHT integration tests: DhtService instances on 127.0.0.1 (port 0), each with its own SQLite file.

Every service shares one movable wall clock (:class:`WallClock`), so a test can jump past record expiries and
renewal points without sleeping while datagram timestamps stay consistent between the nodes. Protocol time is trio's
real clock (real sockets), and background maintenance is off (``maintenance_interval`` is an hour): tests drive it
with ``run_maintenance()``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from overlay_node.config import DhtSection, StoreSection
from overlay_node.crypto.keys import Identity
from overlay_node.metrics import Metrics
from overlay_node.services.dht import DhtService
from overlay_node.store.db import open_store
from overlay_node.wire.dht import Record

STORE = StoreSection(busy_timeout=5.0, read_connections=2)


class WallClock:
    """``time.time()`` plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def dht_config(**overrides: Any) -> DhtSection:
    """A ``[dht]`` section for tests: loopback, free port, short timeouts, no background maintenance."""
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "request_timeout": 0.3,
        "request_retries": 1,
        "maintenance_interval": 3600.0,
    }
    base.update(overrides)
    return dataclasses.replace(DhtSection(), **base)


@dataclass
class DhtPeer:
    """One running service and what a test needs to look at or stop it."""

    name: str
    identity: Identity
    service: DhtService
    metrics: Metrics
    scope: trio.CancelScope
    stopped: trio.Event
    seen: list[Record] = field(default_factory=list)
    seen_event: trio.Event = field(default_factory=trio.Event)

    @property
    def address(self) -> str:
        return self.service.address

    def drops(self, reason: str) -> float:
        return self.metrics.registry.get_sample_value("overlay_dht_drops_total", {"reason": reason}) or 0.0

    def refusals(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value("overlay_dht_record_refusals_total", {"reason": reason})
        return value or 0.0

    async def wait_seen(self, predicate: Any) -> Record:
        """Wait until an ``on_record`` callback delivered a record matching ``predicate``."""
        while True:
            for record in self.seen:
                if predicate(record):
                    return record
            self.seen_event = trio.Event()
            await self.seen_event.wait()


class DhtNet:
    """Starts and stops DHT services in the test's nursery."""

    def __init__(self, nursery: trio.Nursery, root: Path) -> None:
        self.nursery = nursery
        self.root = root
        self.clock = WallClock()
        self.peers: list[DhtPeer] = []

    async def start(
        self, name: str, *, identity: Identity | None = None, config: DhtSection | None = None, **overrides: Any
    ) -> DhtPeer:
        """Start a service named ``name`` (its database is ``<root>/<name>.db``) and return when it listens."""
        ident = identity or Identity.generate()
        cfg = config or dht_config(**overrides)
        peer: DhtPeer = await self.nursery.start(self._run, name, ident, cfg)
        self.peers.append(peer)
        return peer

    async def _run(
        self, name: str, identity: Identity, config: DhtSection, *, task_status: trio.TaskStatus[DhtPeer]
    ) -> None:
        stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with open_store(self.root / f"{name}.db", STORE) as store:
                    metrics = Metrics()
                    service = DhtService(identity, config, store, metrics, wall_clock=self.clock)
                    async with trio.open_nursery() as nursery:
                        await nursery.start(service.run)
                        peer = DhtPeer(name, identity, service, metrics, scope, stopped)

                        def seen(record: Record) -> None:
                            peer.seen.append(record)
                            peer.seen_event.set()

                        service.on_record(seen)
                        task_status.started(peer)
        finally:
            stopped.set()

    async def stop(self, peer: DhtPeer) -> None:
        """Cancel ``peer``'s service and wait until its database is closed."""
        peer.scope.cancel()
        await peer.stopped.wait()
        if peer in self.peers:
            self.peers.remove(peer)

    async def form(self, count: int, **overrides: Any) -> list[DhtPeer]:
        """Start ``count`` services; each after the first bootstraps from the first only."""
        first = await self.start("n0", **overrides)
        peers = [first]
        for i in range(1, count):
            peer = await self.start(f"n{i}", **overrides)
            await peer.service.bootstrap([first.address])
            peers.append(peer)
        await settle()
        return peers


async def settle() -> None:
    """Wait until no datagram is in flight and no task can run: the nodes have answered and confirmed each other.

    Loopback delivers a datagram into the receiving socket during ``sendto``, so once every task is blocked and no
    socket is readable, every exchange started so far (such as the ping that confirms a new contact) is done.
    """
    await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
async def dht_net(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[DhtNet]:
    net = DhtNet(nursery, tmp_path)
    yield net
    with trio.fail_after(10):
        for peer in list(net.peers):
            await net.stop(peer)
