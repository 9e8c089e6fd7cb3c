"""Benchmark of authenticated peer links (BRC-103 handshake, then HMAC'd CBOR frames over websockets) between two
processes on 127.0.0.1, against plain trio-websocket between the same two processes in the same run.

Run from the repository root::

    .venv/bin/python bench/bench_links.py [--quick] [--frames 100000] [--rounds 3] [--rtt 5000]
        [--handshakes 1000] [--dial-workers 8] [--size 1024] [--profile DIR]

Two processes (``bench/nodeproc.py`` hosts with no nodes: each runs a bare
:class:`~overlay_node.net.peers.PeerManager` with a fresh identity and the default ``[swarm]`` section, except
that it listens on 127.0.0.1 and a port the system picks): A dials, B listens. Measured:

- authenticated frames/s one way, A -> B: ``link.notify`` of ``--size`` bytes (a CBOR byte string in the notice
  body) in one sender task; B's registered notice handler counts them (the cheapest application path: no
  answer, no task per frame, handlers run in arrival order). Elapsed = B's time of the last delivery - A's time
  before the first send (``time.perf_counter`` is ``CLOCK_MONOTONIC`` on Linux, one clock for both processes);
- the raw limit, in the same processes: plain trio-websocket binary messages of ``--size`` bytes on a connection
  with the same settings as a peer link (64 KiB receive buffer, message queue of 1), no auth, no CBOR; B's
  reader counts them. Raw and authenticated rounds alternate (``--rounds`` each) so noise hits both alike; the
  ratio is taken per round;
- RTT: sequential request/response round trips on the established link (B answers with a registered echo
  handler returning the ``--size`` byte body) and the same over a plain websocket echo; p50/p99 from A's clock;
- handshakes/s: ``--dial-workers`` tasks in A dial B over and over (TCP, websocket upgrade, BRC-103, Hello
  exchange; :meth:`PeerManager.connect` with the expected key), close each link, and dial again; first with one
  peer manager (one identity) per worker ("reconnects": ECDH secrets cached on both sides), then with a fresh
  identity (a new peer manager) per link ("new peers": nothing cached; the new manager's start is in the rate
  but not in the per-dial latency). Each link is closed (``link.aclose()``) in a task of its own while its worker
  dials again: a dialer's ``aclose`` often waits the whole ``CLOSE_GRACE`` (1 s) for a close handshake that has
  already happened (both sides close at once, and the link's websocket reader task is gone by then), so closing
  inline would measure that wait rather than handshakes; the close times are reported beside. The listener's
  CPU per link gives what one listener core could accept (here the dialers, doing as much work, are the limit).

CPU time per frame (one way) and per round trip (requester and responder) of each process comes from ``/proc``,
and the cores the whole machine had busy meanwhile (other work on the machine shows there). ``--quick``: 20,000
frames per round, 1,000 round trips, 200 links per handshake mode (about 15 s). ``--profile DIR`` writes cProfile
dumps (CPU time of the trio thread) of both processes during one extra authenticated round and one extra run of
round trips, left out of the figures (``DIR/links-sender.prof``, ``DIR/links-receiver.prof``,
``DIR/rtt-requester.prof``, ``DIR/rtt-responder.prof``).
Prints a table against the targets and saves ``bench/results/bench_links.json`` (with the commit and the files of
``overlay_node/`` changed in the working tree); never fails on time: it exits non-zero only when something is
wrong (a frame lost, a wrong echo, a dial refused, a process that fails).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel
from trio_websocket import ConnectionClosed, WebSocketRequest, connect_websocket, serve_websocket

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodeproc import Host, NodeProcess, system_cpu_seconds  # noqa: E402  # bench/ is on sys.path as a script
from results_io import save  # noqa: E402  # bench/ is on sys.path

from overlay_node.config import SwarmSection  # noqa: E402
from overlay_node.crypto.keys import Identity  # noqa: E402
from overlay_node.metrics import Metrics  # noqa: E402
from overlay_node.net.link import CLOSE_GRACE, WS_SLACK  # noqa: E402
from overlay_node.net.peers import RECEIVE_BUFFER, PeerLink, PeerManager  # noqa: E402
from overlay_node.protocol.session import FRAME_OVERHEAD  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bench_links.json"
#: the default [swarm] section, on loopback with a port the system picks
SWARM = SwarmSection(host="127.0.0.1", port=0)
FRAME_METHOD = "bench.frame"
ECHO_METHOD = "bench.echo"
#: plain websockets get the limits a peer link's websocket has
RAW_MAX_MESSAGE = SWARM.max_frame + FRAME_OVERHEAD + WS_SLACK
#: no wait for frames or answers in this bench may take longer (a real error, not a slow machine)
WAIT_LIMIT = 300.0
#: links of the handshake runs being closed at once, at most (each is off the listener's books at once)
MAX_CLOSING = 1000

TARGETS = {"auth_frames_per_s": 15_000, "ratio": 0.5, "rtt_p99_ms": 2.0}


# -- what runs in the two processes ---------------------------------------------------------------------------


@dataclass
class _Sink:
    """Counts frames delivered (authenticated notices or raw messages alike) and stamps the last one."""

    target: int = 0
    count: int = 0
    t_last: float = 0.0
    done: trio.Event = field(default_factory=trio.Event)

    def reset(self, target: int) -> None:
        self.target, self.count, self.t_last, self.done = target, 0, 0.0, trio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count == self.target:
            self.t_last = time.perf_counter()
            self.done.set()

    async def notice(self, _link: PeerLink, _body: dict[str, Any]) -> None:
        self.hit()


async def _echo(_link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
    return body


def _describe(_node: Any) -> dict[str, Any]:  # the hosts run no nodes; nodeproc wants a describe function
    return {}


async def _start_manager(nursery: trio.Nursery, identity: Identity, metrics: Metrics) -> tuple[PeerManager, str]:
    pm = PeerManager(identity, SWARM, metrics)
    urls: list[str] = await nursery.start(pm.run)
    return pm, urls[0]


async def link_ops(host: Host, op: str, args: list[Any]) -> Any:
    """The operations of both processes (A: sender/dialer, B: receiver/listener)."""
    run = _OPS.get(op)
    if run is None:
        raise ValueError(f"unknown op {op}")
    return await run(host, args)


async def _op_peer(host: Host, _args: list[Any]) -> Any:
    """A peer manager with a fresh identity; B's counts notices and echoes requests."""
    st = host.state
    sink = st["sink"] = _Sink()
    metrics = st["metrics"] = Metrics()
    pm = PeerManager(Identity.generate(), SWARM, metrics)
    pm.on_notice(FRAME_METHOD, sink.notice)
    pm.on_request(ECHO_METHOD, _echo)
    urls: list[str] = await host.nursery.start(pm.run)
    st["pm"] = pm
    return {"url": urls[0], "key": pm.identity_key}


