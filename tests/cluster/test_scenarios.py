"""The three end-to-end scenarios through the CLI (``scripts/scenarios.py``, the code
``scripts/demo.py`` runs too), on one cluster of daemons and a devnet as subprocesses: live streaming with
micropayments, premium content, a multi-producer marketplace. Every payment must reconcile across the consumer's
``ctl report``, the producer's ``ctl analytics`` and both wallets. Also the errors of ``ctl stream push --follow``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from cluster import Cluster, _cli
from scenarios import NODES, Outcome, live_streaming, marketplace, premium_content

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the three scenarios, as the demo runs them (each reads its own time range and differences)."""
    with Cluster(NODES, root=tmp_path_factory.mktemp("scenarios") / "c") as cluster:
        yield cluster


def reconciled(outcome: Outcome) -> None:
    assert not outcome.error, outcome.error
    assert outcome.checks
    assert [str(c) for c in outcome.failures] == []


def test_live_streaming_with_micropayments(cluster: Cluster, tmp_path: Path) -> None:
    outcome = live_streaming(cluster, tmp_path)
    reconciled(outcome)
    assert outcome.satoshis == 3 * 200 * 2
    assert outcome.payments == 200 + 20 + 2  # W = 1, 10 and 100


def test_premium_content(cluster: Cluster, tmp_path: Path) -> None:
    outcome = premium_content(cluster, tmp_path)
    reconciled(outcome)
    assert (outcome.payments, outcome.satoshis) == (1, 500)


def test_multi_producer_marketplace(cluster: Cluster, tmp_path: Path) -> None:
    outcome = marketplace(cluster, tmp_path)
    reconciled(outcome)
    assert outcome.satoshis == 50 * 2 + 50 * 3 + 700
    assert outcome.payments == 5 + 5 + 1


def push_follow(cluster: Cluster, i: int, stream_id: str, lines: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_cli(), "--data-dir", cluster.members[i].data_dir, "ctl", "stream", "push", stream_id, "--follow"],
        input=lines,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_push_follow_refuses_bad_streams_and_lines_with_one_line(cluster: Cluster) -> None:
    # an unknown stream: refused before any input is read
    unknown = push_follow(cluster, 2, "no-such-stream", "a\n")
    assert unknown.returncode == 9, unknown.stderr
    assert unknown.stderr.strip().splitlines() == ["error: no stream 'no-such-stream' on this node: create it first"]
    cluster.ctl(2, "ctl", "stream", "create", "--stream-id", "follow-errors")
    # a line over the packet limit (streams.max_packet): the daemon's answer in one line, nothing pushed
    too_long = push_follow(cluster, 2, "follow-errors", "x" * 70_000 + "\n")
    assert too_long.returncode == 2, too_long.stderr
    (line,) = too_long.stderr.strip().splitlines()
    assert line.startswith("error: "), line
    assert "65536 bytes" in line, line
    fed = push_follow(cluster, 2, "follow-errors", "one\n\ntwo\n")  # blank lines are not packets
    assert fed.returncode == 0, fed.stderr
    listed = json.loads(cluster.ctl(2, "--json", "ctl", "stream", "list").stdout)["streams"]
    (head,) = [s["head"] for s in listed if s["stream_id"] == "follow-errors"]
    assert head == 2
    cluster.ctl(2, "ctl", "stream", "close", "follow-errors")
    closed = push_follow(cluster, 2, "follow-errors", "late\n")
    assert closed.returncode == 10, closed.stderr
    assert "is closed" in closed.stderr
