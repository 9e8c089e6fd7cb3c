"""Benchmark of the DHT over loopback UDP: a cluster of DhtService instances spread over several processes.

Run from the repository root::

    .venv/bin/python bench/bench_dht.py [--processes 3] [--per-process 10]

The parent starts ``--processes`` worker processes (each one ``trio.run`` hosting ``--per-process`` services, each
service with its own SQLite file) and drives them with JSON lines over their stdin/stdout. The services form the DHT
by bootstrap alone: every one of them knows only the address of the first. The parent then measures

- lookup latency of "all hosts of a topic": ``get`` of a key with several publishers, from every node, one lookup
  at a time in the whole cluster (``serial``) and one per process at once (``concurrent``); of the serial ones, each
  node's first lookup of the key apart too (its answers' bodies are new to it: the cold cost of a lookup);
- visibility of a new record: ``stored everywhere`` is the time from the start of ``put`` until the k closest nodes
  have acknowledged the STORE (from then on a lookup from any node finds it; each trial checks this with a ``get``
  from every node); ``direct peers`` is the time until the STORE reached each of the nodes it was sent to (their
  ``on_record`` callback ran); ``get everywhere`` is the time until every node's own lookup, all started at once
  right after the put (so 30 concurrent lookups on the machine's cores), has returned it;
- datagrams one node processes per second: signed PINGs answered (each costs a signature check and a signature),
  MAC'd PINGs answered (version 2, under the key the flooder and the node share: an HMAC each way, no curve
  operation once the node has the key; docs/protocol.md, section 10),
  from several sockets with a window of requests in flight, and junk datagrams dropped.

A lookup's process also hosts the other services of its worker, which answer part of its requests on the same
trio loop; the machine's load average before and after the run is saved with the figures, since other work on the
machine shows directly in the latencies.

It prints a table against the targets and saves ``bench/results/bench_dht.json``. It never fails on
time: the figures are for reading. The per-source rate limit is raised for the run (``max_datagrams_per_source``),
since the throughput figure is about processing, not about the limiter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import trio

# the package of this checkout, not whichever one the environment installed (a run from another worktree measures
# that worktree's code); the worker processes run this file too
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import source_state  # noqa: E402  # bench/ is on sys.path when run as a script

from overlay_node.config import DhtSection, StoreSection  # noqa: E402
from overlay_node.crypto.keys import Identity  # noqa: E402
from overlay_node.metrics import Metrics  # noqa: E402
from overlay_node.services.dht import DhtService, dht_key  # noqa: E402
from overlay_node.services.dht_rpc import Signer, mac  # noqa: E402
from overlay_node.store.db import open_store  # noqa: E402
from overlay_node.wire.dht import Ping, Record, encode, new_rpc_id  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bench_dht.json"
TARGET_P95_MS = 10.0
TARGET_VISIBLE_MS = 1000.0
TARGET_DIRECT_MS = 200.0


def bench_config() -> DhtSection:
    return dataclasses.replace(
        DhtSection(),
        host="127.0.0.1",
        port=0,
        maintenance_interval=3600.0,
        max_datagrams_per_source=1_000_000,
        max_datagrams_per_ip=1_000_000,
        max_verifies_per_second=1_000_000,
        socket_buffer=4 * 1024 * 1024,
    )


# -- worker process ----------------------------------------------------------------------------------------------


class Worker:
    """The services of one process and the commands the parent sends them."""

    def __init__(self, services: list[DhtService]) -> None:
        self.services = services
        #: key hex -> per service: monotonic time of the first on_record for that key
        self.arrivals: dict[str, list[float | None]] = {}
        for i, service in enumerate(services):
            service.on_record(partial(self._arrived, i))

    def _arrived(self, index: int, record: Record) -> None:
        slots = self.arrivals.get(record.key.hex())
        if slots is not None and slots[index] is None:
            slots[index] = time.monotonic()

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        run = {
            "bootstrap": self._bootstrap,
            "refresh": self._refresh,
            "put": self._put,
            "arm": self._arm,
            "lookups": self._lookups,
            "get_all": self._get_all,
            "stats": self._stats,
            "publisher": self._publisher,
        }.get(cmd["cmd"])
        if run is None:
            raise ValueError(f"unknown command {cmd!r}")
        return await run(cmd)

    async def _bootstrap(self, cmd: dict[str, Any]) -> dict[str, Any]:
        for service in self.services:
            if service.address != cmd["seed"]:
                await service.bootstrap([cmd["seed"]])
        return {"contacts": [len(s.contacts()) for s in self.services]}

    async def _refresh(self, cmd: dict[str, Any]) -> dict[str, Any]:
        for service in self.services:
            await service.bootstrap([cmd["seed"]])
        return {"contacts": [len(s.contacts()) for s in self.services]}

    async def _put(self, cmd: dict[str, Any]) -> dict[str, Any]:
        service = self.services[cmd["service"]]
        t0 = time.monotonic()
        outcome = await service.put(bytes.fromhex(cmd["key"]), os.urandom(cmd["size"]), ttl=cmd["ttl"])
        t1 = time.monotonic()
        return {"t0": t0, "t1": t1, "stored": outcome.stored, "asked": outcome.asked, "seq": outcome.seq}

    async def _arm(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.arrivals[cmd["key"]] = [None] * len(self.services)
        return {}

    async def _lookups(self, cmd: dict[str, Any]) -> dict[str, Any]:
        key = bytes.fromhex(cmd["key"])
        latencies, cpu, complete = [], [], 0
        for _ in range(cmd["rounds"]):
            for service in self.services:
                t, c = time.perf_counter(), time.process_time()
                records = await service.get(key)
                latencies.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
                complete += len(records) >= cmd["expect"]
        return {"latencies_ms": latencies, "cpu_ms": cpu, "complete": complete}

    async def _get_all(self, cmd: dict[str, Any]) -> dict[str, Any]:
        key = bytes.fromhex(cmd["key"])
        publisher = bytes.fromhex(cmd["publisher"])
        seen: list[float | None] = [None] * len(self.services)

        async def one(i: int, service: DhtService) -> None:
            records = await service.get(key)
            if any(r.publisher == publisher for r in records):
                seen[i] = time.monotonic()

        async with trio.open_nursery() as nursery:
            for i, service in enumerate(self.services):
                nursery.start_soon(one, i, service)
        return {"seen": seen, "arrivals": self.arrivals.pop(cmd["key"], [])}

    async def _stats(self, _cmd: dict[str, Any]) -> dict[str, Any]:
        stats = [s.statistics() for s in self.services]
        return {"stats": [dataclasses.asdict(s) for s in stats]}

    async def _publisher(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"pub": self.services[cmd["service"]].public_key.hex()}


async def worker_main(index: int, count: int, data_dir: Path) -> None:
    config = bench_config()
    async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
        services = []
        for i in range(count):
            store = await stack.enter_async_context(open_store(data_dir / f"p{index}-n{i}.db", StoreSection()))
            service = DhtService(Identity.generate(), config, store, Metrics())
            await nursery.start(service.run)
            services.append(service)
        worker = Worker(services)
        print(json.dumps({"addresses": [s.address for s in services]}), flush=True)
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line or json.loads(line)["cmd"] == "quit":
                break
            reply = await worker.handle(json.loads(line))
            print(json.dumps(reply), flush=True)
        nursery.cancel_scope.cancel()


# -- parent ------------------------------------------------------------------------------------------------------


class Proc:
    """A worker process and its pipes."""

    def __init__(self, index: int, count: int, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(index), "--per-process", str(count), "--dir", str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.addresses: list[str] = self.read()["addresses"]

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a worker process exited")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def call(self, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.read()

    def close(self) -> None:
        try:
            self.send(cmd="quit")
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def all_call(procs: list[Proc], **cmd: Any) -> list[dict[str, Any]]:
    """The same command to every worker at once; their replies in order."""
    for p in procs:
        p.send(**cmd)
    return [p.read() for p in procs]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] if ordered else float("nan")


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(pct(values, 50), 3),
        "p95": round(pct(values, 95), 3),
        "p99": round(pct(values, 99), 3),
        "max": round(max(values), 3) if values else float("nan"),
        "mean": round(statistics.fmean(values), 3) if values else float("nan"),
    }


async def flood(
    target: tuple[str, int], *, sockets: int, window: int, seconds: float, mac_for: bytes | None = None
) -> dict[str, float]:
    """Signed PINGs from several sockets, ``window`` in flight on each; answered PINGs per second. ``mac_for``: the
    target's public key; the PINGs are MAC'd under the key the flooder shares with it instead."""
    identity = Identity.generate()
    signer = Signer(identity)
    key = signer.mac_key(mac_for) if mac_for is not None else None
    sign = signer.sign if key is None else partial(mac, key)
    pings = [
        encode(
            Ping(rpc_id=new_rpc_id()), sender_pub=identity.public_key, now=time.time(), sign=sign, mac=key is not None
        )
        for _ in range(64)
    ]
    answered = 0
    deadline = trio.current_time() + seconds

    async def one(n: int) -> None:
        nonlocal answered
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        for i in range(window):
            await sock.sendto(pings[(n + i) % len(pings)], target)
        with trio.move_on_at(deadline):
            i = 0
            while True:
                await sock.recv(4096)
                answered += 1
                i += 1
                await sock.sendto(pings[i % len(pings)], target)
        sock.close()

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in range(sockets):
            nursery.start_soon(one, n)
    elapsed = trio.current_time() - started
    return {"answered": answered, "seconds": round(elapsed, 3), "per_second": round(answered / elapsed)}


def send_junk(target: tuple[str, int], *, count: int) -> None:
    """Datagrams that are not CBOR, as fast as a blocking socket sends them (the kernel drops what overflows)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        data = b"\x82\x58\x40" + os.urandom(80)
        for _ in range(count):
            sock.sendto(data, target)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    nodes = args.processes * args.per_process
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-dht-") as tmp:
        procs: list[Proc] = []
        try:
            started = time.monotonic()
            procs = [Proc(i, args.per_process, Path(tmp)) for i in range(args.processes)]
            formed = form_cluster(procs, started)
            print(
                f"{nodes} nodes in {args.processes} processes, formed in {formed['formed_s']:.2f}s "
                f"(start {formed['start_s']:.2f}s); "
                f"contacts per node {formed['contacts_min']}..{formed['contacts_max']}"
            )
            lookups = lookup_all_hosts(procs, args)
            visibility = new_record_visibility(procs, args)
            throughput = datagram_throughput(procs, args)
        finally:
            for p in procs:
                p.close()

    return {
        "bench": "dht",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "cluster": {
            "nodes": nodes,
            "processes": args.processes,
            "per_process": args.per_process,
            "k": 20,
            "alpha": 3,
            "formed_s": round(formed["formed_s"], 3),
            "contacts_min": formed["contacts_min"],
            "contacts_max": formed["contacts_max"],
        },
        "lookup_all_hosts": lookups,
        "visibility": visibility,
        "throughput": throughput,
        "targets": {
            "lookup_p95_ms": TARGET_P95_MS,
            "visible_everywhere_ms": TARGET_VISIBLE_MS,
            "direct_peers_ms": TARGET_DIRECT_MS,
        },
    }


