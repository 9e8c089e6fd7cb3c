"""No silent loss of state, private files, nothing left behind: real ``overlay-node`` processes on real data dirs.

- A ``node.db`` that is there but empty or not a database is damage: the node refuses it (a database is only ever
  created whole, under a temporary name, then put in place).
- A data dir whose node has run (``node.db``) but whose ``identity.key`` is gone is refused by ``run`` and ``init``,
  never given a new identity.
- The files of a node are its user's alone; a stopped node (SIGINT, SIGTERM, ``ctl stop``) leaves no socket or
  lock file; what a ``kill -9`` leaves is harmless; ``ctl stop`` returns once the process is gone.
- A payment the payee never answered is resolved at its deadline (settlement queue on a moved clock).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from overlay_node.config import StoreSection
from overlay_node.crypto.keys import Identity
from overlay_node.datadir import DataDir
from overlay_node.errors import PeerTimeout, StoreError
from overlay_node.metrics import Metrics
from overlay_node.net.peers import PeerLink, PeerManager
from overlay_node.services.payments import Payments
from overlay_node.services.settlement import Settlement
from overlay_node.services.wallet import Wallet
from overlay_node.store.db import open_store
from overlay_node.store.migrations import MIGRATIONS
from tests.conftest import MovableClock

from .test_payments import DevnetFactory, link, start_devnet, start_paynode, wallet_config

__all__ = ["start_devnet"]  # a fixture, imported to be used here

LIMIT = 60  # seconds per test: a few daemon starts on a shared 2-core machine
DAEMON_ARGS = (
    "--swarm-host",
    "127.0.0.1",
    "--swarm-port",
    "0",
    "--http-host",
    "127.0.0.1",
    "--http-port",
    "0",
    "--dht-port",
    "0",
    "--set",
    "dht.host=127.0.0.1",
    "--set",
    "node.shutdown_grace=2",
)


def _cli_args(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "overlay_cli.main", "--data-dir", str(data_dir), *args]


async def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """One CLI command in its own process, to its end."""
    return await trio.run_process(_cli_args(data_dir, *args), capture_stdout=True, capture_stderr=True, check=False)


@dataclasses.dataclass
class Daemon:
    """An ``overlay-node run`` process; ``info`` is what it printed when ready."""

    process: trio.Process
    info: dict[str, Any]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


async def start_daemon(data_dir: Path, log: Path) -> Daemon:
    """Start ``overlay-node --json run`` and wait for its ready line on stdout (stderr goes to ``log``)."""
    with log.open("wb") as err:
        process = await trio.lowlevel.open_process(
            _cli_args(data_dir, "--json", "run", *DAEMON_ARGS), stdout=subprocess.PIPE, stderr=err
        )
    assert process.stdout is not None
    buffer = b""
    while b"\n" not in buffer:
        chunk = await process.stdout.receive_some(65536)
        if not chunk:
            await process.wait()
            text = await trio.Path(log).read_text(errors="replace")
            raise AssertionError(f"the daemon exited ({process.returncode}): {text}")
        buffer += chunk
    return Daemon(process=process, info=json.loads(buffer.split(b"\n")[0]), stderr_path=log)


async def refused(data_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """A command that must end by itself (a refusal); one that keeps running (a daemon that started) fails the
    test instead of hanging it."""
    with trio.move_on_after(30):
        return await cli(data_dir, *args)
    raise AssertionError(f"`{' '.join(args)}` did not end: it was not refused")


def _error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The one ``error:`` line a refused command printed (log lines may come before it, never a traceback)."""
    text = result.stderr.decode()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert "Traceback" not in text
    assert text.splitlines()[-1] == errors[0]
    return errors[0]


async def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in await trio.Path(directory).iterdir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# -- a damaged node.db is refused, never taken for a new one --------------------------------------------------------


@pytest.mark.parametrize(("content", "what"), [(b"", "is empty"), (b"\x00" * 4096, "is not a database")])
async def test_an_empty_or_foreign_node_db_is_refused(tmp_path: Path, content: bytes, what: str) -> None:
    data_dir = tmp_path / "node"
    with trio.fail_after(LIMIT):
        assert (await cli(data_dir, "init")).returncode == 0
        db = data_dir / "node.db"
        db.write_bytes(content)
        result = await refused(data_dir, "run", *DAEMON_ARGS)
    assert result.returncode == StoreError.exit_code == 8
    line = _error_line(result)
    assert line.startswith(f"error: database {db} {what}")
    assert "restore it from a backup" in line
    assert f"(mv {db} {db}.damaged)" in line
    assert db.read_bytes() == content  # left as it was found
    assert not (data_dir / "api.json").exists()


