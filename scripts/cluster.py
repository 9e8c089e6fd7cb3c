#!/usr/bin/env python3
"""Start and stop a cluster of overlay-node daemons on 127.0.0.1.

    python scripts/cluster.py up 5 [--dir D] [--base-port P]   # start 5 daemons, link them, print a table
    python scripts/cluster.py down [--dir D]                    # stop every daemon of the cluster
    python scripts/cluster.py kill I [--dir D]                  # kill -9 node I (failure drills)
    python scripts/cluster.py restart I [--dir D]               # start node I again on its data dir and ports

Every daemon is a real ``overlay-node run`` subprocess with its own data dir under the cluster dir (default
``./.cluster``), bootstrapped (peer link and DHT) to the first, and every one settles payments through one shared
``overlay-node devnet`` ledger process. While the cluster is small (N <= 10) every pair is linked explicitly;
larger clusters rely on the bootstrap links until the DHT takes over discovery. ``cluster.json`` in the cluster dir
records the members so that ``down`` (or another script) finds them; a restarted node comes back on the ports it
had (so the others' links and bootstrap addresses stay valid, and so does ``cluster.json``) and redials the peers it
knew.

The nodes' http ports serve https:// with certificates from one local CA (``<dir>/ca/ca.pem``, trusted by every
node for the others; ``--no-tls`` serves plain http), so their SHIP/SLAP and UHRP tokens name URIs the official
rules accept. Point other clients at it: ``NODE_EXTRA_CA_CERTS=<dir>/ca/ca.pem`` for node, ``SSL_CERT_FILE`` or
``verify=`` for Python.

From tests, use :class:`Cluster` as a context manager::

    with Cluster(3, root=tmp_path) as cluster:
        cluster.ctl(0, "status")
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from overlay_cli.client import ControlClient  # noqa: E402

FULL_MESH_MAX = 10
START_TIMEOUT = 60.0


def _cli() -> list[str]:
    """How to invoke the CLI: the console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("overlay-node")
    return [str(script)] if script.exists() else [sys.executable, "-m", "overlay_cli.main"]


