"""Hostile input on the listening ports: handshake floods on the swarm port, gateway clients that never read, JSON
built to blow the parser's stack, a swarm port that cannot be bound, and more connections than file descriptors.

The flood tests send from 127.0.0.2 (Linux routes all of 127/8 to the loopback interface), so that the honest peer
on 127.0.0.1 is another address; the daemon-level tests run ``overlay-node run`` as a subprocess, where RSS, the
file descriptor limit and stderr are the node's own.
"""

from __future__ import annotations

import json
import re
import resource
import socket
import struct
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, WebSocketConnection, wrap_client_stream

from overlay_node.api.common import JSON_MAX_DEPTH
from overlay_node.errors import DialError
from overlay_node.node import Node
from overlay_node.services.content_common import ContentMeta
from tests.conftest import NodeFactory

from .peer_fixtures import GoodNode, start_good_node

LIMIT = 15  # seconds per in-process test
PROCESS_LIMIT = 90  # seconds per subprocess test (a node starts in a few seconds on a loaded machine)
LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


# -- handshake slots -------------------------------------------------------------------------------------------------


async def open_from(nursery: trio.Nursery, source: str, url: str) -> WebSocketConnection:
    """A websocket to ``url`` from the local address ``source`` (upgraded, then it says nothing)."""
    host, port = host_port(url)
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((host, port))
    stream = trio.SocketStream(sock)
    return await wrap_client_stream(nursery, stream, f"{host}:{port}", urllib.parse.urlsplit(url).path)


def refused(node: GoodNode, reason: str) -> float:
    return node.metrics.registry.get_sample_value("overlay_swarm_refused_total", {"reason": reason}) or 0.0


async def hold_open(
    source: str, url: str, *, task_status: trio.TaskStatus[WebSocketConnection | ConnectionRejected]
) -> None:
    """Open a silent websocket from ``source`` and keep it until cancelled; report it, or the server's refusal."""
    try:
        async with trio.open_nursery() as inner:
            ws = await open_from(inner, source, url)
            task_status.started(ws)
            await trio.sleep_forever()
    except* ConnectionRejected as refused:
        rejection = refused.exceptions[0]
        assert isinstance(rejection, ConnectionRejected)
        task_status.started(rejection)


async def flood(nursery: trio.Nursery, source: str, url: str, count: int) -> tuple[list[WebSocketConnection], int]:
    """Open ``count`` silent websockets from ``source``: the ones that stay open, and how many got HTTP 503."""
    held: list[WebSocketConnection] = []
    refused = 0
    for _ in range(count):
        outcome = await nursery.start(hold_open, source, url)
        if isinstance(outcome, ConnectionRejected):
            assert outcome.status_code == 503
            assert outcome.body == b"too_many_handshakes\n"
            refused += 1
        else:
            held.append(outcome)
    return held, refused


async def test_a_handshake_flood_from_one_address_does_not_keep_other_peers_out(nursery: trio.Nursery) -> None:
    # silent handshakes are held for 30 s: the whole test runs while the flood holds its slots
    a = await start_good_node(nursery, max_links=8, max_handshakes=16, max_handshakes_per_ip=4, handshake_timeout=30.0)
    b = await start_good_node(nursery)
    c = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as flooding:
            held, turned_away = await flood(flooding, "127.0.0.2", a.url, 20)
            # four silent handshakes from 127.0.0.2 at a time, the rest refused before their upgrade
            assert (len(held), turned_away) == (4, 16)
            assert refused(a, "too_many_handshakes_per_ip") == 16
            # honest peers from 127.0.0.1 get through while the flood holds; a slot is free again once a link is
            # established, so two of them in a row from one address are fine too
            link_b = await b.manager.connect(a.url)
            link_c = await c.manager.connect(a.url)
            assert await link_b.request("echo", {"n": 1}) == {"from": b.key, "body": {"n": 1}}
            assert await link_c.request("echo", {}) == {"from": c.key, "body": {}}
            assert all(ws.closed is None for ws in held)  # the flood is still there
            flooding.cancel_scope.cancel()


