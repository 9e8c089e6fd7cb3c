"""Daemons as real subprocesses through scripts/cluster.py, driven through the CLI."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from cluster import Cluster

pytestmark = pytest.mark.cluster


def test_three_daemons_link_and_answer_the_cli(tmp_path: Path) -> None:
    with Cluster(3, root=tmp_path / "c") as cluster:
        keys = {m.identity_key for m in cluster.members}
        assert len(keys) == 3
        for i, member in enumerate(cluster.members):
            status = json.loads(cluster.ctl(i, "--json", "ctl", "status").stdout)
            assert status["identity_key"] == member.identity_key
            assert status["ready"] is True
            peers = json.loads(cluster.ctl(i, "--json", "ctl", "peers").stdout)["peers"]
            assert {p["identity_key"] for p in peers} == keys - {member.identity_key}
        # SIGKILL one; the others keep answering, and the stopped one's CLI says no daemon... once its api.json
        # is gone; a killed daemon leaves api.json behind, so the CLI reports it cannot reach the socket
        cluster.kill(2)
        for i in (0, 1):
            assert json.loads(cluster.ctl(i, "--json", "ctl", "status").stdout)["ready"] is True
        dead = cluster.ctl(2, "ctl", "status", check=False)
        assert dead.returncode == 5
        assert "no daemon is running" in dead.stderr
        stopped = cluster.ctl(1, "ctl", "stop")
        assert "stopped" in stopped.stdout
        assert not (Path(cluster.members[1].data_dir) / "api.json").exists()


def test_adverts_survive_kill_9_of_two_nodes_during_publishing(tmp_path: Path) -> None:
    with Cluster(10, root=tmp_path / "c") as cluster:
        victims = {8, 9}
        keys = [m.identity_key for m in cluster.members]

        def publish(i: int) -> None:
            if i in victims:
                cluster.kill(i)
                return
            cluster.ctl(i, "--json", "ctl", "advertise", "--service", "ls_feed", "--price", str(i))

        # every node publishes while two of them are killed with SIGKILL at the same moment
        with ThreadPoolExecutor(max_workers=10) as pool:
            list(pool.map(publish, range(10)))
        survivors = [i for i in range(10) if i not in victims]
        expected = {keys[i] for i in survivors}

        def discover(i: int) -> set[str]:
            found = json.loads(cluster.ctl(i, "--json", "ctl", "discover", "--service", "ls_feed").stdout)["hosts"]
            return {h["identity_key"] for h in found}

        with ThreadPoolExecutor(max_workers=8) as pool:
            seen = dict(zip(survivors, pool.map(discover, survivors), strict=True))
        assert seen == dict.fromkeys(survivors, expected)
        # the CLI of a killed node says so, with its exit code
        dead = cluster.ctl(8, "ctl", "status", check=False)
        assert dead.returncode == 5