def form_cluster(procs: list[Proc], started: float) -> dict[str, Any]:
    """Bootstrap every service from the first one; how long it took and the contacts each one has."""
    seed = procs[0].addresses[0]
    t = time.monotonic()
    for p in procs:
        p.call(cmd="bootstrap", seed=seed)
    for p in procs:  # a second self-lookup, so the first nodes also learn of the last ones
        p.call(cmd="refresh", seed=seed)
    formed_s = time.monotonic() - t
    contacts = [c for r in all_call(procs, cmd="stats") for c in (s["contacts"] for s in r["stats"])]
    return {
        "formed_s": formed_s,
        "start_s": t - started,
        "contacts_min": min(contacts),
        "contacts_max": max(contacts),
    }


def lookup_all_hosts(procs: list[Proc], args: argparse.Namespace) -> dict[str, Any]:
    """Lookups of all hosts of a topic, one at a time in the cluster and one per process at once."""
    key = dht_key("ship", "tm_bench")
    for n in range(args.publishers):
        p = procs[n % len(procs)]
        p.call(cmd="put", service=(n * 3) % args.per_process, key=key.hex(), size=args.value_size, ttl=3600)
    serial: list[float] = []
    serial_cpu: list[float] = []
    # each node's first lookup of the key (its first round) and its later ones: answers repeat, and a node decodes a
    # body it has seen before from its cache (wire/dht.py, invariant 7), so the first lookups show the cold cost
    serial_first: list[float] = []
    complete = total = 0
    before = datagram_counts(procs)
    for p in procs:
        r = p.call(cmd="lookups", key=key.hex(), rounds=args.rounds, expect=args.publishers)
        serial += r["latencies_ms"]
        serial_first += r["latencies_ms"][: args.per_process]
        serial_cpu += r["cpu_ms"]
        complete += r["complete"]
        total += len(r["latencies_ms"])
    concurrent: list[float] = []
    for r in all_call(procs, cmd="lookups", key=key.hex(), rounds=args.rounds, expect=args.publishers):
        concurrent += r["latencies_ms"]
        complete += r["complete"]
        total += len(r["latencies_ms"])
    sent, maced = (after - first for after, first in zip(datagram_counts(procs), before, strict=True))
    return {
        "publishers": args.publishers,
        "value_bytes": args.value_size,
        "serial_ms": summary(serial),
        "serial_first_ms": summary(serial_first),
        "serial_asker_process_cpu_ms": summary(serial_cpu),
        "concurrent_ms": summary(concurrent),
        "complete": complete,
        "total": total,
        "datagrams_out": sent,
        "mac_share": maced / sent if sent else 0.0,
    }