async def _op_connect(host: Host, args: list[Any]) -> Any:
    url, key = args
    host.state["link"] = await host.state["pm"].connect(url, expect_key=key)
    return None


async def _op_raw_serve(host: Host, _args: list[Any]) -> Any:
    """A plain websocket server: /sink counts messages, /echo sends each back."""
    sink = host.state["sink"]

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            if request.path == "/sink":
                while True:
                    await ws.get_message()
                    sink.hit()
            else:
                while True:
                    await ws.send_message(await ws.get_message())
        except ConnectionClosed:
            return

    server = await host.nursery.start(
        lambda task_status: serve_websocket(
            handler,
            "127.0.0.1",
            0,
            None,
            max_message_size=RAW_MAX_MESSAGE,
            receive_buffer_size=RECEIVE_BUFFER,
            task_status=task_status,
        )
    )
    return server.port


async def _op_raw_connect(host: Host, args: list[Any]) -> Any:
    (port,) = args
    for path in ("/sink", "/echo"):
        host.state[f"raw{path}"] = await connect_websocket(
            host.nursery,
            "127.0.0.1",
            port,
            path,
            use_ssl=False,
            max_message_size=RAW_MAX_MESSAGE,
            receive_buffer_size=RECEIVE_BUFFER,
        )
    return None


async def _op_expect(host: Host, args: list[Any]) -> Any:
    """Count the next ``n`` frames."""
    host.state["sink"].reset(args[0])
    return None


async def _op_wait(host: Host, _args: list[Any]) -> Any:
    sink = host.state["sink"]
    with trio.fail_after(WAIT_LIMIT):
        await sink.done.wait()
    return {"t_last": sink.t_last, "count": sink.count}


