"""A node of a scripts/cluster.py cluster killed with SIGKILL and restarted rejoins the others by itself: it comes
back on the ports it had (cluster.json stays true) and redials the peers it knew, without ``ctl connect``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from cluster import Cluster

pytestmark = pytest.mark.cluster

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.py"
# the survivors' own reconnect loops wait a minute or more before they redial a lost peer: within the test's wait only
# the restarted node's redial of its known peers can link it again
SLOW_RECONNECT = ["--set", "swarm.reconnect_min=120", "--set", "swarm.reconnect_max=240"]


def peer_keys(cluster: Cluster, i: int) -> set[str]:
    peers = json.loads(cluster.ctl(i, "--json", "ctl", "peers").stdout)["peers"]
    return {p["identity_key"] for p in peers}


def test_a_killed_node_restarted_on_its_ports_links_with_the_others_by_itself(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with Cluster(3, root=root, extra_args=SLOW_RECONNECT, tls=False) as cluster:
        keys = [m.identity_key for m in cluster.members]
        before = cluster.members[2]
        cluster.kill(2)

        # restart through the script's command line, as an operator would, from cluster.json alone
        restarted = subprocess.run(
            [sys.executable, str(SCRIPT), "restart", "2", "--dir", str(root)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert restarted.returncode == 0, restarted.stderr
        state = json.loads((root / "cluster.json").read_text())
        after = state["members"][2]
        assert after["identity_key"] == before.identity_key
        assert (after["swarm"], after["http"], after["dht"]) == (before.swarm, before.http, before.dht)
        assert after["pid"] != before.pid
        cluster.members[2].pid = after["pid"]  # down() at the end stops the restarted process too

        # the restarted node links with both others (server-side wait on link events), and they with it
        others = [keys[0], keys[1]]
        linked = cluster.control(2, "POST", "/v1/peers/wait", {"identity_keys": others, "timeout": 30})
        assert linked == {"linked": others}
        for i in (0, 1):
            cluster.control(i, "POST", "/v1/peers/wait", {"identity_keys": [keys[2]], "timeout": 30})
        assert peer_keys(cluster, 2) == set(others)


def test_restart_refuses_a_running_node_and_a_missing_one(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with Cluster(1, root=root, tls=False):
        running = subprocess.run(
            [sys.executable, str(SCRIPT), "restart", "0", "--dir", str(root)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert running.returncode != 0
        assert "kill it first" in running.stderr
        missing = subprocess.run(
            [sys.executable, str(SCRIPT), "restart", "5", "--dir", str(root)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert missing.returncode != 0
        assert "no node 5" in missing.stderr
