"""A 7-node cluster of real daemons, each in a network namespace of its own, split 4/3 for 30 seconds and healed.

Before the cut: content published with R = 3, adverts up, a paid stream on side A read by a consumer on each side.
During the partition each side keeps working: content published and adverts put up on both sides, found on their
own side, and the stream keeps flowing to the consumer on the producer's side (and not at all across the cut: the
cut is real). After the heal the cluster must converge, and the seconds each property takes are measured, printed
and written to ``bench/results/partition.json``:

- ``links``: every node has a peer link to every other;
- ``routing``: every node's DHT routing table holds every other node;
- ``node_records``: every node finds every other node's node record in the DHT;
- ``providers``: every node finds, for every blob, the provider record of every node that holds it;
- ``adverts``: every node discovers the four adverts (two from each side, before and during the cut);
- ``replication``: every blob is held by at least R nodes besides its publisher;
- ``replication_exact``: and by exactly R once the surplus recruited during the partition is trimmed;
- ``stream``: the consumer across the cut gets packets again, in the same subscription.

Waits poll the daemons' control APIs with a deadline; the only fixed wait is the partition itself.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from netns import Fabric

from tests.partition.conftest import SIDES
from tests.partition.traffic import Stream
from tests.soak.world import ROOT, Cluster, World, result_of

pytestmark = pytest.mark.cluster

RESULTS = ROOT / "bench" / "results" / "partition.json"
PARTITION_SECONDS = 30.0
#: seconds every property gets to converge after the heal
CONVERGE_DEADLINE = 120.0
#: seconds between two polls of a property's state
POLL = 0.25
REPLICATION = 3
#: repair passes every 10 s (the default minute would be most of what the test measures), surplus trimmed at once
SETTINGS = ["--set", "content.repair_interval=10", "--set", "content.trim_grace=0", "--set", "content.check_timeout=2"]
SIDE_A = [i for i, s in enumerate(SIDES) if s == "A"]
SIDE_B = [i for i, s in enumerate(SIDES) if s == "B"]
#: the stream's producer (side A), its consumer on the same side and its consumer across the cut
PRODUCER, NEAR, FAR = 1, 3, 5
STREAM = "partition-ticker"


def publish(world: World, node: int, tmp: Path, *, wait: bool) -> str:
    data = os.urandom(200_000 + node * 1_000 + int(time.monotonic() * 1000) % 997)
    path = tmp / f"blob-{node}-{time.monotonic_ns()}.bin"
    path.write_bytes(data)
    body = {"path": str(path), "replication": REPLICATION, "wait": wait, "title": f"partition {node}"}
    return str(result_of(world.stream(node, "/v1/content/publish", body))["hash"])


def advertise(world: World, node: int, service: str) -> None:
    world.call(node, "POST", "/v1/advertise", {"service": service, "on_chain": False})


def discovers(world: World, node: int, service: str, advertiser: int) -> bool:
    hosts = world.call(node, "POST", "/v1/discover", {"service": service})["hosts"]
    return any(h["identity_key"] == world.key(advertiser) for h in hosts)


# -- convergence: each property is a check of the real state, polled until it holds ------------------------------


class State:
    """What the properties are checked against: the blobs (hash -> publisher) and adverts (service -> node)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.blobs: dict[str, int] = {}
        self.adverts: dict[str, int] = {}
        self.pool = ThreadPoolExecutor(max_workers=7)

    def each(self, fn: Callable[[int], Any]) -> list[Any]:
        return list(self.pool.map(fn, range(self.world.n)))

    def holders(self) -> dict[str, set[int]]:
        def held(i: int) -> set[str]:
            return {str(c["hash"]) for c in self.world.call(i, "GET", "/v1/content")["content"] if c.get("local")}

        listings = self.each(held)
        return {h: {i for i, hashes in enumerate(listings) if h in hashes} for h in self.blobs}

    def links(self) -> bool:
        def linked(i: int) -> bool:
            keys = {p["identity_key"] for p in self.world.call(i, "GET", "/v1/peers")["peers"]}
            return keys >= {self.world.key(j) for j in range(self.world.n) if j != i}

        return all(self.each(linked))

    def routing(self) -> bool:
        return all(
            int(self.world.call(i, "GET", "/v1/status")["dht_contacts"]) >= self.world.n - 1
            for i in range(self.world.n)
        )

    def _publishers(self, i: int, namespace: str, name: str) -> set[str]:
        records = self.world.call(i, "POST", "/v1/dht/get", {"namespace": namespace, "name": name})["records"]
        return {str(r["publisher"]) for r in records}

    def node_records(self) -> bool:
        def finds(i: int) -> bool:
            return all(
                self.world.key(j) in self._publishers(i, "node", self.world.key(j))
                for j in range(self.world.n)
                if j != i
            )

        return all(self.each(finds))

    def providers(self) -> bool:
        holders = self.holders()

        def finds(i: int) -> bool:
            for content, held in holders.items():
                wanted = {self.world.key(j) for j in held}
                if not wanted <= self._publishers(i, "uhrp", content):
                    return False
            return True

        return all(self.each(finds))

    def adverts_seen(self) -> bool:
        def finds(i: int) -> bool:
            return all(discovers(self.world, i, service, node) for service, node in self.adverts.items())

        return all(self.each(finds))

    def replicas(self) -> dict[str, int]:
        return {h: len(held - {self.blobs[h]}) for h, held in self.holders().items()}

    def replication(self) -> bool:
        return all(n >= REPLICATION for n in self.replicas().values())

    def replication_exact(self) -> bool:
        return all(n == REPLICATION for n in self.replicas().values())