async def test_handshakes_in_progress_are_bounded_in_all(nursery: trio.Nursery) -> None:
    a = await start_good_node(nursery, max_handshakes=6, max_handshakes_per_ip=4, handshake_timeout=30.0)
    b = await start_good_node(nursery)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as flooding:
            from_2, refused_2 = await flood(flooding, "127.0.0.2", a.url, 5)
            from_3, refused_3 = await flood(flooding, "127.0.0.3", a.url, 5)
            assert (len(from_2), refused_2, len(from_3), refused_3) == (4, 1, 2, 3)
            # six handshakes in progress: the next one is refused, from any address, without a websocket
            with pytest.raises(DialError, match=r"HTTP 503: too_many_handshakes"):
                await b.manager.connect(a.url)
            assert refused(a, "too_many_handshakes") == 4
            flooding.cancel_scope.cancel()


async def test_upgrade_requests_reset_at_once_end_only_their_own_connection(nursery: trio.Nursery) -> None:
    # a client that sends its upgrade request and resets the connection before the server looks at it: the server's
    # getpeername fails (ENOTCONN); before, that escaped the connection's handler and stopped the whole listener
    a = await start_good_node(nursery)
    b = await start_good_node(nursery)
    host, port = host_port(a.url)
    upgrade = (
        b"GET /p2p/1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(LIMIT):
        for _ in range(50):
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends a reset
            await sock.connect((host, port))
            await sock.send(upgrade)
            sock.close()
        # the listener still serves: honest peers link and talk (a crash would also fail the test's nursery)
        link = await b.manager.connect(a.url)
        assert await link.request("echo", {"n": 1}) == {"from": b.key, "body": {"n": 1}}
        await link.aclose()
        again = await b.manager.connect(a.url)
        assert await again.request("echo", {}) == {"from": b.key, "body": {}}


# -- JSON built to break the parser ----------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_bounded_json_on_the_gateway_and_the_control_socket(
    start_node: NodeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node: Node = await start_node("producer")
    source = tmp_path / "premium.bin"
    source.write_bytes(b"priced bytes " * 1000)
    item = await node.content.publish(source, meta=ContentMeta(price=50), replication=0)
    free = tmp_path / "free.bin"
    free.write_bytes(b"free bytes " * 1000)
    free_item = await node.content.publish(free, meta=ContentMeta(), replication=0)
    deep = f"nested deeper than {JSON_MAX_DEPTH} levels"
    long_number = "a number longer than 100 characters"
    bad_grants = [
        (nested(5000), deep),  # deeper than Python's recursion limit
        (nested(JSON_MAX_DEPTH + 1), deep),  # parses, and is still too deep
        ('{"expires": 1' + "0" * 5000 + "}", long_number),  # beyond int's 4,300 digits
        ('{"amount": 1' + "0" * 200 + "}", long_number),
        ("x" * 20_000, "X-Access-Grant too large (limit 16384 bytes)"),
        ("{not json", "X-Access-Grant is not valid JSON: Expecting property name"),
    ]
    with trio.fail_after(LIMIT):
        async with httpx.AsyncClient(base_url=node.info.http) as client:
            for grant, message in bad_grants:
                r = await client.get(f"/uhrp/{item.hash}", headers={"X-Access-Grant": grant})
                assert r.status_code == 400, (grant[:40], r.text[:200])
                assert r.json()["code"] == "bad_request"
                assert message in r.json()["message"]
            # the node serves the next honest request
            r = await client.get(f"/uhrp/{free_item.hash}")
            assert r.status_code == 200
            assert r.content == free.read_bytes()
            assert (await client.get("/health/live")).status_code == 200

        transport = httpx.AsyncHTTPTransport(uds=node.info.control)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as control:
            for body, message in [
                (nested(5000), deep),
                (nested(JSON_MAX_DEPTH + 1), deep),
                ('{"address": 1' + "0" * 5000 + "}", long_number),
                ('{"address": 1.' + "5" * 200 + "}", long_number),
            ]:
                r = await control.post("/v1/peers/connect", content=body.encode())
                assert r.status_code == 400, (body[:40], r.text[:200])
                assert r.json()["message"] == f"request body is not valid JSON: {message}"
            # JSON nested up to the limit is still JSON (here the wrong shape, which the route says)
            r = await control.post("/v1/peers/connect", content=nested(JSON_MAX_DEPTH).encode())
            assert (r.status_code, r.json()["message"]) == (400, "request body must be a JSON object")
            assert (await control.get("/v1/status")).status_code == 200
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]


