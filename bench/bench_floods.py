"""Floods against one node: what each costs the node (memory, descriptors) and what honest clients see meanwhile.

Run from the repository root::

    .venv/bin/python bench/bench_floods.py [--quick] [--seconds 12] [--only NAME[,NAME...]]

Each flood gets a fresh node (so that what one flood leaves behind, or breaks, does not show in the next one's
figures) in its own process (``bench/nodeproc.py``), with its default limits, on 127.0.0.1. Each flood is
one attacker process (``--attack``: a trio loop with its open-files limit raised to the hard limit) that connects
from other loopback addresses (127.0.0.2, or 127.0.0.3 and up for "many IPs", 127.0.0.5 for the DHT), so that
the honest clients, all in this process on 127.0.0.1, are not charged for the attacker's per-IP budgets:

- ``http_idle`` / ``swarm_idle``: as many TCP connections as the attacker can hold (``--conns``, 5,000), opened as
  fast as they connect and then silent; each one the node closes is opened again;
- ``slowloris`` / ``slowloris_many_ips``: 2,000 connections to the http port from 127.0.0.2 alone (over
  ``http.max_connections_per_ip``) or spread over 127.0.0.3-127.0.0.66, each sending a request head one header line
  every ``--drip`` seconds (3), reconnecting when the node closes it;
- ``ws_one_ip`` / ``ws_many_ips``: 500 websocket upgrades to ``/p2p/1`` at once, from 127.0.0.2 alone or spread
  over 127.0.0.3-127.0.0.66, each holding its link silent (never sending the BRC-103 ``initialRequest``) until the
  node closes it, then upgrading again;
- ``dht_pings`` / ``dht_garbage``: datagrams as fast as 64 sockets of 127.0.0.5 send them: signed PINGs (20,000
  distinct ones, cycled) or random bytes; ``dht_pings_many_ips``: the signed PINGs from 64 sockets spread over
  127.0.0.3-127.0.0.66 (against the node-wide ``dht.max_verifies_per_second``);
- ``http_big_body``: 50 connections each POSTing ``/submit`` with ``Content-Length: 100000000`` and sending the
  body as fast as the node takes it; ``http_submit_bodies``: 16 connections each POSTing a 30 MB body (garbage,
  under ``overlay.max_submit_bytes``) over and over: what bodies within the limits cost in memory while they are
  read; ``http_many_bodies``: the same from 64 connections at once (against ``http.max_body_memory``);
- ``ws_big_message``: 20 upgraded links each sending one websocket message of 8 MiB (over the peer-link limit,
  ``swarm.max_frame`` plus framing).

During each flood, honest probes run one after the other (each as soon as the last answered, at least 0.1 s
apart): ``http``: ``GET /health/live`` on a new connection; ``http_post``: a small ``POST /lookup`` on a new
connection (any answer but a 5xx counts); ``control``: ``GET /v1/status`` over the control
socket (what ``overlay-node ctl status`` asks); ``dht_ping``: a signed DHT PING from an honest DHT node and
``dht_lookup``: an iterative lookup of a random key from it (the node is its only contact); ``peer``: a
``node.info`` request on a peer link an honest peer on 127.0.0.1 set up before the floods; ``ws_upgrade``: a new
websocket upgrade to ``/p2p/1`` from 127.0.0.1 (101 counts as answered; 503 ``too_many_handshakes`` as refused:
informational, a refusal is the node's designed answer). A sampler reads the node process's RSS and open
descriptors (``/proc/PID/status``, ``/proc/PID/fd``) every 0.25 s: before, peak during, and after (once the
descriptors are back within 16 of before, or 20 s after the flood ended).

Per flood it prints what the attacker offered and what got through, per second, the honest probes' p50/p99/max
and longest gap between two answers, RSS and descriptors before/peak/after, and whether the node still answers
each vital probe once the flood is over; it saves ``bench/results/bench_floods.json``. It never fails on time: it
exits non-zero only when the node process dies, an honest probe (``http``, ``control``, ``dht_ping``, ``peer``) went
more than 5 s without an answer during a flood (except where ``UNDEFENDED`` says the flood takes what that probe
needs by design), or one goes unanswered (5 s) after it.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import resource
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodeproc import Host, NodeProcess, NodeSpec  # noqa: E402  # bench/ is on sys.path as a script
from results_io import save  # noqa: E402  # bench/ is on sys.path

RESULTS = ROOT / "bench" / "results" / "bench_floods.json"
#: the node's config on top of nodeproc's LOOPBACK: no background repair or janitor passes to blur the figures
NODE_OVERRIDES: dict[str, Any] = {
    "node.log_level": "warning",
    "content.repair_interval": 0,
    "adverts.janitor_interval": 0,
}
ONE_IP = "127.0.0.2"
MANY_IPS = [f"127.0.0.{i}" for i in range(3, 67)]
DHT_IP = "127.0.0.5"
#: Linux's IP_BIND_ADDRESS_NO_PORT (not in every Python's socket module)
BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: an honest probe unanswered for longer than this fails the run
STALL_LIMIT = 5.0
#: one honest probe may take this long before it counts as failed
PROBE_TIMEOUT = 10.0
PROBE_GAP = 0.1
SAMPLE_INTERVAL = 0.25
SETTLE_LIMIT = 20.0
#: the probes whose silence fails the run (ws_upgrade is informational: its 503 is the node's designed answer)
VITAL = ("http", "control", "dht_ping", "peer")
#: floods that take what a probe needs by design (docs/security.md, "Not defended"): that probe's silence during
#: them is reported, not a failure (slow heads from 64 addresses hold every http slot; signed requests from 64
#: addresses take the DHT's node-wide signature budget, and honest requests to the node are dropped with theirs)
UNDEFENDED: dict[str, tuple[str, ...]] = {
    "slowloris_many_ips": ("http",),
    "dht_pings_many_ips": ("dht_ping",),
}


# -- the node process ---------------------------------------------------------------------------------------------


def describe(node: Any) -> dict[str, Any]:
    info = node.info
    return {
        "pid": os.getpid(),
        "identity_key": info.identity_key,
        "swarm": info.swarm[0],
        "dht": info.dht,
        "http": info.http,
        "control": info.control,
    }


async def node_ops(_host: Host, op: str, _args: list[Any]) -> Any:
    if op == "ping":
        return "pong"
    raise ValueError(f"unknown op {op}")


def node_resources(pid: int) -> tuple[float, int] | None:
    """RSS in MiB and open descriptors of process ``pid``; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("State", "").strip().startswith("Z"):
        return None
    rss_kib = int(fields.get("VmRSS", "0 kB").split()[0])
    return rss_kib / 1024, fds


