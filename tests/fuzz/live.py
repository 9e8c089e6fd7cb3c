"""The live surfaces of the fast fuzzer: one real ``overlay-node run`` subprocess on free ports, attacked surface by
surface by a client in a child process (raw sockets, many inputs per connection where the protocol allows), while a
watcher in this process asks the control API for ``status`` every 0.5 s and records its slowest answer (it must stay
under 1 s) and reads the node's RSS and open files from ``/proc/<pid>`` before and after each surface.

- ``live: http``: pipelines of requests to the public routes (fuzzed JSON bodies, BEEF, paths, queries and header
  values, sometimes a mangled head last); an input counts when the node answered it.
- ``live: control``: the same over the control socket, on routes that only read their bodies and answer (nothing
  that dials out, spends, stops the node or creates streams or DHT records).
- ``live: swarm``: MAC'd frames of fuzzed content on authenticated websocket links (a real BRC-103 handshake per
  link, thousands of frames per link, now and then a mangled sealed message that ends the link); counted by the
  node's ``overlay_frames_total{direction="in"}``.
- ``live: dht``: mutated datagrams and datagrams with fuzzed fields signed again with a valid key; counted by the
  node's ``overlay_dht_datagrams_total{direction="in"}``, paced so that the kernel's socket buffer does not drop them.

For the run the node's per-source limits are raised (DHT datagrams per source and per IP, signature checks per
second, handshakes per IP), so that inputs reach the decoders instead of the rate limiters: the limits are printed.
A crash is an ERROR line in the node's log, an ``internal`` error answer, a ``status`` slower than 1 s or failing, or
the node exiting."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from . import seeds
from .fast import Mutator

STATUS_EVERY = 0.5
STATUS_LIMIT = 1.0

#: the limits raised for a fuzz run (so that the fuzz reaches the decoders, not the rate limiters)
FUZZ_LIMITS = {
    "dht.max_datagrams_per_source": 10_000_000,
    "dht.max_datagrams_per_ip": 10_000_000,
    "dht.max_verifies_per_second": 10_000_000,
    "swarm.max_handshakes_per_ip": 10_000,
    "http.max_connections_per_ip": 10_000,
    "http.head_timeout": 2.0,
}

SWARM_METHODS = (
    "node.info", "pay.quote", "pay.receipt", "pay.submit", "stream.pay", "stream.subscribe", "stream.closed",
    "stream.packets", "stream.paused", "stream.unsubscribe", "advert.push", "content.offer", "content.replicate",
    "content.manifest", "content.read", "content.has", "content.bad", "content.grant", "no.such.method",
)  # fmt: skip


@dataclass
class NodeProcess:
    """The node under attack."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    info: dict[str, Any]

    @property
    def http(self) -> tuple[str, int]:
        host, _, port = self.info["http"].split("//", 1)[1].rstrip("/").rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def dht(self) -> tuple[str, int]:
        host, _, port = self.info["dht"].rpartition(":")
        return host.strip("[]"), int(port)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def errors(self) -> list[str]:
        log = (self.data_dir / "daemon.log").read_text(errors="replace")
        return [line[:300] for line in log.splitlines() if " ERROR " in line or '"level": "error"' in line.lower()]


def start_node(work: Path) -> NodeProcess:
    data_dir = work / "node"
    data_dir.mkdir(mode=0o700, parents=True)
    cli = str(Path(sys.executable).with_name("overlay-node"))
    args = [cli, "--data-dir", str(data_dir), "--json", "run", "--name", "fuzz", "--swarm-host", "127.0.0.1"]
    args += ["--swarm-port", "0", "--http-host", "127.0.0.1", "--http-port", "0", "--dht-port", "0"]
    args += ["--set", "dht.host=127.0.0.1", "--set", "auth.require=[]"]
    for key, value in FUZZ_LIMITS.items():
        args += ["--set", f"{key}={value}"]
    with open(data_dir / "daemon.log", "ab") as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # one JSON line once every service is ready: our readiness event
    if not line:
        proc.wait(timeout=30)
        tail = (data_dir / "daemon.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the node exited with {proc.returncode} before it was ready:\n{tail}")
    return NodeProcess(proc, data_dir, json.loads(line))


def stop_node(node: NodeProcess) -> None:
    if node.proc.poll() is None:
        node.proc.send_signal(signal.SIGINT)
        try:
            node.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()


# -- the watcher -----------------------------------------------------------------------------------------------------


