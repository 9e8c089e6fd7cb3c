"""Benchmark of paid live streams: nodes on loopback, a devnet ledger in its own process, real payments.

Run from the repository root::

    .venv/bin/python bench/bench_streams.py [--packets 20000] [--w1-packets 1000] [--subscribers 10]

Measures, with 1 KiB packets at 1 satoshi each (every window paid by a BRC-29 transaction the producer checks
and commits before its receipt):

- paid packets/s from one producer to one subscriber with W = 100 and with W = 1 (packets pushed at once; time
  from the push until the subscriber has read the last packet);
- the same to ``--subscribers`` subscribers at once (aggregate packets/s over all of them);
- packet latency (push -> read by the subscriber) p50/p99 at 1,000 packets/s with W = 100.

The devnet ledger runs as a separate process (``python -m overlay_node.devnet --port 0 --json``, blocks every
``--block-interval`` seconds) and settlement is live: every payment is submitted to it, and mined, during the
run. The producer and the subscribers share one trio loop (and so one core), so the figures are a lower bound
for separate daemons. It prints a table against the targets of issue 6 and saves
``bench/results/bench_streams.json`` (``bench_streams_deferred.json`` with ``--defer-settlement``: ARC
submissions held back during the run); it never fails on time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from overlay_node.config import load_config, starter_config_text  # noqa: E402
from overlay_node.datadir import DataDir  # noqa: E402
from overlay_node.node import Node  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bench_streams.json"
PAYLOAD = "x" * 1000


async def start(nursery: trio.Nursery, root: Path, name: str, **overrides: Any) -> Node:
    base: dict[str, Any] = {
        "swarm.host": "127.0.0.1",
        "swarm.port": 0,
        "http.port": 0,
        "dht.host": "127.0.0.1",
        "dht.port": 0,
        "node.shutdown_grace": 1.0,
        "streams.buffer_packets": 100_000,  # the whole burst stays buffered (else: "lagging")
        **overrides,
    }
    dd = DataDir(root / name)
    dd.init(config_text=starter_config_text())
    node = Node(dd, load_config(env={}, overrides=base))
    await nursery.start(node.run)
    return node


def packet(i: int) -> str:
    stamp = f"{time.perf_counter():.9f}"
    return f"{i} {stamp} " + PAYLOAD[: 1024 - 12 - len(stamp)]


async def throughput(producer: Node, consumers: list[Node], stream: str, window: int, count: int) -> dict[str, Any]:
    await producer.streams.producer.create(stream, rate=1)
    subs = [await c.streams.consumer.subscribe(stream, window=window) for c in consumers]
    done = trio.Event()
    remaining = len(subs)
    finished: list[float] = []

    received: list[int] = []

    async def read(sub: Any) -> None:
        nonlocal remaining
        n = 0
        async for _ in sub.packets():
            n += 1
            if n >= count:
                break
        received.append(n)
        finished.append(time.perf_counter())
        sub.stop()
        remaining -= 1
        if remaining == 0:
            done.set()

    async with trio.open_nursery() as nursery:
        for sub in subs:
            nursery.start_soon(read, sub)
        await trio.sleep(0.05)  # let the subscriptions settle before the clock starts
        t0 = time.perf_counter()
        push = producer.streams.producer.push
        for first in range(0, count, 1000):
            push(stream, [PAYLOAD + "x" * 24] * min(1000, count - first))
        await done.wait()
    elapsed = max(finished) - t0
    payments = sum(s.summary()["payments"] for s in subs)
    return {
        "window": window,
        "subscribers": len(subs),
        "packets_each": count,
        "seconds": round(elapsed, 3),
        "paid_packets_per_s": round(count * len(subs) / elapsed, 1),
        "payments": payments,
        "complete": all(n == count for n in received),
        "payments_per_s": round(payments / elapsed, 1),
    }


async def latency(producer: Node, consumer: Node, window: int, rate: int, seconds: float) -> dict[str, Any]:
    await producer.streams.producer.create("latency", rate=1)
    sub = await consumer.streams.consumer.subscribe("latency", window=window)
    total = int(rate * seconds)
    delays: list[float] = []

    async def read() -> None:
        async for p in sub.packets():
            delays.append(time.perf_counter() - float(p.payload.split(" ", 2)[1]))
            if len(delays) >= total:
                break
        sub.stop()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        start = trio.current_time()
        for i in range(total):
            await trio.sleep_until(start + i / rate)
            producer.streams.producer.push("latency", [packet(i)])
    delays.sort()
    ms = [d * 1000 for d in delays]
    return {
        "window": window,
        "rate": rate,
        "packets": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 3),
        "max_ms": round(ms[-1], 3),
    }


def start_ledger(root: Path, block_interval: float) -> tuple[subprocess.Popen[str], str]:
    """The devnet ledger in its own process; returns it and its URL (from its ``--json`` ready line)."""
    command = [sys.executable, "-m", "overlay_node.devnet", "--port", "0", "--json", "--log-level", "warning"]
    command += ["--data-dir", str(root / "devnet"), "--block-interval", str(block_interval)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise SystemExit(f"the devnet ledger did not start (exit status {proc.returncode})")
    return proc, str(json.loads(line)["url"])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ledger, url = start_ledger(root, args.block_interval)
        try:
            results.update(await run_nodes(args, root, url))
        finally:
            ledger.terminate()
            ledger.wait(10)
    results["settlement"] = "deferred" if args.defer_settlement else "live (devnet ledger in its own process)"
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()}
    return results


async def run_nodes(args: argparse.Namespace, root: Path, url: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        shared: dict[str, Any] = {"wallet.arc_url": url}
        if args.defer_settlement:
            # holding settlement back shows what the stream path itself costs (payments are still checked
            # and committed durably before their receipts)
            shared["wallet.settle_delay"] = 3600
        producer = await start(nursery, root, "producer", **shared)
        shared["dht.bootstrap"] = [producer.info.dht]
        consumers = [await start(nursery, root, f"c{i}", **shared) for i in range(args.subscribers)]
        for c in consumers:
            await c.wallet.faucet(5_000_000)
        results["w100_1"] = await throughput(producer, consumers[:1], "w100", 100, args.packets)
        results["w1_1"] = await throughput(producer, consumers[:1], "w1", 1, args.w1_packets)
        results["w100_n"] = await throughput(producer, consumers, "w100n", 100, args.packets // 4)
        results["w1_n"] = await throughput(producer, consumers, "w1n", 1, args.w1_packets // 4)
        results["latency"] = await latency(producer, consumers[0], 100, 1000, args.latency_seconds)
        for node in (producer, *consumers):
            node.request_shutdown()
    return results


def print_table(r: dict[str, Any]) -> None:
    def row(name: str, value: str, target: str = "") -> None:
        print(f"{name:<48} {value:>18} {target:>16}")

    row("measure", "value", "target")
    w100, w1, w100n, w1n, lat = r["w100_1"], r["w1_1"], r["w100_n"], r["w1_n"], r["latency"]
    row("paid packets/s, 1 subscriber, W=100", f"{w100['paid_packets_per_s']:.0f}", ">= 10000")
    row("paid packets/s, 1 subscriber, W=1", f"{w1['paid_packets_per_s']:.0f}", ">= 1000")
    row(f"paid packets/s, {w100n['subscribers']} subscribers, W=100 (total)", f"{w100n['paid_packets_per_s']:.0f}")
    row(f"paid packets/s, {w1n['subscribers']} subscribers, W=1 (total)", f"{w1n['paid_packets_per_s']:.0f}")
    row("payments/s (W=1, 1 subscriber)", f"{w1['payments_per_s']:.0f}", ">= 100")
    row("latency p50 at 1000 packets/s, W=100 (ms)", f"{lat['p50_ms']:.2f}")
    row("latency p99 at 1000 packets/s, W=100 (ms)", f"{lat['p99_ms']:.2f}", "< 10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--w1-packets", type=int, default=1_000)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--latency-seconds", type=float, default=3.0)
    parser.add_argument("--block-interval", type=float, default=2.0, help="seconds between devnet blocks")
    parser.add_argument("--defer-settlement", action="store_true", help="hold ARC submissions back during the run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = trio.run(run, args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    path = RESULTS.with_name("bench_streams_deferred.json") if args.defer_settlement else RESULTS
    path.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