def datagram_counts(procs: list[Proc]) -> tuple[int, int]:
    """Datagrams all the services sent, and how many of them were MAC'd rather than signed."""
    stats = [s for r in all_call(procs, cmd="stats") for s in r["stats"]]
    return sum(s["datagrams_out"] for s in stats), sum(s["macs_out"] for s in stats)


def new_record_visibility(procs: list[Proc], args: argparse.Namespace) -> dict[str, Any]:
    """How soon a new record is stored at the k closest, at the direct peers, and found by every node's get."""
    stored_ms: list[float] = []
    direct_ms: list[float] = []
    get_all_ms: list[float] = []
    visible = checked = 0
    for trial in range(args.trials):
        key_t = dht_key("ship", f"tm_visible_{trial}")
        all_call(procs, cmd="arm", key=key_t.hex())
        pp = procs[trial % len(procs)]
        service = trial % args.per_process
        pub = pp.call(cmd="publisher", service=service)["pub"]
        put = pp.call(cmd="put", service=service, key=key_t.hex(), size=args.value_size, ttl=3600)
        stored_ms.append((put["t1"] - put["t0"]) * 1000)
        replies = all_call(procs, cmd="get_all", key=key_t.hex(), publisher=pub)
        for r in replies:
            for s in r["seen"]:
                checked += 1
                visible += s is not None
            # STORE arrivals: a node that learnt it from its own lookup afterwards is not a direct peer
            direct_ms += [(a - put["t0"]) * 1000 for a in r["arrivals"] if a is not None and a <= put["t1"]]
        seen_times = [s for r in replies for s in r["seen"] if s is not None]
        get_all_ms.append((max(seen_times) - put["t0"]) * 1000)
    return {
        "trials": args.trials,
        "stored_everywhere_ms": summary(stored_ms),
        "direct_peers_ms": summary(direct_ms),
        "get_everywhere_ms": summary(get_all_ms),
        "visible_checks": visible,
        "checks": checked,
    }


