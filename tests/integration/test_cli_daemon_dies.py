"""A daemon killed (kill -9) while ``ctl subscribe`` streams from it: the CLI ends with one line and the network
exit code, never a traceback. Daemons and the devnet are subprocesses (scripts/cluster.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from cluster import Cluster, _cli

from overlay_node.errors import EXIT_CODES

pytestmark = pytest.mark.cluster


def test_subscribe_ends_with_one_line_when_its_daemon_is_killed(tmp_path: Path) -> None:
    with Cluster(2, root=tmp_path / "c") as cluster:
        producer, consumer = 0, 1
        cluster.ctl(consumer, "ctl", "wallet", "faucet", "100000")
        cluster.ctl(producer, "ctl", "stream", "create", "--stream-id", "ticks", "--rate", "1")
        source = tmp_path / "packets.ndjson"
        source.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(20)))
        cluster.ctl(producer, "ctl", "stream", "push", "ticks", "--file", str(source))
        sub = subprocess.Popen(
            [*_cli(), "--data-dir", cluster.members[consumer].data_dir, "ctl", "subscribe", "ticks", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert sub.stdout is not None
            first = json.loads(sub.stdout.readline())  # the stream is flowing: the event we kill on
            assert first["seq"] == 0
            assert first["payload"] == {"n": 0}  # a JSON packet is JSON in the line, not a string
            cluster.kill(consumer)
            _out, err = sub.communicate(timeout=60)
        finally:
            if sub.poll() is None:
                sub.kill()
        assert sub.returncode == EXIT_CODES["daemon_closed"] == 7, err
        assert "Traceback" not in err
        assert err.strip().splitlines() == [
            "error: the daemon closed the connection during `overlay-node ctl subscribe`; see its log"
        ]