class UpDown:
    """A context manager over ``up()`` and ``down()``; ``down`` also runs when ``up`` fails half-way."""

    def up(self) -> object:
        raise NotImplementedError

    def down(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


class Placement:
    """Where a cluster's processes run and the address each binds: every one here, on 127.0.0.1. A test that puts
    each process in a network namespace of its own (tests/partition) passes a subclass."""

    def host(self, name: str) -> str:  # noqa: ARG002 - the same for every process here
        """The address process ``name`` (``devnet``, ``node0``, ...) binds."""
        return "127.0.0.1"

    def command(self, name: str, args: list[str]) -> list[str]:  # noqa: ARG002 - the same for every process here
        """The command line that starts process ``name`` with ``args``."""
        return args


@dataclass(slots=True)
class Member:
    name: str
    data_dir: str
    pid: int
    identity_key: str
    swarm: list[str]
    dht: str
    http: str
    control: str


class Cluster(UpDown):
    """N daemons as subprocesses; a context manager that stops them all on exit."""

    def __init__(
        self,
        n: int,
        *,
        root: Path,
        base_port: int | None = None,
        extra_args: list[str] | None = None,
        block_interval: float = 2.0,
        tls: bool = True,
        placement: Placement | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        self.n = n
        self.root = root
        self.base_port = base_port
        self.extra_args = extra_args or []
        self.block_interval = block_interval
        self.tls = tls
        self.placement = placement or Placement()
        self.members: list[Member] = []
        self.ledger = ""
        self.ledger_pid = 0
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- life cycle ------------------------------------------------------------------------------------------

    def _start_devnet(self) -> str:
        """One devnet ledger for the whole cluster; every node settles through it."""
        data_dir = self.root / "devnet"
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        port = "0" if self.base_port is None else str(self.base_port - 1)
        args = [*_cli(), "devnet", "--json", "--host", self.placement.host("devnet"), "--port", port]
        args += ["--data-dir", str(data_dir), "--block-interval", str(self.block_interval)]
        info, self.ledger_pid = self._spawn(self.placement.command("devnet", args), data_dir, "devnet")
        return str(info["url"])

    def _spawn(self, args: list[str], data_dir: Path, name: str) -> tuple[dict[str, Any], int]:
        """Start a process that prints one JSON line when it is ready; return that line and the pid."""
        log = open(data_dir / "daemon.log", "ab")  # noqa: SIM115 - handed to the child, closed below
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        log.close()
        self._procs.append(proc)
        assert proc.stdout is not None
        # the process prints one JSON line when every service is ready; that line is our readiness event
        line = proc.stdout.readline()
        if not line:
            code = proc.wait(timeout=START_TIMEOUT)
            tail = (data_dir / "daemon.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited with {code} before it was ready:\n{tail}")
        proc.stdout.close()
        info: dict[str, Any] = json.loads(line)
        return info, proc.pid

    def restart(self, i: int, extra_args: list[str] | None = None) -> Member:
        """Start node ``i`` again on its data dir and ports (after ``kill``), optionally with other flags."""
        old = self.members[i]
        ports = (_port(old.swarm[0]), _port(old.http), _port(old.dht))
        saved, self.extra_args = self.extra_args, extra_args if extra_args is not None else self.extra_args
        try:
            member = self._start(i, self.members[0] if i else None, ports=ports)
        finally:
            self.extra_args = saved
        self.members[i] = member
        self._save()
        return member

    def _start(self, i: int, bootstrap: Member | None, *, ports: tuple[str, str, str] | None = None) -> Member:
        data_dir = self.root / f"node{i}"
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        base = self.base_port
        name = f"node{i}"
        host = self.placement.host(name)
        if ports is None:
            ports = ("0", "0", "0") if base is None else (str(base + 2 * i), str(base + 2 * i + 1), str(base + 2 * i))
        args = [
            *_cli(), "--data-dir", str(data_dir), "--json", "run",
            "--name", name, "--swarm-host", host, "--swarm-port", ports[0],
            "--http-host", host, "--http-port", ports[1], "--set", f"dht.host={host}", "--dht-port", ports[2],
            *self.extra_args,
        ]  # fmt: skip
        if self.tls:
            args += self._tls_args(data_dir, host)
        if bootstrap:
            args += ["--bootstrap", bootstrap.swarm[0], "--dht-bootstrap", bootstrap.dht]
        if self.ledger:
            args += ["--set", f"wallet.arc_url={self.ledger}"]
        info, pid = self._spawn(self.placement.command(name, args), data_dir, name)
        return Member(
            name=name,
            data_dir=str(data_dir),
            pid=pid,
            identity_key=info["identity_key"],
            swarm=info["swarm"],
            dht=info["dht"],
            http=info["http"],
            control=info["control"],
        )

    @property
    def ca_file(self) -> Path:
        """The cluster's CA certificate (what clients trust to reach the nodes over https)."""
        return self.root / "ca" / "ca.pem"

    def _tls_args(self, data_dir: Path, host: str) -> list[str]:
        from overlay_node.tls import ensure_ca, issue_certificate

        ca = ensure_ca(self.root / "ca", "overlay-node cluster CA")
        cert, key = data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem"
        if not cert.exists() or not key.exists():
            issue_certificate(ca, cert, key, list(dict.fromkeys(["127.0.0.1", "localhost", host])))
        return [
            "--set", f"http.tls_cert={cert}", "--set", f"http.tls_key={key}", "--set", f"http.tls_ca={ca.cert}",
        ]  # fmt: skip

    def up(self) -> list[Member]:
        """Start every node, link them, and wait until they are all linked."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ledger = self._start_devnet()
        first = self._start(0, None)
        self.members = [first]
        with ThreadPoolExecutor(max_workers=8) as pool:
            rest = list(pool.map(lambda i: self._start(i, first), range(1, self.n)))
        self.members += rest
        self._save()
        if self.n <= FULL_MESH_MAX:
            self._link_all()
        return self.members

    def _link_all(self) -> None:
        pairs = [(i, j) for i in range(self.n) for j in range(i + 1, self.n)]

        def link(pair: tuple[int, int]) -> None:
            i, j = pair
            self.control(i, "POST", "/v1/peers/connect", {"address": self.members[j].swarm[0]})

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(link, pairs))
        # each node waits (server side, on events) until it has authenticated links to all the others
        everyone = [m.identity_key for m in self.members]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda i: self.control(
                        i,
                        "POST",
                        "/v1/peers/wait",
                        {"identity_keys": [k for k in everyone if k != self.members[i].identity_key], "timeout": 30},
                    ),
                    range(self.n),
                )
            )

    def down(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a grace period)."""
        # the processes started here, and members started elsewhere (``cluster.py restart`` from the shell)
        started = {proc.pid for proc in self._procs}
        procs: list[subprocess.Popen[bytes] | _Pid] = [*self._procs]
        procs += [_Pid(pid) for pid in [m.pid for m in self.members] + [self.ledger_pid] if pid and pid not in started]
        for proc in procs:
            _signal(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self._procs = []
        state = self.root / "cluster.json"
        if state.exists():
            state.unlink()

    def kill(self, i: int) -> None:
        """kill -9 one node (for failure tests)."""
        _signal(self.members[i].pid, signal.SIGKILL)
        for proc in self._procs:
            if proc.pid == self.members[i].pid:
                proc.wait(timeout=10)

    # -- acting on members -------------------------------------------------------------------------------------

    def control(self, i: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call one member's control API."""
        with ControlClient(Path(self.members[i].data_dir)) as client:
            return client.call(method, path, body)

    def ctl(self, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``overlay-node --data-dir <node i> <args...>`` and return the finished process."""
        return subprocess.run(
            [*_cli(), "--data-dir", self.members[i].data_dir, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def _save(self) -> None:
        state = {
            "ledger": self.ledger,
            "ledger_pid": self.ledger_pid,
            "tls": self.tls,
            "extra_args": self.extra_args,
            "members": [asdict(m) for m in self.members],
        }
        (self.root / "cluster.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, root: Path) -> Cluster:
        state = json.loads((root / "cluster.json").read_text())
        members = [Member(**m) for m in state["members"]]
        cluster = cls(
            len(members), root=root, tls=bool(state.get("tls", True)), extra_args=list(state.get("extra_args", []))
        )
        cluster.members = members
        cluster.ledger = state["ledger"]
        cluster.ledger_pid = state["ledger_pid"]
        return cluster


@dataclass(slots=True)
class _Pid:
    """A process we did not start ourselves (``down`` from another invocation)."""

    pid: int

    def wait(self, timeout: float) -> None:
        import time

        deadline = time.monotonic() + timeout
        while _alive(self.pid):
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.05)


def _port(address: str) -> str:
    """The port of ``ws://host:port/...``, ``http://host:port`` or ``host:port``."""
    return address.split("://")[-1].split("/")[0].rsplit(":", 1)[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _print_table(members: list[Member]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"overlay-node cluster ({len(members)} nodes)")
    for col in ("name", "identity key", "swarm", "http", "data dir"):
        t.add_column(col, overflow="fold")
    for m in members:
        t.add_row(m.name, m.identity_key[:16] + "…", " ".join(m.swarm), m.http, m.data_dir)
    Console().print(t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start N daemons")
    up.add_argument("n", type=int)
    up.add_argument("--dir", type=Path, default=Path(".cluster"))
    up.add_argument(
        "--base-port", type=int, default=None, help="node i uses base+2i (swarm TCP, DHT UDP) and base+2i+1 (http)"
    )
    up.add_argument("--json", action="store_true")
    up.add_argument("--no-tls", action="store_true", help="serve plain http:// (no tokens on chain)")
    down = sub.add_parser("down", help="stop the cluster's daemons")
    down.add_argument("--dir", type=Path, default=Path(".cluster"))
    for name, what in (("kill", "kill -9 node I"), ("restart", "start node I again on its data dir and ports")):
        one = sub.add_parser(name, help=what)
        one.add_argument("i", type=int)
        one.add_argument("--dir", type=Path, default=Path(".cluster"))
    args = parser.parse_args(argv)
    if args.command == "up":
        if args.n < 1:
            parser.error("N must be at least 1")
        if (args.dir / "cluster.json").exists():
            parser.error(f"a cluster is already up in {args.dir}: run `down` first")
        cluster = Cluster(args.n, root=args.dir.resolve(), base_port=args.base_port, tls=not args.no_tls)
        try:
            members = cluster.up()
        except BaseException:
            cluster.down()
            raise
        if args.json:
            ca = str(cluster.ca_file) if cluster.tls else None
            print(json.dumps({"ledger": cluster.ledger, "ca": ca, "members": [asdict(m) for m in members]}, indent=2))
        else:
            _print_table(members)
            print(f"devnet ledger: {cluster.ledger}")
            if cluster.tls:
                print(f"https with a local CA: {cluster.ca_file}")
        return 0
    if not (args.dir / "cluster.json").exists():
        print(f"no cluster in {args.dir}", file=sys.stderr)
        return 1
    cluster = Cluster.load(args.dir.resolve())
    if args.command == "down":
        cluster.down()
        print("cluster stopped")
        return 0
    if not 0 <= args.i < len(cluster.members):
        parser.error(f"no node {args.i}: the cluster has nodes 0..{len(cluster.members) - 1}")
    if args.command == "kill":
        cluster.kill(args.i)
        print(f"node{args.i} killed")
        return 0
    if _alive(cluster.members[args.i].pid):
        parser.error(f"node{args.i} is running (pid {cluster.members[args.i].pid}): kill it first")
    member = cluster.restart(args.i)
    print(f"node{args.i} restarted (pid {member.pid}) on {member.swarm[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
