"""A consumer daemon killed with kill -9 in the middle of a paid stream: after its restart, its report (``ctl report``)
still counts the packets it paid for. Daemons and the devnet are subprocesses (scripts/cluster.py).

The consumer writes its subscription's row before each batch of its payments is written ahead (services/
streams_consumer.py, theory of operation 6), so whatever the kill took back, the satoshis its report gives (its
payments' history entries, written ahead) cover the packets the row counts, and at most the pay-ahead more.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from cluster import Cluster, _cli

pytestmark = pytest.mark.cluster

RATE = 2
PACKETS = 600
#: packets paid ahead at most (W = 1, so windows)
AHEAD = 8
#: packets the subscriber's CLI has read when the consumer daemon is killed
KILL_AT = 200


def test_a_consumer_killed_mid_stream_reports_every_packet_it_paid_for(tmp_path: Path) -> None:
    with Cluster(2, root=tmp_path / "c") as cluster:
        producer, consumer = 0, 1
        cluster.ctl(consumer, "ctl", "wallet", "faucet", "100000")
        cluster.ctl(producer, "ctl", "stream", "create", "--stream-id", "ticks", "--rate", str(RATE))
        payloads = [json.dumps({"n": f"{i:05d}"}) for i in range(PACKETS)]
        size = len(payloads[0])  # every payload has this many bytes
        source = tmp_path / "packets.ndjson"
        source.write_text("".join(p + "\n" for p in payloads))
        cluster.ctl(producer, "ctl", "stream", "push", "ticks", "--file", str(source))

        command = [*_cli(), "--data-dir", cluster.members[consumer].data_dir, "ctl", "subscribe", "ticks", "--json"]
        command += ["--auto-pay-interval", "1", "--prepay", str(AHEAD), "--max-price", str(RATE)]
        sub = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert sub.stdout is not None
            seqs = [json.loads(sub.stdout.readline())["seq"] for _ in range(KILL_AT)]
            assert seqs == list(range(KILL_AT))  # the stream is flowing, every packet paid as it comes
            cluster.kill(consumer)
            sub.communicate(timeout=60)
        finally:
            if sub.poll() is None:
                sub.kill()
        cluster.restart(consumer)

        report = json.loads(cluster.ctl(consumer, "--json", "ctl", "report").stdout)
        (row,) = [s for s in report["streams"] if s["stream_id"] == "ticks"]
        packets, satoshis = row["packets"], row["satoshis"]
        # the CLI read KILL_AT packets, each paid before the producer sent it: their payments were written ahead
        assert satoshis >= KILL_AT * RATE, row
        # the row counts every packet paid for but the pay-ahead, and no packet that was not paid for
        assert packets * RATE <= satoshis <= (packets + AHEAD) * RATE, row
        assert packets >= KILL_AT - AHEAD, row
        assert row["bytes"] == packets * size, row
        assert row["payments"] == satoshis // RATE, row