async def _op_send(host: Host, args: list[Any]) -> Any:
    """``n`` notices of ``size`` bytes, one sender task."""
    n, size = args
    link: PeerLink = host.state["link"]
    body = {"d": os.urandom(size)}
    t0 = time.perf_counter()
    for _ in range(n):
        await link.notify(FRAME_METHOD, body)
    return {"t0": t0, "t_sent": time.perf_counter()}


async def _op_raw_send(host: Host, args: list[Any]) -> Any:
    n, size = args
    ws = host.state["raw/sink"]
    message = os.urandom(size)
    t0 = time.perf_counter()
    for _ in range(n):
        await ws.send_message(message)
    return {"t0": t0, "t_sent": time.perf_counter()}


async def _op_rtt(host: Host, args: list[Any]) -> Any:
    n, size = args
    link: PeerLink = host.state["link"]
    body = {"d": os.urandom(size)}
    out = []
    with trio.fail_after(WAIT_LIMIT):
        for _ in range(n):
            t = time.perf_counter()
            answer = await link.request(ECHO_METHOD, body)
            out.append(time.perf_counter() - t)
            if answer != body:
                raise RuntimeError("the echo handler answered something else")
    return out


async def _op_raw_rtt(host: Host, args: list[Any]) -> Any:
    n, size = args
    ws = host.state["raw/echo"]
    message = os.urandom(size)
    out = []
    with trio.fail_after(WAIT_LIMIT):
        for _ in range(n):
            t = time.perf_counter()
            await ws.send_message(message)
            if await ws.get_message() != message:
                raise RuntimeError("the echo server answered something else")
            out.append(time.perf_counter() - t)
    return out


async def _op_churn(host: Host, args: list[Any]) -> Any:
    url, key, count, workers, fresh = args
    with trio.fail_after(WAIT_LIMIT):
        return await _churn(host.state["metrics"], url, key, count, workers, fresh)


async def _op_profile(host: Host, args: list[Any]) -> Any:
    """(path) starts cProfile on this (the trio) thread; (None) stops it and writes the dump."""
    (path,) = args
    if path is not None:
        prof = cProfile.Profile(time.thread_time)  # CPU time of the trio thread: waits and preemption left out
        host.state["profile"] = (prof, path)
        prof.enable()
    else:
        prof, path = host.state.pop("profile")
        prof.disable()
        prof.dump_stats(path)
    return None


_OPS: dict[str, Callable[[Host, list[Any]], Awaitable[Any]]] = {
    "peer": _op_peer,
    "connect": _op_connect,
    "raw_serve": _op_raw_serve,
    "raw_connect": _op_raw_connect,
    "expect": _op_expect,
    "wait": _op_wait,
    "send": _op_send,
    "raw_send": _op_raw_send,
    "rtt": _op_rtt,
    "raw_rtt": _op_raw_rtt,
    "churn": _op_churn,
    "profile": _op_profile,
}