# -- the attacker process -----------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one attack offered and what got through."""

    attempts: int = 0
    connected: int = 0
    failed: int = 0
    closed_by_node: int = 0
    upgraded: int = 0
    refused: int = 0
    sent: int = 0
    answered: int = 0
    bytes_sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def status(self, head: bytes) -> int:
        parts = head.split(b" ", 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.statuses[str(code)] = self.statuses.get(str(code), 0) + 1
        return code


def raise_nofile() -> int:
    """Raise this process's open-files limit to its hard limit; returns it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def open_tcp(target: tuple[str, int], source: str, end: float) -> trio.socket.SocketType | None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # the port is chosen at connect (so that one source address reaches its ~28,000 ports per destination), and
        # closing resets the connection (no TIME_WAIT on our side), as a flooding client does
        sock.setsockopt(socket.IPPROTO_IP, BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await sock.bind((source, 0))
        with trio.move_on_at(min(end, trio.current_time() + 5.0)):
            await sock.connect(target)
            return sock
    except OSError:
        pass
    sock.close()
    return None


async def until_closed(sock: trio.socket.SocketType) -> bool:
    """Read and drop until the node closes; True when it did."""
    try:
        while await sock.recv(65536):
            pass
    except OSError:
        pass
    return True


async def read_head(sock: trio.socket.SocketType) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = await sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def upgrade_request(host: str, port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /p2p/1 HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


SessionFn = Callable[[trio.socket.SocketType], Awaitable[None]]


async def reconnecting(t: Tally, target: tuple[str, int], sources: list[str], end: float, session: SessionFn) -> None:
    """One attacker slot: connect (from ``sources`` in turn), run ``session`` on the connection until it returns or
    ``end``, and again, until ``end``. A failed connect is counted and retried after 50 ms."""
    turn = 0
    while trio.current_time() < end:
        source = sources[turn % len(sources)]
        turn += 1
        t.attempts += 1
        sock = await open_tcp(target, source, end)
        if sock is None:
            t.failed += 1
            await trio.sleep(0.05)
            continue
        t.connected += 1
        with sock, trio.move_on_at(end):
            await session(sock)


def idle_session(t: Tally) -> SessionFn:
    """Stay silent until the node closes."""

    async def session(sock: trio.socket.SocketType) -> None:
        t.closed_by_node += await until_closed(sock)

    return session


def slowloris_session(t: Tally, drip: float) -> SessionFn:
    """Send a request head one header line every ``drip`` seconds until the node answers or closes."""

    async def session(sock: trio.socket.SocketType) -> None:
        try:
            await sock.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            while True:
                with trio.move_on_after(drip):
                    data = await sock.recv(4096)
                    if data:
                        t.status(data)  # a refusal (503 too_many_connections) or a 408
                    t.closed_by_node += 1
                    return
                t.bytes_sent += await sock.send(b"X-a: b\r\n")
        except OSError:
            t.closed_by_node += 1

    return session


def upgrade_session(t: Tally, target: tuple[str, int], message: int) -> SessionFn:
    """Upgrade to a websocket on ``/p2p/1`` and hold it silent (``message`` 0) or send one binary message of
    ``message`` bytes, until the node closes it."""

    async def session(sock: trio.socket.SocketType) -> None:
        try:
            await sock.send(upgrade_request(*target))
            code = t.status(await read_head(sock))
            if code != 101:
                t.refused += 1
                return
            t.upgraded += 1
            if message:
                await send_big_message(t, sock, message)
            t.closed_by_node += await until_closed(sock)
        except OSError:
            t.closed_by_node += 1

    return session


async def send_big_message(t: Tally, sock: trio.socket.SocketType, size: int) -> None:
    """One masked binary websocket frame of ``size`` bytes, sent until the node stops taking it."""
    mask = os.urandom(4)
    await sock.send(bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big") + mask)
    piece = os.urandom(65536)
    left = size
    while left > 0:
        n = await sock.send(piece[: min(left, len(piece))])
        t.bytes_sent += n
        left -= n


def big_body_session(t: Tally, length: int) -> SessionFn:
    """POST /submit with a body of ``length`` bytes, sent as fast as the node takes it; the answer's status."""
    head = (
        b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b'x-topics: ["tm_ship"]\r\nContent-Length: %d\r\n\r\n' % length
    )
    piece = os.urandom(65536)

    async def session(sock: trio.socket.SocketType) -> None:
        answer = b""

        async def read_answer(cancel: trio.CancelScope) -> None:
            nonlocal answer
            answer = await read_head(sock)
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_answer, nursery.cancel_scope)
            try:
                await sock.send(head)
                left = length
                while left > 0:
                    sent = await sock.send(piece[: min(left, len(piece))])
                    t.bytes_sent += sent
                    left -= sent
            except OSError:
                pass
            await trio.sleep(5.0)  # the answer, if the node sends one after the body
            nursery.cancel_scope.cancel()
        if answer:
            t.status(answer)
        t.closed_by_node += 1

    return session


