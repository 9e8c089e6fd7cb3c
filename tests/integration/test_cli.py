"""The CLI against a real daemon in this process (the CLI runs in a worker thread, as it is synchronous)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio
from typer.testing import CliRunner, Result

from overlay_cli.main import app
from tests.conftest import NodeFactory


async def cli(*args: str) -> Result:
    runner = CliRunner()
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(lambda: runner.invoke(app, list(args)))


async def cli_process(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "overlay_cli.main", *args], capture_stdout=True, capture_stderr=True, check=False
        )


async def test_ctl_status_peers_connect_stop(start_node: NodeFactory) -> None:
    a = await start_node("a")
    b = await start_node("b")
    dir_a = str(a.data_dir.path)

    status = await cli("--data-dir", dir_a, "--json", "ctl", "status")
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["identity_key"] == a.info.identity_key
    human = await cli("--data-dir", dir_a, "ctl", "status")
    assert human.exit_code == 0
    assert a.info.identity_key in human.stdout

    linked = await cli("--data-dir", dir_a, "--json", "ctl", "connect", b.info.swarm[0])
    assert linked.exit_code == 0, linked.output
    assert json.loads(linked.stdout)["identity_key"] == b.info.identity_key
    peers = await cli("--data-dir", dir_a, "--json", "ctl", "peers")
    assert [p["identity_key"] for p in json.loads(peers.stdout)["peers"]] == [b.info.identity_key]

    stopped = await cli("--data-dir", dir_a, "ctl", "stop")
    assert stopped.exit_code == 0, stopped.output
    assert "stopped" in stopped.stdout
    assert not a.data_dir.api_path.exists()


async def test_clear_errors_and_exit_codes(tmp_path: Path, start_node: NodeFactory) -> None:
    missing = await cli("--data-dir", str(tmp_path / "none"), "ctl", "status")
    assert missing.exit_code == 5
    assert "no daemon is running for" in missing.stderr
    assert f"overlay-node --data-dir {tmp_path / 'none'} run" in missing.stderr
    assert "Traceback" not in missing.output

    node = await start_node("a")
    bad_addr = await cli("--data-dir", str(node.data_dir.path), "ctl", "connect", "127.0.0.1:1")
    assert bad_addr.exit_code == 7, bad_addr.output
    assert bad_addr.stderr.startswith("error:")

    # `run` owns its process (signals, logging), so it runs as one
    bad_set = await cli_process("--data-dir", str(tmp_path / "x"), "run", "--set", "swarm.port=huge")
    assert bad_set.returncode == 3
    assert b"swarm.port" in bad_set.stderr

    locked = await cli_process("--data-dir", str(node.data_dir.path), "run", "--swarm-port", "0", "--http-port", "0")
    assert locked.returncode == 4
    assert b"another daemon" in locked.stderr
    assert b"Traceback" not in locked.stderr


async def test_init_is_idempotent(tmp_path: Path) -> None:
    first = await cli("--data-dir", str(tmp_path / "n"), "--json", "init")
    second = await cli("--data-dir", str(tmp_path / "n"), "--json", "init")
    assert first.exit_code == second.exit_code == 0
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["created"] is True
    assert two["created"] is False
    assert one["identity_key"] == two["identity_key"]
    assert len(one["identity_key"]) == 66
