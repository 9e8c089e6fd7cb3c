"""The live-streaming seed scenario through the CLI: daemons and a devnet as subprocesses, a producer pushing a
file, a consumer paying per window and writing NDJSON, both sides' accounting equal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from cluster import Cluster

pytestmark = pytest.mark.cluster

RATE = 3


def test_stream_create_push_subscribe_status_close(tmp_path: Path) -> None:
    with Cluster(2, root=tmp_path / "c") as cluster:
        producer, consumer = 0, 1
        cluster.ctl(consumer, "--json", "ctl", "wallet", "faucet", "100000")
        created = json.loads(
            cluster.ctl(
                producer,
                "--json",
                "ctl",
                "stream",
                "create",
                "--stream-id",
                "ticker",
                "--pricing-model",
                "per-packet",
                "--rate",
                str(RATE),
            ).stdout
        )
        assert created["stream_id"] == "ticker"
        source = tmp_path / "packets.ndjson"
        source.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(200)))
        cluster.ctl(producer, "ctl", "stream", "push", "ticker", "--file", str(source))

        out = tmp_path / "got.ndjson"
        run = cluster.ctl(
            consumer,
            "--json",
            "ctl",
            "subscribe",
            "ticker",
            "--auto-pay-interval",
            "10",
            "--prepay",
            "40",
            "--duration",
            "4",
            "--max-price",
            str(RATE),
            "--output",
            str(out),
        )
        summary = json.loads(run.stdout)
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert [g["seq"] for g in got] == list(range(200))
        assert [g["payload"] for g in got] == [{"n": i} for i in range(200)]  # JSON packets are written as JSON
        assert summary["packets"] == 200
        assert summary["paid_satoshis"] == 200 * RATE
        assert summary["payments"] == 20
        assert summary["ahead"] == 4  # --prepay 40 at W = 10: four windows paid ahead at most

        status = json.loads(cluster.ctl(producer, "--json", "ctl", "stream", "status", "ticker").stdout)
        (row,) = status["subscribers"]
        assert row["identity_key"] == cluster.members[consumer].identity_key
        assert row["packets"] == 200
        assert row["paid_satoshis"] == 200 * RATE

        # a price above --max-price stops cleanly with a payment exit code
        dear = cluster.ctl(consumer, "ctl", "subscribe", "ticker", "--max-price", "1", "--duration", "2", check=False)
        assert dear.returncode == 11, dear.stderr
        closed = json.loads(cluster.ctl(producer, "--json", "ctl", "stream", "close", "ticker").stdout)
        assert closed["closed"] is True


def test_sequence_numbers_are_never_used_twice_across_a_crash(tmp_path: Path) -> None:
    # positions are flushed rarely here: only the reservation written before packets go out can save the day
    with Cluster(1, root=tmp_path / "c", extra_args=["--set", "streams.flush_interval=3600"]) as cluster:
        cluster.ctl(0, "--json", "ctl", "stream", "create", "--stream-id", "seq", "--rate", "1")
        source = tmp_path / "packets.ndjson"
        source.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(50)))
        cluster.ctl(0, "ctl", "stream", "push", "seq", "--file", str(source))
        listed = json.loads(cluster.ctl(0, "--json", "ctl", "stream", "list").stdout)["streams"]
        assert [s["head"] for s in listed if s["stream_id"] == "seq"] == [50]
        cluster.kill(0)
        cluster.restart(0)
        listed = json.loads(cluster.ctl(0, "--json", "ctl", "stream", "list").stdout)["streams"]
        (head,) = [s["head"] for s in listed if s["stream_id"] == "seq"]
        assert head >= 50  # numbers 0-49 were handed out: the stream goes on after them (with a gap), not at 0
        cluster.ctl(0, "ctl", "stream", "push", "seq", "--file", str(source))
        listed = json.loads(cluster.ctl(0, "--json", "ctl", "stream", "list").stdout)["streams"]
        assert [s["head"] for s in listed if s["stream_id"] == "seq"] == [head + 50]