async def _churn(metrics: Metrics, url: str, key: str, count: int, workers: int, fresh: bool) -> dict[str, Any]:
    """``workers`` tasks dial ``url`` until ``count`` links were established. Each link is closed in a task of its
    own while its worker dials again (``aclose`` of an outbound link often waits the whole ``CLOSE_GRACE``, see the
    module doc). ``fresh``: every link from a new peer manager with a new identity; else one manager per worker."""
    latencies: list[float] = []
    closes: list[float] = []
    remaining = count
    pending = trio.CapacityLimiter(MAX_CLOSING)
    all_closed = trio.Event()

    async def close(link: PeerLink, scope: trio.CancelScope | None) -> None:
        async with pending:
            t = time.perf_counter()
            await link.aclose()
            closes.append(time.perf_counter() - t)
            if scope is not None:
                scope.cancel()
            if len(closes) == count:
                all_closed.set()

    async def fresh_manager(*, task_status: trio.TaskStatus[tuple[PeerManager, trio.CancelScope]]) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as own:
                pm, _ = await _start_manager(own, Identity.generate(), metrics)
                task_status.started((pm, scope))

    async def worker(nursery: trio.Nursery) -> None:
        nonlocal remaining
        pm: PeerManager | None = None
        scope: trio.CancelScope | None = None
        if not fresh:
            pm, _ = await _start_manager(nursery, Identity.generate(), metrics)
        while remaining > 0:
            remaining -= 1
            if fresh:
                pm, scope = await nursery.start(fresh_manager)
            assert pm is not None
            t = time.perf_counter()
            link = await pm.connect(url, expect_key=key)
            latencies.append(time.perf_counter() - t)
            nursery.start_soon(close, link, scope)
            # until its close began (else the next connect() returns this link again): no event says so, and
            # it takes a turn or two of the loop
            while not link.closed:
                await trio.lowlevel.checkpoint()

    machine, started = system_cpu_seconds(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as dialers:
            for _ in range(workers):
                dialers.start_soon(worker, nursery)
        elapsed = time.perf_counter() - started
        busy = {k: round((v - machine[k]) / elapsed, 2) for k, v in system_cpu_seconds().items()}
        await all_closed.wait()  # the closes still under way (each bounded by CLOSE_GRACE)
        nursery.cancel_scope.cancel()  # the workers' managers
    return {"elapsed": elapsed, "latencies": latencies, "closes": closes, "machine": busy}


# -- the measurements (in the benchmark's process) ------------------------------------------------------------


def _ms_quantiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[max(0, int(len(ms) * 0.99) - 1)], 3),
        "max_ms": round(ms[-1], 3),
    }


async def _one_way(a: NodeProcess, b: NodeProcess, raw: bool, n: int, size: int) -> dict[str, Any]:
    await b.call("expect", n)
    cpu = a.cpu_seconds(), b.cpu_seconds()
    sent = await a.call("raw_send" if raw else "send", n, size)
    got = await b.call("wait")
    elapsed = got["t_last"] - sent["t0"]
    return {
        "frames": n,
        "seconds": round(elapsed, 4),
        "frames_per_s": round(n / elapsed, 1),
        "mb_per_s": round(n * size / elapsed / 1e6, 2),
        "cpu_us_per_frame": {
            "sender": round((a.cpu_seconds() - cpu[0]) / n * 1e6, 2),
            "receiver": round((b.cpu_seconds() - cpu[1]) / n * 1e6, 2),
        },
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"size": args.size}
    a = await trio.to_thread.run_sync(lambda: NodeProcess([], link_ops, _describe, log_level=logging.WARNING))
    try:
        b = await trio.to_thread.run_sync(lambda: NodeProcess([], link_ops, _describe, log_level=logging.WARNING))
        try:
            await _measure(a, b, args, out)
        finally:
            await b.stop()
    finally:
        await a.stop()
    return out