def datagram_throughput(procs: list[Proc], args: argparse.Namespace) -> dict[str, Any]:
    """Signed and MAC'd PINGs one node answers per second, and junk datagrams it drops per second."""
    flooded = procs[1 % len(procs)]
    host, port = flooded.addresses[0].rsplit(":", 1)
    target = (host, int(port))
    flood_at = partial(flood, target, sockets=args.flood_sockets, window=args.flood_window, seconds=args.flood_seconds)
    pings = trio.run(flood_at)
    pub = bytes.fromhex(flooded.call(cmd="publisher", service=0)["pub"])
    mac_pings = trio.run(partial(flood_at, mac_for=pub))
    base = sum(flooded.call(cmd="stats")["stats"][0]["drops"].values())
    t = time.monotonic()
    send_junk(target, count=args.junk)
    dropped, last = 0, t
    while True:  # wait until the node has worked through its backlog
        now_dropped = sum(flooded.call(cmd="stats")["stats"][0]["drops"].values()) - base
        if now_dropped == dropped:
            break
        dropped, last = now_dropped, time.monotonic()
        time.sleep(0.05)
    junk_s = last - t
    return {
        "pings": pings,
        "mac_pings": mac_pings,
        "junk_sent": args.junk,
        "junk_dropped": dropped,
        "junk_per_second": round(dropped / junk_s) if junk_s else 0,
    }


