#!/usr/bin/env python3
"""A cluster of overlay-node daemons in Linux network namespaces, whose two sides can be cut apart and healed.

    .venv/bin/python scripts/netns.py up 7 --side-a 4 [--dir D] [--no-tls]   # as root; then cut / heal / quit

``up`` makes the namespaces, starts the daemons and a devnet ledger in them (``scripts/cluster.py``), prints each node's
side, address and data dir (under ``D``, default ``.cluster/netns``), and then reads commands on stdin: ``cut``
(partition the sides), ``heal``, ``quit`` (or end of input, or Ctrl-C: every process stopped and every namespace
deleted). From another shell, talk to a node as usual: ``overlay-node --data-dir D/node3 ctl peers``. The tests of
``tests/partition/`` use the same :class:`Fabric` (as the :class:`~cluster.Placement` of a :class:`~cluster.Cluster`).

The network:

One "switch" namespace holds three bridges: ``brA`` and ``brB`` carry the nodes' traffic (the nodes of side A on the
first, those of side B on the second; one subnet, ``10.77.0.0/24``) and are joined by one veth pair, ``cutA``/``cutB``:
:meth:`Fabric.cut` sets it down (a partition: frames between the sides are lost, nothing answers, as when a
link fails), :meth:`Fabric.heal` up again. ``brM`` is a management bridge (``10.78.0.0/24``) that is never cut: the
devnet ledger listens on it in the switch namespace (``10.78.0.254``), so both sides settle payments during a
partition; its node ports are isolated (a node reaches the ledger there, never another node).

Each node runs in a namespace of its own (``ip netns exec``), bound to its data address ``10.77.0.<i + 1>``; its
control socket is a file in its data dir, so the CLI and the tests reach it from here as usual.

Every name starts with ``ovp<pid>-`` (the pid of the process that made it): :func:`remove_leftovers` deletes the
namespaces (and ends the processes in them) of runs whose process is gone, so a crashed run leaves nothing behind for
long, and a run beside ours is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import Cluster, Placement, UpDown

__all__ = ["DATA_NET", "LEDGER_HOST", "Fabric", "NetnsUnavailable", "probe", "remove_leftovers"]

PREFIX = "ovp"
DATA_NET = "10.77.0"
MGMT_NET = "10.78.0"
LEDGER_HOST = f"{MGMT_NET}.254"
_OURS = re.compile(rf"^{PREFIX}(\d+)-")
_CLI_TIMEOUT = 30.0


class NetnsUnavailable(Exception):
    """Network namespaces cannot be made here; the message says why (a test skips with it)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip") or "ip"
    done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=_CLI_TIMEOUT, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def probe() -> None:
    """Check that this process can make a network namespace with a veth pair in it.

    Raises:
        NetnsUnavailable: not root, no ``ip``, or the kernel refuses (the reason in the message).
    """
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root (ip netns add); run as root")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the ip command (iproute2) is not installed")
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        added = _ip("netns", "add", name, check=False)
        if added.returncode != 0:
            raise NetnsUnavailable(f"ip netns add failed: {added.stderr.strip()}")
        veth = _ip("-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
        if veth.returncode != 0:
            raise NetnsUnavailable(f"no veth pairs in a network namespace: {veth.stderr.strip()}")
        bridge = _ip("-n", name, "link", "add", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            raise NetnsUnavailable(f"no bridges in a network namespace: {bridge.stderr.strip()}")
    finally:
        _ip("netns", "del", name, check=False)


def _delete(namespace: str) -> None:
    """End the processes left in ``namespace`` (by pid) and delete it."""
    pids = _ip("netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", namespace, check=False)


def remove_leftovers() -> list[str]:
    """Delete the namespaces of earlier runs whose process is gone, and any named for this process (one that had our
    pid before us; we have made none yet); returns their names."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _OURS.match(name)
        if match and (int(match.group(1)) == os.getpid() or not Path(f"/proc/{match.group(1)}").exists()):
            _delete(name)
            removed.append(name)
    return removed


class Fabric(Placement, UpDown):
    """The namespaces of one run: ``sides`` gives each node's side ("A" or "B"). A context manager that deletes them
    all on exit, after the cluster's processes are stopped."""

    def __init__(self, sides: Sequence[str]) -> None:
        if not set(sides) <= {"A", "B"}:
            raise ValueError(f"every side is A or B, not {sorted(set(sides) - {'A', 'B'})}")
        self.sides = list(sides)
        self.tag = f"{PREFIX}{os.getpid()}-"
        self.switch = f"{self.tag}sw"
        self.made: list[str] = []
        self.is_cut = False

    def namespace(self, i: int) -> str:
        return f"{self.tag}n{i}"

    @staticmethod
    def address(i: int) -> str:
        """Node ``i``'s data address (what it binds and advertises)."""
        return f"{DATA_NET}.{i + 1}"

    def _add(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self.made.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def up(self) -> None:
        sw = self.switch
        self._add(sw)
        for bridge in ("brA", "brB", "brM"):
            _ip("-n", sw, "link", "add", bridge, "type", "bridge")
            _ip("-n", sw, "link", "set", bridge, "up")
        _ip("-n", sw, "link", "add", "cutA", "type", "veth", "peer", "name", "cutB")
        for end, bridge in (("cutA", "brA"), ("cutB", "brB")):
            _ip("-n", sw, "link", "set", end, "master", bridge, "up")
        _ip("-n", sw, "addr", "add", f"{LEDGER_HOST}/24", "dev", "brM")
        for i, side in enumerate(self.sides):
            ns = self.namespace(i)
            self._add(ns)
            self._plug(ns, f"d{i}", "eth0", f"br{side}", f"{self.address(i)}/24")
            self._plug(ns, f"m{i}", "mgmt0", "brM", f"{MGMT_NET}.{i + 1}/24")
            _ip("-n", sw, "link", "set", "dev", f"m{i}", "type", "bridge_slave", "isolated", "on")

    def _plug(self, ns: str, port: str, inside: str, bridge: str, address: str) -> None:
        """A veth pair from ``bridge`` in the switch namespace to ``inside`` (with ``address``) in ``ns``."""
        sw = self.switch
        _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", inside, "netns", ns)
        _ip("-n", sw, "link", "set", port, "master", bridge, "up")
        _ip("-n", ns, "addr", "add", address, "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")

    def down(self) -> None:
        """Delete every namespace of this run (ending any process still in one)."""
        for ns in reversed(self.made):
            _delete(ns)
        self.made = []

    def cut(self) -> None:
        """Partition: the link between the two sides' bridges goes down."""
        _ip("-n", self.switch, "link", "set", "cutA", "down")
        self.is_cut = True

    def heal(self) -> None:
        _ip("-n", self.switch, "link", "set", "cutA", "up")
        self.is_cut = False

    # -- scripts/cluster.py's Placement -------------------------------------------------------------------------

    def host(self, name: str) -> str:
        if name == "devnet":
            return LEDGER_HOST
        return self.address(int(name.removeprefix("node")))

    def command(self, name: str, args: list[str]) -> list[str]:
        ns = self.switch if name == "devnet" else self.namespace(int(name.removeprefix("node")))
        return [shutil.which("ip") or "ip", "netns", "exec", ns, *args]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start N daemons in namespaces, then read cut / heal / quit on stdin")
    up.add_argument("n", type=int)
    up.add_argument("--side-a", type=int, default=None, help="nodes 0..K-1 on side A, the rest on B (default N/2+1)")
    up.add_argument("--dir", type=Path, default=Path(".cluster/netns"))
    up.add_argument("--no-tls", action="store_true", help="serve plain http:// (no tokens on chain)")
    args = parser.parse_args(argv)
    side_a = args.side_a if args.side_a is not None else args.n // 2 + 1
    if not 1 <= side_a < args.n:
        parser.error("--side-a must leave at least one node on each side")
    try:
        probe()
    except NetnsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    remove_leftovers()
    sides = ["A"] * side_a + ["B"] * (args.n - side_a)
    with Fabric(sides) as fabric, Cluster(args.n, root=args.dir.resolve(), tls=not args.no_tls, placement=fabric) as c:
        for i, member in enumerate(c.members):
            print(f"{member.name}  side {sides[i]}  {fabric.address(i)}  {member.data_dir}")
        print(f"devnet ledger: {c.ledger}")
        print("commands: cut, heal, quit", flush=True)
        try:
            for line in sys.stdin:
                command = line.strip()
                if command == "cut":
                    fabric.cut()
                elif command == "heal":
                    fabric.heal()
                elif command == "quit":
                    break
                elif command:
                    print(f"unknown command {command!r}: cut, heal or quit", flush=True)
                    continue
                print(f"sides {'cut apart' if fabric.is_cut else 'joined'}", flush=True)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