async def _measure(a: NodeProcess, b: NodeProcess, args: argparse.Namespace, out: dict[str, Any]) -> None:
    size = args.size
    peer_b = await b.call("peer")
    await a.call("peer")
    port = await b.call("raw_serve")
    await a.call("connect", peer_b["url"], peer_b["key"])
    await a.call("raw_connect", port)

    # warm up both paths (imports, caches, TCP windows)
    for raw in (True, False):
        await _one_way(a, b, raw, min(2_000, args.frames), size)
    await a.call("rtt", 200, size)
    await a.call("raw_rtt", 200, size)

    rounds: list[dict[str, Any]] = []
    machine, wall = system_cpu_seconds(), time.perf_counter()
    ours = a.cpu_seconds() + b.cpu_seconds()
    for _ in range(args.rounds):
        raw_run = await _one_way(a, b, True, args.frames, size)
        auth_run = await _one_way(a, b, False, args.frames, size)
        rounds.append(
            {
                "raw": raw_run,
                "auth": auth_run,
                "ratio": round(auth_run["frames_per_s"] / raw_run["frames_per_s"], 3),
            }
        )
    wall = time.perf_counter() - wall
    out["one_way_rounds"] = rounds
    out["one_way"] = {
        "auth_frames_per_s": _spread([r["auth"]["frames_per_s"] for r in rounds]),
        "raw_frames_per_s": _spread([r["raw"]["frames_per_s"] for r in rounds]),
        "ratio": _spread([r["ratio"] for r in rounds]),
    }
    out["one_way_machine_cores"] = {
        "cores": os.cpu_count(),
        **{k: round((v - machine[k]) / wall, 2) for k, v in system_cpu_seconds().items()},
        "these_two": round((a.cpu_seconds() + b.cpu_seconds() - ours) / wall, 2),
    }
    if args.profile:  # one more authenticated round under cProfile (slower: not in the figures)
        folder = Path(args.profile)  # made by main()
        await a.call("profile", str(folder / "links-sender.prof"))
        await b.call("profile", str(folder / "links-receiver.prof"))
        await _one_way(a, b, False, args.frames, size)
        await a.call("profile", None)
        await b.call("profile", None)

    # round trips: authenticated request/echo, then the plain websocket echo, then again (order effects show)
    lat: dict[str, list[float]] = {"rtt": [], "raw_rtt": []}
    cpu_s: dict[str, list[float]] = {"rtt": [0.0, 0.0], "raw_rtt": [0.0, 0.0]}
    for _ in range(2):
        for op in ("rtt", "raw_rtt"):
            cpu = a.cpu_seconds(), b.cpu_seconds()
            lat[op] += await a.call(op, args.rtt // 2, size)
            cpu_s[op][0] += a.cpu_seconds() - cpu[0]
            cpu_s[op][1] += b.cpu_seconds() - cpu[1]
    for op, name in (("rtt", "rtt_auth"), ("raw_rtt", "rtt_raw")):
        n = len(lat[op])
        out[name] = _ms_quantiles(lat[op])
        # CPU per round trip of each process: A asks (request, then reads the answer), B answers (reads, handler,
        # writes the answer)
        out[name]["cpu_us_per_round_trip"] = {
            "requester": round(cpu_s[op][0] / n * 1e6, 2),
            "responder": round(cpu_s[op][1] / n * 1e6, 2),
        }
    if args.profile:  # one more authenticated RTT run under cProfile (slower: not in the figures)
        folder = Path(args.profile)
        await a.call("profile", str(folder / "rtt-requester.prof"))
        await b.call("profile", str(folder / "rtt-responder.prof"))
        await a.call("rtt", args.rtt // 2, size)
        await a.call("profile", None)
        await b.call("profile", None)

    for mode, fresh in (("reconnect", False), ("new_peer", True)):
        cpu = a.cpu_seconds(), b.cpu_seconds()
        churn = await a.call("churn", peer_b["url"], peer_b["key"], args.handshakes, args.dial_workers, fresh)
        n = len(churn["latencies"])
        out[f"handshakes_{mode}"] = {
            "links": n,
            "workers": args.dial_workers,
            "seconds": round(churn["elapsed"], 3),
            "per_s": round(n / churn["elapsed"], 1),
            "dial": _ms_quantiles(churn["latencies"]),
            "close": _ms_quantiles(churn["closes"]),
            # closes that waited (nearly) the whole CLOSE_GRACE for the close handshake
            "closes_stalled": sum(c >= 0.9 * CLOSE_GRACE for c in churn["closes"]),
            "cpu_ms_per_link": {
                "dialer": round((a.cpu_seconds() - cpu[0]) / n * 1000, 3),
                "listener": round((b.cpu_seconds() - cpu[1]) / n * 1000, 3),
            },
            # the whole machine while the links were dialed (not while the last ones were still closing)
            "machine_cores": {"cores": os.cpu_count(), **churn["machine"]},
        }
        # what one core of the listener could accept at that CPU cost (the dialers here may be the bottleneck)
        listener_ms = out[f"handshakes_{mode}"]["cpu_ms_per_link"]["listener"]
        out[f"handshakes_{mode}"]["listener_per_core"] = round(1000 / listener_ms, 1) if listener_ms else None


def print_table(r: dict[str, Any]) -> None:
    def row(name: str, value: str, target: str = "") -> None:
        print(f"{name:<52} {value:>22} {target:>12}")

    def spread(s: dict[str, float], fmt: str = "{:.0f}") -> str:
        return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"

    ow = r["one_way"]
    rounds = r["one_way_rounds"]
    size = r["size"]
    row("measure (median of rounds, (min-max))", "value", "target")
    row(
        f"authenticated {size} B frames/s one way",
        spread(ow["auth_frames_per_s"]),
        f">= {TARGETS['auth_frames_per_s']}",
    )
    row(f"plain websocket {size} B messages/s one way", spread(ow["raw_frames_per_s"]))
    row("ratio authenticated / plain", spread(ow["ratio"], "{:.2f}"), f">= {TARGETS['ratio']:.2f}")
    auth_cpu = [x["auth"]["cpu_us_per_frame"] for x in rounds]
    raw_cpu = [x["raw"]["cpu_us_per_frame"] for x in rounds]
    for who in ("sender", "receiver"):
        row(
            f"  CPU us per frame, {who}: auth / plain",
            f"{statistics.median(c[who] for c in auth_cpu):.1f} / {statistics.median(c[who] for c in raw_cpu):.1f}",
        )
    m = r["one_way_machine_cores"]
    if "busy" in m:
        row(
            f"  cores busy in one-way runs (of {m['cores']}): all, these two, steal",
            f"{m['busy']:.2f}, {m['these_two']:.2f}, {m['steal']:.2f}",
        )
    ra, rr = r["rtt_auth"], r["rtt_raw"]
    row("link RTT p50 (ms): authenticated / plain", f"{ra['p50_ms']:.3f} / {rr['p50_ms']:.3f}")
    row(
        "link RTT p99 (ms): authenticated / plain",
        f"{ra['p99_ms']:.3f} / {rr['p99_ms']:.3f}",
        f"< {TARGETS['rtt_p99_ms']:g}",
    )
    if "cpu_us_per_round_trip" in ra:
        ca, cr = ra["cpu_us_per_round_trip"], rr["cpu_us_per_round_trip"]
        for who in ("requester", "responder"):
            row(f"  CPU us per round trip, {who}: auth / plain", f"{ca[who]:.1f} / {cr[who]:.1f}")
    for mode, label in (("reconnect", "reconnects, same identities"), ("new_peer", "new identity per link")):
        h = r[f"handshakes_{mode}"]
        row(f"handshakes/s, {label} ({h['workers']} dialers)", f"{h['per_s']:.0f}")
        hm = h["machine_cores"]
        if "busy" in hm:
            row(f"  cores busy while dialing (of {hm['cores']}), whole machine", f"{hm['busy']:.2f}")
        if h["listener_per_core"]:
            row("  listener's capacity per core at its CPU cost per link", f"{h['listener_per_core']:.0f}")
        row(
            "  dial p50 / p99 (ms); CPU ms per link dialer/listener",
            f"{h['dial']['p50_ms']:.2f}/{h['dial']['p99_ms']:.2f}; "
            f"{h['cpu_ms_per_link']['dialer']:.2f}/{h['cpu_ms_per_link']['listener']:.2f}",
        )
        row(
            f"  dialer's link.aclose() p50 / p99 (ms); >= {0.9 * CLOSE_GRACE:g} s",
            f"{h['close']['p50_ms']:.1f}/{h['close']['p99_ms']:.1f}; {h['closes_stalled']}/{h['links']}",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a run of well under a minute)")
    parser.add_argument("--frames", type=int, default=None, help="frames per one-way round (default 100000)")
    parser.add_argument("--rounds", type=int, default=3, help="one-way rounds, each raw then authenticated")
    parser.add_argument("--rtt", type=int, default=None, help="round trips per kind (default 5000)")
    parser.add_argument("--handshakes", type=int, default=None, help="links per handshake mode (default 1000)")
    parser.add_argument("--dial-workers", type=int, default=8, help="concurrent dialing tasks")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes per frame")
    parser.add_argument("--profile", default=None, help="write cProfile dumps of the first authenticated round here")
    args = parser.parse_args()
    quick = args.quick
    args.frames = args.frames or (20_000 if quick else 100_000)
    args.rtt = args.rtt or (1_000 if quick else 5_000)
    args.handshakes = args.handshakes or (200 if quick else 1_000)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    results = trio.run(bench, args)
    results["mode"] = "quick" if quick else "full"
    results["config"] = {
        "frames": args.frames,
        "rounds": args.rounds,
        "rtt": args.rtt,
        "handshakes": args.handshakes,
        "dial_workers": args.dial_workers,
        "swarm": "default [swarm] section, host 127.0.0.1, port 0",
        "processes": "A (sender, dialer) and B (receiver, listener), one trio loop each",
    }
    save(RESULTS, results)
    print_table(results)
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