def dht_datagrams(signed: bool) -> list[bytes]:
    """20,000 distinct signed PINGs of one fresh identity, or 1,000 random 200-byte datagrams."""
    if not signed:
        return [os.urandom(200) for _ in range(1000)]
    from overlay_node.crypto.keys import Identity
    from overlay_node.services.dht_rpc import Signer
    from overlay_node.wire.dht import Ping, encode, new_rpc_id

    identity = Identity.generate()
    sign = Signer(identity).sign
    pub, now = identity.public_key, time.time()
    return [encode(Ping(rpc_id=new_rpc_id()), sender_pub=pub, now=now, sign=sign) for _ in range(20_000)]


async def dht_flood(
    t: Tally, target: tuple[str, int], end: float, datagrams: list[bytes], sockets: int, sources: list[str]
) -> None:
    """``datagrams`` (cycled) from ``sockets`` ports of ``sources`` (in turn) as fast as they go; answers counted."""

    async def one(n: int) -> None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind((sources[n % len(sources)], 0))

        async def reader() -> None:
            while True:
                await sock.recv(2048)
                t.answered += 1

        with sock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                i = n
                while trio.current_time() < end:
                    try:
                        await sock.sendto(datagrams[i % len(datagrams)], target)
                        t.sent += 1
                    except OSError:
                        await trio.sleep(0.001)
                    i += sockets
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for n in range(sockets):
            nursery.start_soon(one, n)