def print_table(r: dict[str, Any]) -> None:
    look, vis, thr = r["lookup_all_hosts"], r["visibility"], r["throughput"]

    def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        mark = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"  {name:<48} {value:>22}  {target:>10}  {mark}")

    c = r["cluster"]
    m = r["machine"]
    print(
        f"\nDHT benchmark: {c['nodes']} nodes in {c['processes']} processes on {m['cpus']} cpus "
        f"(load average before {m['loadavg_before'][0]}, after {m['loadavg_after'][0]})"
    )
    row("metric", "value", "target")
    s, cc = look["serial_ms"], look["concurrent_ms"]
    row(
        f"lookup all {look['publishers']} hosts, serial p50 / p95 ms",
        f"{s['p50']:.2f} / {s['p95']:.2f}",
        f"< {TARGET_P95_MS:g}",
        s["p95"] < TARGET_P95_MS,
    )
    first = look["serial_first_ms"]
    row("  of which each node's first lookup, p50 / p95", f"{first['p50']:.2f} / {first['p95']:.2f}")
    row("lookup all hosts, 1 per process at once p50 / p95", f"{cc['p50']:.2f} / {cc['p95']:.2f}")
    row("lookups that returned every host", f"{look['complete']} / {look['total']}")
    st, d, g = vis["stored_everywhere_ms"], vis["direct_peers_ms"], vis["get_everywhere_ms"]
    row(
        "new record stored at k closest, p50 / max ms",
        f"{st['p50']:.1f} / {st['max']:.1f}",
        f"< {TARGET_VISIBLE_MS:g}",
        st["max"] < TARGET_VISIBLE_MS,
    )
    row(
        "new record at direct peers (STORE), p50 / max ms",
        f"{d['p50']:.1f} / {d['max']:.1f}",
        f"< {TARGET_DIRECT_MS:g}",
        d["max"] < TARGET_DIRECT_MS,
    )
    row(
        "new record found by every node's get, p50 / max",
        f"{g['p50']:.1f} / {g['max']:.1f}",
        f"< {TARGET_VISIBLE_MS:g}",
        g["max"] < TARGET_VISIBLE_MS,
    )
    row("gets right after put that saw it", f"{vis['visible_checks']} / {vis['checks']}")
    row("signed PINGs answered by one node, per s", f"{thr['pings']['per_second']}")
    row("MAC'd PINGs answered by one node, per s", f"{thr['mac_pings']['per_second']}")
    row("datagrams MAC'd (not signed) during the lookups", f"{look['mac_share']:.1%}")
    row("junk datagrams dropped by one node, per s", f"{thr['junk_per_second']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--per-process", type=int, default=10)
    parser.add_argument("--publishers", type=int, default=3, help="hosts advertising the benchmark topic")
    parser.add_argument("--value-size", type=int, default=300, help="bytes per record value")
    parser.add_argument("--rounds", type=int, default=5, help="lookups per node and mode")
    parser.add_argument("--trials", type=int, default=10, help="new records for the visibility figures")
    parser.add_argument("--flood-seconds", type=float, default=3.0)
    parser.add_argument("--flood-sockets", type=int, default=8)
    parser.add_argument("--flood-window", type=int, default=8)
    parser.add_argument("--junk", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.worker is not None:
        trio.run(worker_main, args.worker, args.per_process, args.dir)
        return
    result = run_bench(args)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result["source"] = source_state()  # the commit it ran on (its own machine record stays)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nsaved {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