# -- daemons in their own process ------------------------------------------------------------------------------------


@dataclass
class NodeProcess:
    """``overlay-node run`` in a subprocess: its ``--json`` ready line, and its stderr as it comes."""

    proc: trio.Process
    info: dict[str, Any] = field(default_factory=dict)
    stderr: list[bytes] = field(default_factory=list)
    _more: trio.Event = field(default_factory=trio.Event)

    @property
    def http(self) -> str:
        return str(self.info["http"])

    @property
    def swarm(self) -> tuple[str, int]:
        return host_port(self.info["swarm"][0])

    async def read_stderr(self) -> None:
        assert self.proc.stderr is not None
        pending = b""
        async for chunk in self.proc.stderr:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            self.stderr.extend(lines)
            self._more.set()
            self._more = trio.Event()

    async def wait_for_stderr(self, text: bytes) -> bytes:
        """The first line of stderr that contains ``text``, once it was written."""
        while True:
            for line in self.stderr:
                if text in line:
                    return line
            await self._more.wait()

    def rss(self) -> int:
        """The node's resident set size in bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert kib is not None
        return int(kib.group(1)) * 1024


def run_command(data_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "overlay_cli.main",
        "--data-dir",
        str(data_dir),
        "--json",
        "run",
        "--swarm-host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--dht-port",
        "0",
        "--set",
        "dht.host=127.0.0.1",
        *args,
    ]


@asynccontextmanager
async def node_process(
    data_dir: Path, *args: str, preexec_fn: Callable[[], None] | None = None
) -> AsyncIterator[NodeProcess]:
    """A running ``overlay-node run`` (swarm port 0 unless ``args`` say otherwise), stopped at the end."""
    cmd = run_command(data_dir, "--swarm-port", "0", *args)
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)
    node = NodeProcess(proc)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.read_stderr)
            assert proc.stdout is not None
            line = b""
            with trio.fail_after(PROCESS_LIMIT):
                while not line.endswith(b"\n"):
                    chunk = await proc.stdout.receive_some(4096)
                    assert chunk, b"\n".join(node.stderr[-20:]).decode()
                    line += chunk
            node.info = json.loads(line)
            yield node
            proc.terminate()
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(10):
            await proc.wait()


async def publish(data_dir: Path, path: Path) -> str:
    cmd = [sys.executable, "-m", "overlay_cli.main", "--data-dir", str(data_dir), "--json", "ctl", "publish"]
    done = await trio.run_process([*cmd, str(path), "--replication", "0"], capture_stdout=True, check=True)
    return str(json.loads(done.stdout)["hash"])


async def stalled_download(host: str, port: int, path: str) -> trio.socket.SocketType:
    """A client that asks for ``path``, reads the response head, and then reads nothing more."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, port))
    await sock.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await sock.recv(1024)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head[:200]
    return sock