async def attack(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one attack for ``spec["seconds"]``; returns its tally and rates."""
    t = Tally()
    kind = spec["kind"]
    datagrams = dht_datagrams(kind == "dht_pings") if kind.startswith("dht_") else []
    host, port = spec["target"].rsplit(":", 1)
    target = (host, int(port))
    started = trio.current_time()
    end = started + spec["seconds"]
    slots = spec.get("slots", 0)
    sessions: dict[str, Callable[[], SessionFn]] = {
        "idle": lambda: idle_session(t),
        "slowloris": lambda: slowloris_session(t, spec["drip"]),
        "upgrade": lambda: upgrade_session(t, target, spec.get("message", 0)),
        "big_body": lambda: big_body_session(t, spec["length"]),
    }
    async with trio.open_nursery() as nursery:
        for i in range(slots):
            sources = MANY_IPS[i % len(MANY_IPS) :] + MANY_IPS[: i % len(MANY_IPS)] if spec.get("many") else [ONE_IP]
            nursery.start_soon(reconnecting, t, target, sources, end, sessions[kind]())
            if i % 100 == 99:
                await trio.lowlevel.checkpoint()  # let the first slots connect while the others start
        if kind in ("dht_pings", "dht_garbage"):
            sources = MANY_IPS if spec.get("many") else [DHT_IP]
            nursery.start_soon(dht_flood, t, target, end, datagrams, 64, sources)
    elapsed = trio.current_time() - started
    return {"seconds": round(elapsed, 2), "nofile": spec["nofile"], **asdict(t)}


def attacker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    spec["nofile"] = raise_nofile()
    print(json.dumps(trio.run(attack, spec)), flush=True)


# -- the honest side ----------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One honest client's answers during a flood: (start, latency in seconds or None if it failed)."""

    name: str
    samples: list[tuple[float, float | None]] = field(default_factory=list)

    def summary(self, start: float, stop: float) -> dict[str, Any]:
        ok = sorted(lat for _t, lat in self.samples if lat is not None)
        answered = [t + lat for t, lat in self.samples if lat is not None and t + lat <= stop]
        marks = [start, *sorted(answered), stop]
        gap = max(b - a for a, b in itertools.pairwise(marks))
        return {
            "probes": len(self.samples),
            "failed": len(self.samples) - len(ok),
            "p50_ms": round(_pct(ok, 50) * 1000, 2) if ok else None,
            "p99_ms": round(_pct(ok, 99) * 1000, 2) if ok else None,
            "max_ms": round(ok[-1] * 1000, 2) if ok else None,
            "longest_gap_s": round(gap, 2),
        }


def _pct(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, round(p) - 1))]


async def _status_line(stream: trio.abc.Stream) -> bytes:
    """What the server sent until the end of its status line (or until it closed)."""
    data = b""
    while b"\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


async def http_get(connect: Callable[[], Awaitable[trio.abc.Stream]], path: str) -> bytes:
    """One ``GET path`` on a new connection; the status line (raises if it is not 200)."""
    stream = await connect()
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = await _status_line(stream)
        while await stream.receive_some(65536):
            pass
    line = data.split(b"\r\n", 1)[0]
    if b" 200 " not in line + b" ":
        raise RuntimeError(f"answered {line!r}")
    return line