def _unix_exchange(path: str, request: bytes, timeout: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(request)
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer += chunk
        return bytes(answer)


@dataclass
class Watcher:
    """Asks ``GET /v1/status`` on the control socket every 0.5 s (what ``overlay-node ctl status`` sends)."""

    node: NodeProcess
    worst: float = 0.0
    answers: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        self.worst, self.answers = 0.0, 0

    def run(self) -> None:
        request = b"GET /v1/status HTTP/1.1\r\nHost: ctl\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        while not self.stop.wait(STATUS_EVERY):
            began = time.monotonic()
            try:
                answer = _unix_exchange(self.node.info["control"], request, timeout=10.0)
            except OSError as exc:
                self.failures.append(f"status: {exc}")
                continue
            took = time.monotonic() - began
            self.worst = max(self.worst, took)
            if not answer.startswith(b"HTTP/1.1 200"):
                self.failures.append(f"status: {answer[:80]!r}")
            elif took >= STATUS_LIMIT:
                self.failures.append(f"status took {took:.2f} s")
            else:
                self.answers += 1


def metrics(http: tuple[str, int]) -> dict[str, float]:
    """The node's ``overlay_*`` samples from its public ``/metrics``."""
    host, port = http
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    out: dict[str, float] = {}
    for line in bytes(data).decode(errors="replace").splitlines():
        if line.startswith("overlay_") and " " in line:
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


# -- http and control ------------------------------------------------------------------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def _request(method: bytes, path: bytes, body: bytes, headers: bytes = b"") -> bytes:
    head = b"%b %b HTTP/1.1\r\nHost: fuzz\r\n%b" % (method, path, headers)
    return head + b"Content-Length: %d\r\n\r\n%b" % (len(body), body) if body or method == b"POST" else head + b"\r\n"


def _visible(value: bytes) -> bytes:
    """``value`` with what would break the request's framing (controls, DEL) taken out: the route sees it."""
    return bytes(b for b in value if 0x20 <= b < 0x7F or b >= 0x80 or b == 0x09).strip(b" \t")


def public_request(m: Mutator) -> bytes:
    """One request to a public route, its body, path, query or a header value fuzzed; framed correctly."""
    rng = m.rng
    pick = rng.random()
    if pick < 0.3:
        path, seed = rng.choice(
            [
                (b"/lookup", seeds.JSON_BODIES[0]),
                (b"/requestSyncResponse", seeds.JSON_BODIES[7]),
                (b"/requestForeignGASPNode", seeds.JSON_BODIES[8]),
                (b"/lookup", rng.choice(seeds.JSON_BODIES)),
            ]
        )
        return _request(b"POST", path, m.json(seed), b"Content-Type: application/json\r\nx-bsv-topic: tm_ship\r\n")
    if pick < 0.4:
        beefs = seeds.chain_seeds().all
        topics = (
            _visible(m.bytes_(b'["tm_ship"]', [b'["tm_uhrp"]'], rounds=1)) if rng.random() < 0.3 else b'["tm_ship"]'
        )
        beef = m.bytes_(rng.choice(beefs), beefs)
        return _request(
            b"POST", b"/submit", beef, b"Content-Type: application/octet-stream\r\nx-topics: %b\r\n" % topics
        )
    if pick < 0.5:
        body = m.bytes_(json.dumps(rng.choice(seeds.JSON_BODIES)).encode(), seeds.json_texts())
        return _request(b"POST", rng.choice([b"/lookup", b"/requestSyncResponse", b"/submit"]), body)
    paths = [b"/health/live", b"/health/ready", b"/listTopicManagers", b"/listLookupServiceProviders"]
    paths += [b"/uhrp/" + b"ab" * 32, b"/uhrp/" + m.bytes_(b"ab" * 32, [], rounds=2).hex().encode()[:70], b"/x"]
    path = rng.choice(paths)
    if rng.random() < 0.3:
        path = _visible(m.bytes_(path + b"?q=1", [], rounds=2)).replace(b" ", b"%20")
    extra = b"X-F: %b\r\n" % _visible(m.bytes_(b"value", [], rounds=2))
    return _request(rng.choice([b"GET", b"GET", b"HEAD", b"DELETE"]), path or b"/", b"", extra)


def control_request(m: Mutator) -> bytes:
    rng = m.rng
    routes: list[tuple[bytes, bytes, Any]] = [
        (b"GET", b"/v1/status", None),
        (b"GET", b"/v1/peers", None),
        (b"GET", b"/v1/dht", None),
        (b"GET", b"/v1/content", None),
        (b"GET", b"/v1/streams", None),
        (b"GET", b"/v1/wallet/balance", None),
        (b"GET", b"/v1/content/" + b"ab" * 32 + b"/status", None),
        (b"POST", b"/v1/dht/get", {"namespace": "ship", "name": "tm_foo"}),
        (b"POST", b"/v1/discover", {"topic": "tm_fuzz", "capabilities": ["gpu"], "max_price": 3}),
        (b"POST", b"/v1/content/search", {"tags": ["a"], "content_type": "text/plain", "max_price": 1}),
        (b"POST", b"/v1/content/lineage", {"hash": "ab" * 32, "depth": 2}),
        (b"POST", b"/v1/overlay/lookup", {"service": "ls_ship", "query": {"findAll": True}}),
        (b"POST", b"/v1/overlay/history", {"outpoint": "ab" * 32 + ".0", "depth": 1}),
        (b"POST", b"/v1/reports/analytics", {"stream_id": "s1"}),
    ]
    method, path, seed = rng.choice(routes)
    if seed is None:
        return _request(method, path, b"")
    body = m.json(seed) if rng.random() < 0.6 else m.bytes_(json.dumps(seed).encode(), seeds.json_texts())
    return _request(method, path, body, b"Content-Type: application/json\r\n")


def _garbage(m: Mutator, make: Callable[[Mutator], bytes]) -> bytes:
    request = make(m)
    if m.rng.random() < 0.5:
        return m.http_head(request)
    return m.bytes_(request, seeds.HTTP_REQUESTS)


def attack_http(address: Any, family: int, make: Callable[[Mutator], bytes], n: int, seed: int) -> dict[str, Any]:
    """Pipelines of 1-64 requests per connection until the node has answered ``n``."""
    rng = random.Random(seed)
    m = Mutator(rng)
    out: dict[str, Any] = {"sent": 0, "answered": 0, "connections": 0, "statuses": {}}
    statuses: dict[str, int] = out["statuses"]
    where = "live-http" if family == socket.AF_INET else "live-control"
    while out["answered"] < n:
        batch = [make(m) for _ in range(rng.randint(1, 64))]
        if rng.random() < 0.3:
            batch.append(_garbage(m, make))
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            try:
                sock.connect(address)
                sock.sendall(b"".join(batch))
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            answer = bytearray()
            try:
                while chunk := sock.recv(262144):
                    answer += chunk
            except OSError:
                pass
        out["connections"] += 1
        out["sent"] += len(batch)
        for status in STATUS_LINE.findall(bytes(answer)):
            key = status.decode()
            statuses[key] = statuses.get(key, 0) + 1
            out["answered"] += 1
            if key == "500":
                # the node failed on one of this connection's requests: the whole pipeline is the crash's input
                out.setdefault("crash_files", []).append(_save_crash(where, b"".join(batch)))
    out["crash_answers"] = statuses.get("500", 0)
    out["refused"] = sum(count for status, count in statuses.items() if status.startswith("4"))
    return out


def _save_crash(name: str, data: bytes) -> str:
    from .fast import CRASHES, ROOT

    CRASHES.mkdir(parents=True, exist_ok=True)
    path = CRASHES / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return str(path.relative_to(ROOT))


# -- swarm -----------------------------------------------------------------------------------------------------------


def _frame(m: Mutator, i: int, bodies: list[Any]) -> Any:
    from overlay_node.errors import LocalProtocolError
    from overlay_node.wire import frames as f

    rng = m.rng
    body = m.value(rng.choice(bodies))
    if not isinstance(body, dict):
        body = {"value": body}
    method = rng.choice(SWARM_METHODS)
    try:
        pick = rng.random()
        if pick < 0.6:
            return f.Request(id=i, method=method, body=body)
        if pick < 0.8:
            return f.Notice(method=method, body=body)
        if pick > 0.9995:
            # a transfer frame for a transfer that was never opened: the link is dropped (unknown_transfer)
            return rng.choice(seeds.frame_seeds()[7:])
        return f.TransferOpen(id=i, method=method, header=body)
    except LocalProtocolError:
        return None


async def _swarm(url: str, http: tuple[str, int], n: int, seed: int) -> dict[str, Any]:
    import trio
    from trio_websocket import ConnectionClosed, HandshakeError, connect_websocket_url

    from overlay_node.crypto.keys import Identity
    from overlay_node.errors import OverlayError
    from overlay_node.wire import frames as f
    from tests.integration.peer_fixtures import RawInitiator

    rng = random.Random(seed)
    m = Mutator(rng)
    ms = seeds.message_seeds()
    bodies = [*ms.maps, *(frame.get("b", frame.get("h", {})) for frame in seeds.frame_maps())]
    out: dict[str, Any] = {"sent": 0, "links": 0, "answers": {}, "internal": [], "connect_errors": 0}
    answers: dict[str, int] = out["answers"]
    identity = Identity.generate()

    async def drain(raw: RawInitiator) -> None:
        try:
            while True:
                frame = await raw.receive()
                key = frame.code if isinstance(frame, f.ErrorResponse) else type(frame).__name__
                answers[key] = answers.get(key, 0) + 1
                if isinstance(frame, f.ErrorResponse) and frame.code == "internal":
                    out["internal"].append(frame.message[:200])
        except (ConnectionClosed, OverlayError, AssertionError, trio.ClosedResourceError):
            pass

    frames_key = 'overlay_frames_total{direction="in"}'
    start = metrics(http).get(frames_key, 0.0)
    out["read"] = 0
    while out["read"] < n:
        try:
            async with trio.open_nursery() as nursery:
                ws = await connect_websocket_url(nursery, url, max_message_size=1 << 22, message_queue_size=4096)
                raw = RawInitiator(ws, identity)
                await raw.handshake()
                out["links"] += 1
                nursery.start_soon(drain, raw)
                try:
                    for i in range(rng.randint(500, 5000)):
                        if rng.random() < 0.002:
                            # a mangled sealed message: refused, and the link ends
                            data = m.bytes_(rng.choice(seeds.frame_bytes()), seeds.frame_bytes())
                            assert raw.sealer is not None
                            await ws.send_message(raw.sealer.seal(data))
                            out["sent"] += 1
                            break
                        frame = _frame(m, i + 1, bodies)
                        if frame is None:
                            continue
                        await raw.send(frame)
                        out["sent"] += 1
                        if out["sent"] - out["links"] * 2 >= n:
                            break
                except ConnectionClosed:
                    pass
                finally:
                    with trio.move_on_after(2):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        except (OSError, trio.BrokenResourceError, OverlayError, HandshakeError, ConnectionClosed):
            out["connect_errors"] += 1
        # what the node has read (its own count of messages received on links: the handshake's two included)
        out["read"] = int(metrics(http).get(frames_key, 0.0) - start) - 2 * out["links"]
    # error answers, cancelled transfers and links dropped for a protocol error
    out["refused"] = sum(n for code, n in answers.items() if code not in ("Response", "Pong", "TransferCredit"))
    out["refused"] += out["links"] - 1
    return out


def attack_swarm(url: str, http: tuple[str, int], n: int, seed: int) -> dict[str, Any]:
    import trio

    result: dict[str, Any] = trio.run(_swarm, url, http, n, seed)
    return result


# -- dht -------------------------------------------------------------------------------------------------------------


def attack_dht(http: tuple[str, int], target: tuple[str, int], n: int, seed: int) -> dict[str, Any]:
    """Datagrams until the node has read ``n`` (its own counter), never more than a socket buffer ahead of it."""
    from overlay_node.services.dht_rpc import Signer
    from overlay_node.wire import dht

    rng = random.Random(seed)
    m = Mutator(rng)
    sender = Signer(seeds.keys().alice)
    pub = seeds.keys().alice.public_key
    key = 'overlay_dht_datagrams_total{direction="in"}'
    start = metrics(http).get(key, 0.0)
    drops = _drops(metrics(http))
    out: dict[str, Any] = {"sent": 0, "read": 0, "answers": 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        while out["read"] < n:
            now = time.time()
            fresh = dht.Store(
                rpc_id=rng.randbytes(8), record=seeds.dht_record(expires=int(now) + 600, seq=rng.randint(0, 9))
            )
            datagrams = [
                dht.encode(msg, sender_pub=pub, now=now, sign=sender.sign) for msg in (*seeds.dht_messages(), fresh)
            ]
            for _ in range(1000):
                pick = rng.random()
                if pick < 0.1:
                    data = rng.randbytes(rng.randrange(1500))
                elif pick < 0.5:
                    data = m.bytes_(rng.choice(datagrams), datagrams)
                else:
                    inner = cbor2.loads(cbor2.loads(rng.choice(datagrams))[0])
                    try:
                        data = seeds.sign_datagram(bytes(cbor2.dumps(m.value(inner), canonical=True)))
                    except (cbor2.CBOREncodeError, ValueError, TypeError):
                        continue
                try:
                    sock.sendto(data, target)
                    out["sent"] += 1
                except BlockingIOError:
                    pass
                try:
                    while sock.recv(4096):
                        out["answers"] += 1
                except BlockingIOError:
                    pass
            # pace: no more than ~1500 datagrams ahead of what the node has read (its receive buffer is 1 MiB)
            while True:
                out["read"] = int(metrics(http).get(key, 0.0) - start)
                if out["sent"] - out["read"] < 1500 or out["read"] >= n:
                    break
                time.sleep(0.02)
    # dropped by the node after parsing (malformed, bad signature, unexpected...); none by a rate limit
    samples = metrics(http)
    out["read"] = int(samples.get(key, 0.0) - start)
    after = _drops(samples)
    out["drops"] = {reason: n - drops.get(reason, 0) for reason, n in after.items() if n > drops.get(reason, 0)}
    out["refused"] = sum(out["drops"].values())
    return out


def _drops(samples: dict[str, float]) -> dict[str, int]:
    prefix = 'overlay_dht_drops_total{reason="'
    return {k[len(prefix) : -2]: int(v) for k, v in samples.items() if k.startswith(prefix)}


# -- the run ---------------------------------------------------------------------------------------------------------


def _in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a forked child (its CPU is not the watcher's)."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        result: dict[str, Any] = pool.apply(fn, args)
    return result


def run(inputs: int, seed: int, only: list[str] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every live surface (or those named in ``only``), ``inputs`` each, against one node; rows for the table."""
    limits = ", ".join(f"{k}={v}" for k, v in FUZZ_LIMITS.items())
    print(f"live: one node, per-source limits raised for the fuzz: {limits}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="overlay-fuzz-"))
    node = start_node(work)
    watcher = Watcher(node)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    rows: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {
        "limits": FUZZ_LIMITS,
        "rss_start_mib": round(node.rss() / 2**20, 1),
        "fds_start": node.fds(),
    }
    attacks: list[tuple[str, Callable[..., dict[str, Any]], tuple[Any, ...]]] = [
        ("live: http", attack_http, (node.http, socket.AF_INET, public_request)),
        ("live: control", attack_http, (node.info["control"], socket.AF_UNIX, control_request)),
        ("live: swarm", attack_swarm, (node.info["swarm"][0], node.http)),
        ("live: dht", attack_dht, (node.http, node.dht)),
    ]
    try:
        for i, (name, fn, args) in enumerate(attacks):
            if only and not any(w in name for w in only):
                continue
            rows[name] = _live_surface(node, watcher, fn, (*args, inputs, seed + 1000 + i))
            print(_line(name, rows[name]), flush=True)
    finally:
        watcher.stop.set()
        thread.join()
        extra["rss_end_mib"] = round(node.rss() / 2**20, 1) if node.proc.poll() is None else None
        extra["fds_end"] = node.fds() if node.proc.poll() is None else None
        extra["status_answers"] = watcher.answers
        extra["status_failures"] = watcher.failures[:20]
        stop_node(node)
        extra["node_exit_code"] = node.proc.returncode
        extra["node_errors"] = node.errors()[:20]
        if extra["node_errors"]:
            # the node's log (its tracebacks) kept beside the crash inputs
            from .fast import CRASHES, ROOT

            CRASHES.mkdir(parents=True, exist_ok=True)
            kept = CRASHES / f"live-node-{time.strftime('%Y%m%dT%H%M%S')}.log"
            shutil.copy(node.data_dir / "daemon.log", kept)
            extra["node_log"] = str(kept.relative_to(ROOT))
        shutil.rmtree(work, ignore_errors=True)
    return rows, extra


def _line(name: str, row: dict[str, Any]) -> str:
    from .fast import table_line

    return table_line(name, row)


def _live_surface(
    node: NodeProcess, watcher: Watcher, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]
) -> dict[str, Any]:
    before_rss, before_fds = node.rss(), node.fds()
    errors_before, failures_before = len(node.errors()), len(watcher.failures)
    watcher.reset()
    began = time.monotonic()
    result = _in_child(fn, *args)
    seconds = time.monotonic() - began
    alive = node.proc.poll() is None
    inputs = int(result.get("answered", result.get("read", 0)))
    errors = node.errors()[errors_before:]
    crashes = len(errors) + len(watcher.failures) - failures_before + len(result.get("internal", []))
    crashes += int(result.get("crash_answers", 0)) + (0 if alive else 1)
    return {
        "inputs": inputs,
        "refused": result.get("refused", "-"),
        "crashes": crashes,
        "seconds": round(seconds, 1),
        "inputs_per_second": round(inputs / seconds) if seconds else 0,
        "rss_before_mib": round(before_rss / 2**20, 1),
        "rss_after_mib": round(node.rss() / 2**20, 1) if alive else 0,
        "fds_before": before_fds,
        "fds_after": node.fds() if alive else 0,
        "status_worst_s": round(watcher.worst, 3),
        "status_answers": watcher.answers,
        **({"node_errors": errors[:10]} if errors else {}),
        "client": result,
    }