def poll_until(check: Callable[[], bool], start: float, deadline: float) -> float | None:
    """Seconds from ``start`` until ``check()`` first held, or None if it did not by ``deadline`` (then the last
    error a poll raised, if any, is printed)."""
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return round(time.monotonic() - start, 2)
        except Exception as exc:  # noqa: BLE001 - a node busy with the heal may fail a poll: poll again
            error = exc
        time.sleep(POLL)
    if error is not None:
        print(f"{check.__name__}: the last poll failed: {type(error).__name__}: {error}")
    return None


def converge(state: State, stream: Stream, healed: float) -> dict[str, float | None]:
    deadline = healed + CONVERGE_DEADLINE
    checks: dict[str, Callable[[], bool]] = {
        "links": state.links,
        "routing": state.routing,
        "node_records": state.node_records,
        "providers": state.providers,
        "adverts": state.adverts_seen,
        "replication": state.replication,
        "replication_exact": state.replication_exact,
    }
    with ThreadPoolExecutor(max_workers=len(checks) + 1) as pool:
        futures = {name: pool.submit(poll_until, check, healed, deadline) for name, check in checks.items()}
        # a packet pushed after the heal reaches the consumer across the cut
        resumed = pool.submit(stream.readers[FAR].first_from, stream.head(), CONVERGE_DEADLINE)
        out = {name: f.result() for name, f in futures.items()}
        at = resumed.result()
    out["stream"] = None if at is None else round(at - healed, 2)
    return out


def test_a_cluster_split_4_3_for_30s_keeps_working_on_each_side_and_converges_after_the_heal(
    fabric: Fabric, tmp_path: Path
) -> None:
    begun = time.monotonic()
    with (
        Cluster(7, root=tmp_path / "c", extra_args=SETTINGS, tls=False, placement=fabric) as cluster,
        Stream(World(cluster, tmp_path / "work"), STREAM, PRODUCER, [NEAR, FAR]) as stream,
    ):
        world = stream.world
        near, far = stream.readers[NEAR], stream.readers[FAR]
        state = State(world)
        try:
            # before the cut: content with R = 3 from each side, an advert from each side
            state.blobs[publish(world, 0, tmp_path, wait=True)] = 0
            state.blobs[publish(world, 4, tmp_path, wait=True)] = 4
            for service, node in (("ls_before_a", 2), ("ls_before_b", 6)):
                advertise(world, node, service)
                state.adverts[service] = node
            assert poll_until(state.replication, time.monotonic(), time.monotonic() + 60) is not None

            fabric.cut()
            cut = time.monotonic()
            # each side keeps working: publishes (placed in the background) and adverts found on their own side
            state.blobs[publish(world, 0, tmp_path, wait=False)] = 0
            state.blobs[publish(world, 5, tmp_path, wait=False)] = 5
            for service, node, finder in (("ls_during_a", 3, 0), ("ls_during_b", 4, 6)):
                advertise(world, node, service)
                state.adverts[service] = node
                assert discovers(world, finder, service, node), f"node{finder} does not find {service} of node{node}"
            time.sleep(max(0.0, cut + PARTITION_SECONDS - time.monotonic()))  # the partition is the scenario
            fabric.heal()
            healed = time.monotonic()

            # the partition was real, and the stream kept flowing on the producer's side
            assert near.between(cut + 5, healed) > 0, f"no packet reached node{NEAR} during the partition"
            assert far.between(cut + 5, healed) == 0, f"packets crossed the cut to node{FAR}"

            times = converge(state, stream, healed)
            far_ended = far.ended  # the subscription across the cut must still be the one from before
        finally:
            state.pool.shutdown()
    result = {
        "nodes": len(SIDES),
        "sides": {"A": SIDE_A, "B": SIDE_B},
        "partition_seconds": PARTITION_SECONDS,
        "replication": REPLICATION,
        "settings": SETTINGS[1::2],
        "converge_seconds_after_heal": times,
        "test_seconds": round(time.monotonic() - begun, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\npartition 4/3 for {PARTITION_SECONDS:g}s, seconds to converge after the heal:")
    for name, seconds in times.items():
        print(f"  {name:<18} {'not converged' if seconds is None else f'{seconds:.2f}'}")
    assert far_ended is None, f"the subscription across the cut ended: {far_ended}"
    missing = [name for name, seconds in times.items() if seconds is None]
    assert not missing, f"not converged {CONVERGE_DEADLINE:g}s after the heal: {missing} ({times})"