class Honest:
    """The honest clients in this process: an HTTP client, a control client, a DHT node and a peer."""

    def __init__(self, info: dict[str, Any], dht: Any, peers: Any) -> None:
        self.info = info
        self.dht = dht
        self.peers = peers
        host, port = info["http"].removeprefix("http://").rsplit(":", 1)
        self.http = (host, int(port))
        swarm_host, swarm_port = info["swarm"].removeprefix("ws://").split("/", 1)[0].rsplit(":", 1)
        self.swarm = (swarm_host, int(swarm_port))

    def probes(self) -> dict[str, Callable[[], Awaitable[object]]]:
        return {
            "http": lambda: http_get(self.open_http, "/health/live"),
            "http_post": self.small_post,
            "control": lambda: http_get(self.open_control, "/v1/status"),
            "dht_ping": lambda: self.dht.ping(self.info["dht"], expect_key=bytes.fromhex(self.info["identity_key"])),
            "dht_lookup": lambda: self.dht.get(os.urandom(32)),
            "peer": self.peer_request,
            "ws_upgrade": self.ws_upgrade,
        }

    async def peer_request(self) -> object:
        """``node.info`` on the link to the node (the one set up before the floods, or a new one if it dropped)."""
        link = await self.peers.connect(self.info["swarm"], expect_key=self.info["identity_key"])
        return await link.request("node.info", {})

    async def small_post(self) -> bytes:
        """A small ``POST /lookup`` on a new connection; the status line (raises on a 5xx: any other answer is
        the route's own)."""
        body = b'{"service":"ls_ship","query":{"findAll":true}}'
        stream = await self.open_http()
        async with stream:
            await stream.send_all(
                b"POST /lookup HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            data = await _status_line(stream)
        line = data.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) >= 500:
            raise RuntimeError(f"answered {line!r}")
        return line

    async def open_http(self) -> trio.abc.Stream:
        return await trio.open_tcp_stream(*self.http)

    async def open_control(self) -> trio.abc.Stream:
        return await trio.open_unix_socket(self.info["control"])

    async def ws_upgrade(self) -> None:
        stream = await trio.open_tcp_stream(*self.swarm)
        async with stream:
            await stream.send_all(upgrade_request(*self.swarm))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
        if not data.startswith(b"HTTP/1.1 101"):
            status = data.split(b"\r\n", 1)[0]
            raise RuntimeError(f"answered {status!r}")


async def run_probe(probe: Probe, call: Callable[[], Awaitable[object]], stop: trio.Event) -> None:
    while not stop.is_set():
        started = trio.current_time()
        latency: float | None = None
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await call()
                latency = trio.current_time() - started
            except Exception:  # noqa: BLE001 -- any failure of an honest request counts as unanswered
                latency = None
        probe.samples.append((started, latency))
        with trio.move_on_after(max(0.0, PROBE_GAP - (trio.current_time() - started))):
            await stop.wait()


@dataclass
class Usage:
    """The node's RSS (MiB) and descriptors: before, the peak during the flood, after."""

    before: tuple[float, int]
    peak_rss: float = 0.0
    peak_fds: int = 0
    after: tuple[float, int] | None = None
    settle_s: float = 0.0
    died: bool = False

    def as_dict(self) -> dict[str, Any]:
        after = self.after or (0.0, 0)
        return {
            "rss_mb": {
                "before": round(self.before[0], 1),
                "peak": round(self.peak_rss, 1),
                "after": round(after[0], 1),
            },
            "fds": {"before": self.before[1], "peak": self.peak_fds, "after": after[1]},
            "settle_s": round(self.settle_s, 1),
            "node_died": self.died,
        }


async def sample(pid: int, usage: Usage, stop: trio.Event) -> None:
    while not stop.is_set():
        now = node_resources(pid)
        if now is None:
            usage.died = True
            return
        usage.peak_rss = max(usage.peak_rss, now[0])
        usage.peak_fds = max(usage.peak_fds, now[1])
        with trio.move_on_after(SAMPLE_INTERVAL):
            await stop.wait()


async def settle(pid: int, usage: Usage) -> None:
    """Wait until the node's descriptors are back near before (or SETTLE_LIMIT); record the after figures."""
    started = trio.current_time()
    while True:
        now = node_resources(pid)
        if now is None:
            usage.died = True
            return
        usage.after = now
        usage.settle_s = trio.current_time() - started
        if now[1] <= usage.before[1] + 16 or usage.settle_s >= SETTLE_LIMIT:
            return
        await trio.sleep(SAMPLE_INTERVAL)


async def run_attacker(spec: dict[str, Any]) -> dict[str, Any]:
    done = await trio.run_process(
        [sys.executable, __file__, "--attack", json.dumps(spec)], capture_stdout=True, check=False, cwd=ROOT
    )
    if done.returncode != 0:
        return {"error": f"attacker exited with status {done.returncode}"}
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