async def test_gateway_clients_that_do_not_read_hold_a_piece_each(tmp_path: Path) -> None:
    clients = 100
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * (3 * 1024 * 1024 // 256))  # 3 MiB
    with trio.fail_after(PROCESS_LIMIT):
        async with node_process(tmp_path / "node") as node:
            content = await publish(tmp_path / "node", source)
            host, port = host_port(node.http)
            async with httpx.AsyncClient(base_url=node.http) as client:
                r = await client.get(f"/uhrp/{content}")  # served whole to a client that reads
                assert r.content == source.read_bytes()
                r = await client.get(f"/uhrp/{content}", headers={"Range": "bytes=1000000-1000009"})
                assert (r.status_code, r.content) == (206, source.read_bytes()[1_000_000:1_000_010])
                before = node.rss()
                stalled = [await stalled_download(host, port, f"/uhrp/{content}") for _ in range(clients)]
                grown = node.rss() - before
                # each stalled client holds one piece (256 KiB) at most, not the 3 MiB object
                assert grown < 64 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB for {clients} clients"
                assert (await client.get("/health/live")).status_code == 200
                for sock in stalled:
                    sock.close()
                r = await client.get(f"/uhrp/{content}")
                assert r.content == source.read_bytes()


async def test_a_swarm_port_that_cannot_be_bound_is_one_line_and_exit_7(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with trio.fail_after(PROCESS_LIMIT):
            for args, reason in (
                (("--swarm-port", str(port)), f"127.0.0.1:{port}: Address already in use"),
                (("--swarm-host", "no-such-host.invalid", "--swarm-port", "0"), "no-such-host.invalid:0: "),
            ):
                done = await trio.run_process(
                    run_command(tmp_path / "node", *args), capture_stdout=True, capture_stderr=True, check=False
                )
                assert done.returncode == 7, done.stderr[-3000:]
                assert b"Traceback" not in done.stderr
                said = [line for line in done.stderr.splitlines() if not LOG_LINE.match(line)]
                assert len(said) == 1, said
                assert said[0].startswith(b"error: cannot bind swarm on "), said
                assert reason.encode() in said[0], said
                assert b"--swarm-port" in said[0]
    finally:
        taken.close()


def low_fd_limit() -> None:
    """In the child: 128 descriptors, at most 256 (the node raises its soft limit to the hard one)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 256))


async def connect_many(host: str, port: int, count: int) -> list[trio.socket.SocketType]:
    out = []
    for _ in range(count):
        sock = trio.socket.socket()
        await sock.connect((host, port))  # the kernel completes it in the backlog even when accept cannot
        out.append(sock)
    return out


async def test_running_out_of_file_descriptors(tmp_path: Path) -> None:
    with trio.fail_after(PROCESS_LIMIT):
        # a connection that never sends its upgrade request holds its descriptor for swarm.handshake_timeout, also
        # after the client closed it (trio-websocket notices only then): 5 s, so that the node recovers soon
        async with node_process(
            tmp_path / "node", "--set", "swarm.handshake_timeout=5", preexec_fn=low_fd_limit
        ) as node:
            assert b"open files limit: 256" in await node.wait_for_stderr(b"open files limit")
            host, port = node.swarm
            idle = await connect_many(host, port, 300)
            await node.wait_for_stderr(b"cannot accept swarm connections: Too many open files")
            idle += await connect_many(*host_port(node.http), 20)
            await node.wait_for_stderr(b"cannot accept http connections: Too many open files")
            for sock in idle:
                sock.close()
            # the node serves again (once the swarm's silent connections timed out): http, the swarm port (a
            # websocket upgrade), and it counted the failures
            async with httpx.AsyncClient(base_url=node.http, timeout=30) as client:
                assert (await client.get("/health/live")).status_code == 200
                metrics = (await client.get("/metrics")).text
            async with trio.open_nursery() as ws_nursery:
                ws = await open_from(ws_nursery, "127.0.0.1", str(node.info["swarm"][0]))
                await ws.aclose()
            for label in ("swarm", "http"):
                found = re.search(rf'^overlay_accept_failures_total{{port="{label}"}} (\S+)$', metrics, re.MULTILINE)
                assert found is not None, label
                assert float(found.group(1)) >= 1, label
    assert not [line for line in node.stderr if b"Traceback" in line]
    warnings = [line for line in node.stderr if b"cannot accept" in line]
    assert len(warnings) <= 4, warnings  # rate-limited: one per burst and port
