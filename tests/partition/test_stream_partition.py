"""A subscription across a cut that outlasts the producer's grace period: the producer closes it (no payment came
within ``streams.grace_period``) while the consumer's payment is held up in the network. Once the link heals the
consumer subscribes again from its next sequence number and packets flow, in the same subscription."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from netns import Fabric

from tests.partition.traffic import Stream
from tests.soak.world import Cluster, World

pytestmark = pytest.mark.cluster

STREAM = "cut-ticker"
GRACE = 2.0


def producer_closed(world: World, consumer: int) -> bool:
    status = world.call(0, "GET", f"/v1/streams/{STREAM}")
    return any(
        s["identity_key"] == world.key(consumer) and s["reason"] == "payment_timeout" for s in status["subscribers"]
    )


def test_a_consumer_resumes_when_the_producer_closed_its_subscription_during_a_partition(
    pair: Fabric, tmp_path: Path
) -> None:
    settings = ["--set", f"streams.grace_period={GRACE:g}"]
    with (
        Cluster(2, root=tmp_path / "c", extra_args=settings, tls=False, placement=pair) as cluster,
        Stream(World(cluster, tmp_path / "work"), STREAM, 0, [1]) as stream,
    ):
        reader = stream.readers[1]
        pair.cut()
        # the producer runs out of credit, pauses, and closes the subscription after the grace period
        deadline = time.monotonic() + 30
        while not producer_closed(stream.world, 1):
            assert time.monotonic() < deadline, "the producer did not close the subscription across the cut"
            time.sleep(0.2)
        pair.heal()
        head = stream.head()  # packets from here on were pushed after the heal: only a new subscription gets them
        assert reader.first_from(head, 60) is not None, f"no packet pushed after the heal arrived: {reader.ended}"
        assert reader.ended is None
        seqs = [seq for _, seq in reader.arrivals]
        assert seqs == list(range(len(seqs)))  # resumed from its next sequence number: no gap, no repeat