async def one_flood(honest: Honest, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    pid = honest.info["pid"]
    before = node_resources(pid)
    if before is None:
        return {"name": name, "node_died": True}
    usage = Usage(before=before, peak_rss=before[0], peak_fds=before[1])
    probes = {probe_name: Probe(probe_name) for probe_name in honest.probes()}
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample, pid, usage, stop)
        for probe_name, call in honest.probes().items():
            nursery.start_soon(run_probe, probes[probe_name], call, stop)
        start = trio.current_time()
        attacked = await run_attacker(spec)
        stopped = trio.current_time()
        stop.set()
    await settle(pid, usage)
    seconds = attacked.get("seconds") or 1.0
    rates = {
        "offered_per_s": round((attacked.get("attempts", 0) or attacked.get("sent", 0)) / seconds),
        "accepted_per_s": round((attacked.get("connected", 0) or attacked.get("answered", 0)) / seconds),
    }
    return {
        "name": name,
        "attack": {k: v for k, v in spec.items() if k != "target"},
        "attacker": attacked,
        **rates,
        "honest": {p.name: p.summary(start, stopped) for p in probes.values()},
        **usage.as_dict(),
    }


FLOODS = (
    "http_idle",
    "swarm_idle",
    "slowloris",
    "slowloris_many_ips",
    "ws_one_ip",
    "ws_many_ips",
    "dht_pings",
    "dht_pings_many_ips",
    "dht_garbage",
    "http_big_body",
    "http_submit_bodies",
    "http_many_bodies",
    "ws_big_message",
)


def flood_names(args: argparse.Namespace) -> list[str]:
    chosen = args.only.split(",") if args.only else list(FLOODS)
    unknown = [n for n in chosen if n not in FLOODS]
    if unknown:
        raise SystemExit(f"unknown flood(s) {', '.join(unknown)}: choose from {', '.join(FLOODS)}")
    return chosen


def flood_spec(info: dict[str, Any], args: argparse.Namespace, name: str) -> dict[str, Any]:
    """What the attacker of flood ``name`` does, against the node ``info`` describes."""
    http = info["http"].removeprefix("http://")
    swarm = info["swarm"].removeprefix("ws://").split("/", 1)[0]
    specs: dict[str, dict[str, Any]] = {
        "http_idle": {"kind": "idle", "target": http, "slots": args.conns},
        "swarm_idle": {"kind": "idle", "target": swarm, "slots": args.conns},
        "slowloris": {"kind": "slowloris", "target": http, "slots": 2000, "drip": args.drip},
        "slowloris_many_ips": {"kind": "slowloris", "target": http, "slots": 2000, "drip": args.drip, "many": True},
        "ws_one_ip": {"kind": "upgrade", "target": swarm, "slots": 500, "many": False},
        "ws_many_ips": {"kind": "upgrade", "target": swarm, "slots": 500, "many": True},
        "dht_pings": {"kind": "dht_pings", "target": info["dht"]},
        "dht_pings_many_ips": {"kind": "dht_pings", "target": info["dht"], "many": True},
        "dht_garbage": {"kind": "dht_garbage", "target": info["dht"]},
        "http_big_body": {"kind": "big_body", "target": http, "slots": 50, "length": 100_000_000},
        "http_submit_bodies": {"kind": "big_body", "target": http, "slots": 16, "length": 30_000_000},
        "http_many_bodies": {"kind": "big_body", "target": http, "slots": 64, "length": 30_000_000},
        "ws_big_message": {"kind": "upgrade", "target": swarm, "slots": 20, "many": False, "message": 8 << 20},
    }
    return {"seconds": args.seconds} | specs[name]


async def check_after(honest: Honest) -> dict[str, bool]:
    """Whether each vital probe is answered (within STALL_LIMIT) once the flood is over."""
    answered = {}
    calls = honest.probes()
    for name in VITAL:
        answered[name] = False
        with trio.move_on_after(STALL_LIMIT):
            try:
                await calls[name]()
                answered[name] = True
            except Exception:  # noqa: BLE001 -- any failure counts as unanswered
                pass
    return answered