async def test_a_database_is_created_whole_or_not_at_all(tmp_path: Path) -> None:
    """A creation that fails half-way (here: a failing migration) leaves no database and no temporary file, so
    the next start creates it anew; a finished one is a complete, checkpointed SQLite file of mode 0600."""
    path = tmp_path / "node.db"
    broken = MIGRATIONS.copy()

    @broken.register("9999_fails")
    def _fails(conn: Any) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("disk on fire")

    with trio.fail_after(LIMIT):
        with pytest.raises(RuntimeError, match="disk on fire"):
            async with open_store(path, StoreSection(), migrations=broken):
                pass  # pragma: no cover
        assert await _names(tmp_path) == []
        async with open_store(path, StoreSection()) as store:
            assert [m.name for m in await store.applied_migrations()] == list(MIGRATIONS.names())
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    assert _mode(path) == 0o600
    assert await _names(tmp_path) == ["node.db"]


# -- a lost identity is refused, never replaced ---------------------------------------------------------------------


async def test_a_missing_identity_beside_a_database_is_refused_by_run_and_init(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    with trio.fail_after(LIMIT):
        assert (await cli(data_dir, "init")).returncode == 0
        async with open_store(data_dir / "node.db", StoreSection()):  # the node has run
            pass
        (data_dir / "identity.key").unlink()
        db_before = (data_dir / "node.db").read_bytes()
        for args in (("run", *DAEMON_ARGS), ("init",)):
            result = await refused(data_dir, *args)
            assert result.returncode == 4, (args, result.stderr)
            line = _error_line(result)
            assert f"identity.key is missing from {data_dir} but node.db is there" in line
            assert "restore identity.key from a backup" in line
            assert f"(mv {data_dir} {data_dir}.old)" in line
            assert not (data_dir / "identity.key").exists()  # not invented
            assert (data_dir / "node.db").read_bytes() == db_before  # not touched
        # without a database it is a new node: init makes its identity
        (data_dir / "node.db").unlink()
        assert (await cli(data_dir, "init")).returncode == 0
        assert (data_dir / "identity.key").exists()


# -- private files; nothing left behind by an orderly stop, nothing harmful by a kill -------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_files_are_private_and_a_signal_leaves_nothing_behind(tmp_path: Path, signum: int) -> None:
    data_dir = tmp_path / "node"
    with trio.fail_after(LIMIT):
        assert (await cli(data_dir, "init")).returncode == 0
        daemon = await start_daemon(data_dir, tmp_path / "stderr.log")
        sample = tmp_path / "sample.txt"
        sample.write_text("private bytes\n" * 100)
        published = await cli(data_dir, "ctl", "publish", str(sample), "--replication", "0")
        assert published.returncode == 0, published.stderr
        running = sorted(p.name for p in data_dir.iterdir())
        for name in ("node.db", "node.db-wal", "node.db-shm", "control.sock", "node.lock", "api.json"):
            assert name in running
        files = [p for p in data_dir.rglob("*") if not p.is_dir()]
        dirs = [data_dir, *(p for p in data_dir.rglob("*") if p.is_dir())]
        assert any(p.is_relative_to(data_dir / "blobs") for p in files)  # the published blob
        assert any(p.name == "ledger.db" for p in files)  # the embedded devnet's
        assert {str(p.relative_to(data_dir)): oct(_mode(p)) for p in files if _mode(p) != 0o600} == {}
        assert {str(p.relative_to(data_dir)): oct(_mode(p)) for p in dirs if _mode(p) != 0o700} == {}

        daemon.process.send_signal(signum)
        assert await daemon.process.wait() == 0, daemon.stderr()
    left = sorted(p.name for p in data_dir.iterdir())
    for name in ("control.sock", "node.lock", "api.json", "node.db-wal", "node.db-shm"):
        assert name not in left, left
    assert "Traceback" not in daemon.stderr()


async def test_what_kill_9_leaves_is_harmless_and_ctl_stop_returns_once_the_process_is_gone(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    dd = DataDir(data_dir)
    with trio.fail_after(LIMIT):
        assert (await cli(data_dir, "init")).returncode == 0
        first = await start_daemon(data_dir, tmp_path / "first.log")
        first.process.kill()
        await first.process.wait()
        left = sorted(p.name for p in data_dir.iterdir())
        for name in ("control.sock", "node.lock", "api.json"):
            assert name in left
        # the leftovers mislead nobody: no daemon answers, and a new one starts on the same dir
        status = await cli(data_dir, "ctl", "status")
        assert status.returncode == 5
        assert "no daemon is running" in status.stderr.decode()
        second = await start_daemon(data_dir, tmp_path / "second.log")
        assert second.info["identity_key"] == first.info["identity_key"]
        assert (await cli(data_dir, "ctl", "status")).returncode == 0

        stopped = await cli(data_dir, "ctl", "stop")
        # at once, without waiting: the process is gone, its files with it, and its lock free
        assert second.process.poll() == 0, stopped.stderr
        left = await _names(data_dir)
        for name in ("control.sock", "node.lock", "api.json"):
            assert name not in left, left
        with dd.lock():
            pass
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.decode().strip() == "daemon stopped"


# -- an unanswered payment is resolved at its deadline --------------------------------------------------------------


async def test_an_unanswered_payment_is_resolved_at_its_deadline(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory, virtual_clock: trio.testing.MockClock
) -> None:
    """The payee takes the payment and never answers (as if killed); with the default intervals (poll 5 s, retry
    doubling up to 300 s, deadline 600 s) the payer's coins come back at the deadline, not up to 300 s later. The
    test moves both clocks (trio's and the wall clock) to each moment the queue wakes."""
    clock = MovableClock()
    cfg = wallet_config(settle_retry_min=1.0, settle_retry_max=300.0, settle_poll_interval=5.0)
    assert cfg.unanswered_timeout == 600.0
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        payee = await start_paynode(nursery, tmp_path, "b", devnet.url)

        async def black_hole(_link: PeerLink, _body: dict[str, Any]) -> dict[str, Any]:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        payee.peers.on_request("pay.submit", black_hole)
        payer = await _start_payer(nursery, tmp_path, devnet.url, cfg, clock)
        await link(payer, payee)  # type: ignore[arg-type]
        await payer.wallet.faucet(6_000)
        quote = await payer.payments.request_quote(payee.key, "file:void", 2_957)
        with pytest.raises(PeerTimeout):
            await payer.payments.pay(quote)
        (entry,) = [h for h in await payer.wallet.history() if h.direction == "out"]
        assert entry.status == "unknown"
        job = await payer.store.settlement.get(entry.txid)
        assert job is not None
        assert job.kind == "watch"
        assert job.deadline is not None
        deadline = job.deadline

    while not job.done:  # each update is of this job or of the faucet's (polled until mined)
        updated = payer.settlement.updated()
        step = job.next_at - clock()
        if step > 0:  # to the moment the queue wakes for this job
            clock.offset += step
            virtual_clock.jump(step)
        with trio.fail_after(LIMIT):  # trio time: started after the jump
            await updated.wait()
            job = await payer.store.settlement.get(entry.txid)
        assert job is not None
    assert job.state == "abandoned"
    # resolved within seconds of the deadline (it was up to settle_retry_max after it: 824 s after the payment)
    assert 0 <= job.next_at - deadline < 5, job.next_at - deadline
    assert job.attempts == 11  # asked at 5, 10, 15, 20, 28, 44, 76, 140, 268, 524 and 600 s
    with trio.fail_after(LIMIT):
        assert payer.wallet.balance().satoshis == 6_000
        assert [h.status for h in await payer.wallet.history() if h.direction == "out"] == ["abandoned"]


@dataclasses.dataclass
class _Payer:
    identity: Identity
    store: Any
    peers: PeerManager
    wallet: Wallet
    settlement: Settlement
    payments: Payments
    url: str

    @property
    def key(self) -> str:
        return self.identity.public_key_hex


async def _start_payer(nursery: trio.Nursery, tmp_path: Path, arc_url: str, cfg: Any, clock: MovableClock) -> _Payer:
    """A payer like ``start_paynode``'s, whose wallet, payments and settlement read ``clock``."""
    from overlay_node.config import SwarmSection

    ident = Identity.generate()

    async def run(*, task_status: trio.TaskStatus[_Payer] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_store(tmp_path / "payer.db", StoreSection()) as store, trio.open_nursery() as inner:
            metrics = Metrics()
            swarm = SwarmSection(host="127.0.0.1", port=0, keepalive_interval=60.0, request_timeout=0.5)
            peers = PeerManager(ident, swarm, metrics)
            wallet = Wallet(ident, cfg, store, metrics, arc_url=arc_url, wall_clock=clock)
            settle = Settlement(cfg, store, metrics, wallet, wall_clock=clock)
            payments = Payments(ident, cfg, store, metrics, peers, wallet, wall_clock=clock)
            urls: list[str] = await inner.start(peers.run)
            for service in (wallet, payments, settle):
                await inner.start(service.run)
            task_status.started(_Payer(ident, store, peers, wallet, settle, payments, urls[0]))

    payer: _Payer = await nursery.start(run)
    return payer