async def flood_fresh_node(root: Path, index: int, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start a node (and honest clients of it), run flood ``name`` against it, check it still answers, stop it.
    A node per flood: what one flood leaves behind (or breaks) does not show in the next one's figures."""
    from overlay_node.config import DhtSection, StoreSection, SwarmSection
    from overlay_node.crypto.keys import Identity
    from overlay_node.metrics import Metrics
    from overlay_node.net.peers import PeerManager
    from overlay_node.services.dht import DhtService
    from overlay_node.store.db import open_store

    spec = NodeSpec(str(root), f"target-{index}", NODE_OVERRIDES)
    node = await trio.to_thread.run_sync(lambda: NodeProcess([spec], node_ops, describe))
    try:
        info = node.info
        async with (
            open_store(root / f"honest-{index}.db", StoreSection()) as store,
            trio.open_nursery() as nursery,
        ):
            dht = DhtService(Identity.generate(), DhtSection(host="127.0.0.1", port=0), store, Metrics())
            await nursery.start(dht.run)
            await dht.bootstrap([info["dht"]])
            peers = PeerManager(Identity.generate(), SwarmSection(host="127.0.0.1", port=0), Metrics())
            await nursery.start(peers.run)
            await peers.connect(info["swarm"], expect_key=info["identity_key"])
            honest = Honest(info, dht, peers)
            result = await one_flood(honest, name, flood_spec(info, args, name))
            result["answering_after"] = await check_after(honest)
            nursery.cancel_scope.cancel()
        return result
    finally:
        await node.stop()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"floods": [], "config": vars(args).copy()}
    with tempfile.TemporaryDirectory(prefix="bench-floods-") as tmp:
        for index, name in enumerate(flood_names(args)):
            print(f"flood {name} ({args.seconds:.0f} s) ...", flush=True)
            result = await flood_fresh_node(Path(tmp), index, name, args)
            results["floods"].append(result)
            print_flood(result)
    return results


def print_flood(r: dict[str, Any]) -> None:
    if r.get("node_died") and "honest" not in r:
        print(f"  {r['name']}: the node process is gone")
        return
    a = r["attacker"]
    print(
        f"  offered {r['offered_per_s']}/s, got through {r['accepted_per_s']}/s; refused {a.get('refused', 0)},"
        f" closed by node {a.get('closed_by_node', 0)}, bytes sent {a.get('bytes_sent', 0)}, statuses"
        f" {a.get('statuses', {})}"
    )
    rss, fds = r["rss_mb"], r["fds"]
    print(
        f"  node RSS MiB {rss['before']} / {rss['peak']} / {rss['after']}, fds {fds['before']} / {fds['peak']} /"
        f" {fds['after']} (before / peak / after, settled in {r['settle_s']} s)"
    )
    silent = [name for name, ok in r.get("answering_after", {}).items() if not ok]
    print(f"  after the flood: {'NOT answering ' + ', '.join(silent) if silent else 'answering every probe'}")
    for name, p in r["honest"].items():
        print(
            f"  {name:<11} {p['probes']:>5} probes {p['failed']:>4} failed  p50 {p['p50_ms']} ms  p99 {p['p99_ms']}"
            f" ms  max {p['max_ms']} ms  longest gap {p['longest_gap_s']} s"
        )


def verdict(results: dict[str, Any]) -> list[str]:
    """What fails the run: a dead node, a vital probe silent for more than STALL_LIMIT during a flood, or one the
    node no longer answers after it."""
    problems = []
    for r in results["floods"]:
        if r.get("node_died"):
            problems.append(f"{r['name']}: the node process died")
        for name in VITAL:
            gap = r.get("honest", {}).get(name, {}).get("longest_gap_s", 0.0)
            if gap > STALL_LIMIT and name not in UNDEFENDED.get(r["name"], ()):
                problems.append(f"{r['name']}: {name} unanswered for {gap} s")
        silent = [name for name, ok in r.get("answering_after", {}).items() if not ok]
        if silent:
            problems.append(f"{r['name']}: after the flood the node no longer answers {', '.join(silent)}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attack", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="4 s per flood and 1,000 idle connections")
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds each flood lasts")
    parser.add_argument("--conns", type=int, default=5000, help="idle connections of the connection floods")
    parser.add_argument("--drip", type=float, default=3.0, help="seconds between a slowloris client's header lines")
    parser.add_argument("--only", default="", help="comma-separated flood names (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to save the JSON results")
    args = parser.parse_args()
    if args.attack:
        attacker_main(args.attack)
        return
    if args.quick:
        args.seconds, args.conns = 4.0, 1000
    results = trio.run(bench, args)
    results["config"]["out"] = str(args.out)
    problems = verdict(results)
    results["problems"] = problems
    save(args.out, results)
    print(f"saved {args.out}")
    if problems:
        raise SystemExit("; ".join(problems))


if __name__ == "__main__":
    main()
