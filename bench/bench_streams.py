"""Benchmark of paid live streams: nodes on loopback in separate processes, a devnet ledger in its own process,
real payments.

Run from the repository root::

    .venv/bin/python bench/bench_streams.py [--packets 20000] [--w1-packets 1000] [--subscribers 10]
        [--defer-settlement] [--one-process] [--prepay N] [--w1-only]

Measures, with 1 KiB packets at 1 satoshi each (every window paid by a BRC-29 transaction the producer checks
and commits before its receipt):

- paid packets/s from one producer to one subscriber with W = 100 and with W = 1 (packets pushed at once; time
  from the push until the subscriber has read the last packet);
- the CPU time per payment of the W = 1 run in each process: producer, lone subscriber, devnet ledger (user +
  system, all threads, from ``/proc``; settlement of earlier payments that lands in that window is counted too), and
  of the producer's and the subscriber's threads by name (the trio loop's ``MainThread``, the store's writer:
  ``nodeproc.THREAD_CPU_OP``),
  and how many cores the whole machine had busy meanwhile, those three processes' share, and the time the host
  took from this virtual machine (steal; ``/proc/stat``): whether the run was CPU-bound, and how noisy;
- the same to ``--subscribers`` subscribers at once (aggregate packets/s over all of them);
- packet latency (push -> read by the subscriber) p50/p99 at 1,000 packets/s with W = 100, first under its own load
  (its payments settling live), then the same with the live stream's next window paid before it exists
  (``pay_live_ahead``, ``streams.pay_live_ahead``: by default the consumer pays it so too, and the producer holds
  that payment until the window's first packet comes; with the option it would pay so even a producer that does not
  hold payments), and again at the end while the settlement of the throughput runs catches up.

Processes: the devnet ledger runs as a separate process (``python -m overlay_node.devnet --port 0 --json``, blocks
every ``--block-interval`` seconds) and settlement is live: every payment is submitted to it, and mined, during the
run. The producer node runs in a process of its own; the single subscriber of the one-subscriber runs (throughput
and latency) in a second, like a daemon of its own; the ``--subscribers`` consumers of the many-subscriber runs
together in a third (one trio loop: ten nodes on one loop would add their background work to a lone
subscriber's). All are started with ``bench/nodeproc.py``, which settles each process's heap once its nodes are
ready, as ``overlay-node run`` does (``node.settle_heap``: the start's objects frozen out of the cyclic collector's
sight). ``--one-process`` runs the producer and the consumers in the benchmark's own trio loop instead (one core for
everyone: a lower bound for separate daemons).

Timing across processes: ``time.perf_counter()`` is ``clock_gettime(CLOCK_MONOTONIC)`` on Linux, one clock for
the whole system, so a stamp taken in the producer process can be compared with one taken in the consumer process
(the clock in use is recorded in the results). Throughput: the consumer process subscribes and starts its readers,
answers "ready"; the producer process then pushes the burst and answers with its push start time t0; the consumer
process answers with the time each subscriber read its last packet; elapsed = last finish - t0. Latency: every
packet carries its push stamp, and the subscriber subtracts it from the time it reads the packet.

``--prepay N`` is passed to ``Consumer.subscribe`` as ``prepay=N`` (only when given; every subscribe call takes the
keyword arguments of :func:`subscribe_kwargs`). It prints a table against the targets and saves
``bench/results/bench_streams.json`` (``bench_streams_deferred.json`` with ``--defer-settlement``: ARC
submissions held back during the run), recording which mode ran; it never fails on time. ``--w1-only`` runs the
W = 1 run to one subscriber alone (with its CPU per payment) and saves nothing: a quick A/B of the payment path.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodeproc import (  # noqa: E402  # bench/ is on sys.path as a script
    THREAD_CPU_OP,
    Host,
    NodeHost,
    NodeSpec,
    OpFunction,
    open_host,
    process_cpu_seconds,
    system_cpu_seconds,
)
from results_io import source_state  # noqa: E402  # bench/ is on sys.path

from overlay_node.node import Node  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bench_streams.json"
PAYLOAD = "x" * 1000
# on top of nodeproc.LOOPBACK, for every node
BASE: dict[str, Any] = {
    "node.shutdown_grace": 1.0,
    "streams.buffer_packets": 100_000,  # the whole burst stays buffered (else: "lagging")
}


def packet(i: int) -> str:
    stamp = f"{time.perf_counter():.9f}"
    return f"{i} {stamp} " + PAYLOAD[: 1024 - 12 - len(stamp)]


def subscribe_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments every ``subscribe`` call gets on top of ``window`` (only the options given)."""
    kwargs: dict[str, Any] = {}
    if args.prepay is not None:
        kwargs["prepay"] = args.prepay
    return kwargs


def describe(node: Node) -> dict[str, Any]:
    return {"identity_key": node.info.identity_key, "dht": node.info.dht}


# -- the producer's operations (run in the producer's host) -------------------------------------------------------


async def producer_ops(host: Host, op: str, args: list[Any]) -> Any:
    producer = host.nodes[0].streams.producer
    if op == "create":
        (stream,) = args
        await producer.create(stream, rate=1)
        return None
    if op == "burst":  # push ``count`` packets at once; returns the push start time
        stream, count = args
        t0 = time.perf_counter()
        for first in range(0, count, 1000):
            producer.push(stream, [PAYLOAD + "x" * 24] * min(1000, count - first))
        return t0
    if op == "pace":  # push ``total`` stamped packets at ``rate`` per second; returns when all are pushed
        stream, rate, total = args
        start = trio.current_time()
        for i in range(total):
            await trio.sleep_until(start + i / rate)
            producer.push(stream, [packet(i)])
        return None
    raise ValueError(f"unknown op {op}")


# -- the consumers' operations (run in the consumers' host) -------------------------------------------------------


@dataclass
class _Readers:
    """The readers of one measurement, kept in ``host.state`` between its operations."""

    remaining: int
    done: trio.Event = field(default_factory=trio.Event)
    finished: list[float] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    subs: list[Any] = field(default_factory=list)

    def one_done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


async def consumer_ops(host: Host, op: str, args: list[Any]) -> Any:
    if op == "faucet":
        (satoshis,) = args
        for node in host.nodes:
            await node.wallet.faucet(satoshis)
        return None
    if op == "subscribe":  # the first ``n`` consumers subscribe and start reading ``count`` packets each
        stream, window, count, n, kwargs = args
        readers = host.state["readers"] = _Readers(remaining=n)
        for node in host.nodes[:n]:
            sub = await node.streams.consumer.subscribe(stream, window=window, **kwargs)
            readers.subs.append(sub)
            host.nursery.start_soon(_read, readers, sub, count)
        await trio.sleep(0.05)  # let the subscriptions settle before the producer starts the clock
        return None
    if op == "latency_subscribe":  # the first consumer subscribes and stamps ``total`` packets on arrival
        stream, window, total, kwargs = args
        readers = host.state["readers"] = _Readers(remaining=1)
        sub = await host.nodes[0].streams.consumer.subscribe(stream, window=window, **kwargs)
        readers.subs.append(sub)
        host.nursery.start_soon(_read_delays, readers, sub, total)
        return None
    if op == "wait":  # until every reader of the measurement is done
        readers = host.state.pop("readers")
        await readers.done.wait()
        return {
            "finished": readers.finished,
            "received": readers.received,
            "delays": readers.delays,
            "payments": sum(s.summary()["payments"] for s in readers.subs),
            # subscriptions that ended before their packets came (so a short measurement says why)
            "ended": [s.summary() for s in readers.subs if s.summary()["reason"] not in ("running", "stopped")],
        }
    raise ValueError(f"unknown op {op}")


async def _read(readers: _Readers, sub: Any, count: int) -> None:
    n = 0
    async for _ in sub.packets():
        n += 1
        if n >= count:
            break
    readers.received.append(n)
    readers.finished.append(time.perf_counter())
    sub.stop()
    readers.one_done()


async def _read_delays(readers: _Readers, sub: Any, total: int) -> None:
    async for p in sub.packets():
        readers.delays.append(time.perf_counter() - float(p.payload.split(" ", 2)[1]))
        if len(readers.delays) >= total:
            break
    sub.stop()
    readers.one_done()


# -- the measurements (the same calls whether the hosts are processes or in this loop) -----------------------------


async def throughput(
    producer: NodeHost, consumers: NodeHost, stream: str, window: int, count: int, n: int, kwargs: dict[str, Any]
) -> dict[str, Any]:
    await producer.call("create", stream)
    await consumers.call("subscribe", stream, window, count, n, kwargs)
    t0 = await producer.call("burst", stream, count)
    read = await consumers.call("wait")
    elapsed = max(read["finished"]) - t0
    payments = read["payments"]
    return {
        "window": window,
        "subscribers": n,
        "packets_each": count,
        "seconds": round(elapsed, 3),
        "paid_packets_per_s": round(count * n / elapsed, 1),
        "payments": payments,
        "complete": all(r == count for r in read["received"]),
        "payments_per_s": round(payments / elapsed, 1),
    }


async def latency(
    producer: NodeHost,
    consumers: NodeHost,
    window: int,
    rate: int,
    seconds: float,
    kwargs: dict[str, Any],
    stream: str = "latency",
) -> dict[str, Any]:
    await producer.call("create", stream)
    total = int(rate * seconds)
    await consumers.call("latency_subscribe", stream, window, total, kwargs)
    await producer.call("pace", stream, rate, total)
    read = await consumers.call("wait")
    if not read["delays"]:
        raise SystemExit(f"the latency subscription received nothing: {read['ended']}")
    ms = sorted(d * 1000 for d in read["delays"])
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
            results.update(await run_nodes(args, root, url, ledger.pid))
        finally:
            ledger.terminate()
            ledger.wait(10)
    results["settlement"] = "deferred" if args.defer_settlement else "live (devnet ledger in its own process)"
    results["nodes"] = (
        "one process (producer and consumers in the benchmark's loop)"
        if args.one_process
        else "producer, the lone subscriber and the many subscribers (together) in three processes"
    )
    results["subscribe_kwargs"] = subscribe_kwargs(args)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load": os.getloadavg(),
        "clock": time.get_clock_info("perf_counter").implementation,
    }
    return results


def cpu_snapshot(producer: NodeHost, subscriber: NodeHost, ledger_pid: int) -> dict[str, float]:
    """CPU seconds so far of the producer's process, the lone subscriber's and the devnet ledger's."""
    return {
        "producer": producer.cpu_seconds(),
        "subscriber": subscriber.cpu_seconds(),
        "ledger": process_cpu_seconds(ledger_pid),
    }


async def run_nodes(args: argparse.Namespace, root: Path, url: str, ledger_pid: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    kwargs = subscribe_kwargs(args)
    shared: dict[str, Any] = BASE | {"wallet.arc_url": url}
    if args.defer_settlement:
        # holding settlement back shows what the stream path itself costs (payments are still checked
        # and committed durably before their receipts)
        shared["wallet.settle_delay"] = 3600
    hosts: list[NodeHost] = []
    async with trio.open_nursery() as nursery:

        async def start(specs: list[NodeSpec], ops: OpFunction) -> NodeHost:
            host = await open_host(
                nursery, specs, ops, describe, in_process=args.one_process, log_level=logging.WARNING
            )
            hosts.append(host)
            return host

        try:
            producer = await start([NodeSpec(str(root), "producer", shared)], producer_ops)
            shared["dht.bootstrap"] = [producer.info["dht"]]
            specs = [NodeSpec(str(root), f"c{i}", shared) for i in range(args.subscribers)]
            consumers = await start(specs, consumer_ops)
            await consumers.call("faucet", 5_000_000)
            # the one-subscriber runs (throughput and latency) have a node of their own process, like a daemon of
            # its own (the other consumers' process runs ten nodes on one loop)
            solo = await start([NodeSpec(str(root), "l0", shared)], consumer_ops)
            await solo.call("faucet", 5_000_000)
            n = args.subscribers
            if args.w1_only:
                results.update(await w1_run(producer, solo, ledger_pid, args, kwargs))
                return results
            # latency first, under its own load only (its payments settle live); again at the end, while the
            # settlement of the thousands of payments of the throughput runs is still catching up
            results["latency"] = await latency(producer, solo, 100, 1000, args.latency_seconds, kwargs)
            # the same with streams.pay_live_ahead: the default pays the live stream's next window before it exists
            # too (held by the producer until it begins), so the two should agree
            live = kwargs | {"pay_live_ahead": True}
            results["latency_live_ahead"] = await latency(
                producer, solo, 100, 1000, args.latency_seconds, live, stream="latency_live"
            )
            results["w100_1"] = await throughput(producer, solo, "w100", 100, args.packets, 1, kwargs)
            results.update(await w1_run(producer, solo, ledger_pid, args, kwargs))
            results["w100_n"] = await throughput(producer, consumers, "w100n", 100, args.packets // 4, n, kwargs)
            results["w1_n"] = await throughput(producer, consumers, "w1n", 1, args.w1_packets // 4, n, kwargs)
            results["latency_backlog"] = await latency(
                producer, solo, 100, 1000, args.latency_seconds, kwargs, stream="latency2"
            )
        finally:
            for host in reversed(hosts):
                await host.stop()
    return results


async def w1_run(
    producer: NodeHost, solo: NodeHost, ledger_pid: int, args: argparse.Namespace, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The W = 1 run to the lone subscriber, with the CPU time each process spent per payment meanwhile (and, for
    the producer and the subscriber in processes of their own, each thread: the trio loop, the store's writer)."""
    threads = not args.one_process
    hosts = {"producer": producer, "subscriber": solo}
    threads_before = {k: await h.call(THREAD_CPU_OP) for k, h in hosts.items()} if threads else {}
    before, machine, wall = cpu_snapshot(producer, solo, ledger_pid), system_cpu_seconds(), time.perf_counter()
    run = await throughput(producer, solo, "w1", 1, args.w1_packets, 1, kwargs)
    after, wall = cpu_snapshot(producer, solo, ledger_pid), time.perf_counter() - wall
    payments = max(1, run["payments"])
    run["cpu_ms_per_payment"] = {k: round((after[k] - before[k]) / payments * 1000, 3) for k in after}
    if threads:
        threads_after = {k: await h.call(THREAD_CPU_OP) for k, h in hosts.items()}
        run["thread_cpu_ms_per_payment"] = {
            k: {
                name: round((seconds - threads_before[k].get(name, 0.0)) / payments * 1000, 3)
                for name, seconds in sorted(threads_after[k].items(), key=lambda kv: -kv[1])
                if seconds - threads_before[k].get(name, 0.0) > 0
            }
            for k in hosts
        }
    # how busy the whole machine was meanwhile, in cores: is the run CPU-bound, and did the host take CPU time
    # from this virtual machine (steal)?
    ours = sum(after.values()) - sum(before.values())
    run["machine_cores"] = {
        "cores": os.cpu_count(),
        **{k: round((v - machine[k]) / wall, 2) for k, v in system_cpu_seconds().items()},
        "these_three": round(ours / wall, 2),
    }
    return {"w1_1": run}


def print_table(r: dict[str, Any]) -> None:
    def row(name: str, value: str, target: str = "") -> None:
        print(f"{name:<48} {value:>18} {target:>16}")

    def rate(run: dict[str, Any]) -> str:
        # a subscription that ended before its last packet makes a rate that means nothing: say so
        return f"{run['paid_packets_per_s']:.0f}" + ("" if run["complete"] else " INCOMPLETE")

    row("measure", "value", "target")
    w1 = r["w1_1"]
    if "w100_1" in r:
        w100 = r["w100_1"]
        row("paid packets/s, 1 subscriber, W=100", rate(w100), ">= 20000")
    row("paid packets/s, 1 subscriber, W=1", rate(w1), ">= 2000")
    if "w100_n" in r:
        w100n, w1n = r["w100_n"], r["w1_n"]
        row(f"paid packets/s, {w100n['subscribers']} subscribers, W=100 (total)", rate(w100n))
        row(f"paid packets/s, {w1n['subscribers']} subscribers, W=1 (total)", rate(w1n))
    row("payments/s (W=1, 1 subscriber)", f"{w1['payments_per_s']:.0f}", ">= 100")
    cpu = w1["cpu_ms_per_payment"]
    row(
        "  CPU ms per payment: producer, subscriber, ledger",
        f"{cpu['producer']:.2f} {cpu['subscriber']:.2f} {cpu['ledger']:.2f}",
    )
    for side, by_thread in w1.get("thread_cpu_ms_per_payment", {}).items():
        row(f"    {side} by thread", " ".join(f"{name} {ms:.2f}" for name, ms in list(by_thread.items())[:3]))
    m = w1["machine_cores"]
    if "busy" in m:
        row(
            f"  cores busy (of {m['cores']}): all, these three, host steal",
            f"{m['busy']:.2f} {m['these_three']:.2f} {m['steal']:.2f}",
        )
    if "latency" not in r:  # --w1-only
        print(f"nodes: {r['nodes']}; settlement: {r['settlement']}; W=1 run only")
        return
    lat = r["latency"]
    row("latency p50 at 1000 packets/s, W=100 (ms)", f"{lat['p50_ms']:.2f}")
    row("latency p99 at 1000 packets/s, W=100 (ms)", f"{lat['p99_ms']:.2f}", "< 5")
    ahead = r["latency_live_ahead"]
    row("  the same paying the live stream ahead: p50 (ms)", f"{ahead['p50_ms']:.2f}")
    row("  the same paying the live stream ahead: p99 (ms)", f"{ahead['p99_ms']:.2f}", "< 5")
    back = r["latency_backlog"]
    row("  the same while settling the runs above: p50 (ms)", f"{back['p50_ms']:.2f}")
    row("  the same while settling the runs above: p99 (ms)", f"{back['p99_ms']:.2f}")
    print(f"nodes: {r['nodes']}; settlement: {r['settlement']}; subscribe extras: {r['subscribe_kwargs'] or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--w1-packets", type=int, default=1_000)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--latency-seconds", type=float, default=3.0)
    parser.add_argument("--block-interval", type=float, default=2.0, help="seconds between devnet blocks")
    parser.add_argument("--defer-settlement", action="store_true", help="hold ARC submissions back during the run")
    parser.add_argument("--one-process", action="store_true", help="run all nodes in this process's event loop")
    parser.add_argument(
        "--prepay", type=int, default=None, help="pay-ahead depth in packets, passed to subscribe (default: not passed)"
    )
    parser.add_argument(
        "--w1-only", action="store_true", help="only the W = 1 run to one subscriber (quick A/B; results not saved)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = trio.run(run, args)
    if not args.w1_only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        path = RESULTS.with_name("bench_streams_deferred.json") if args.defer_settlement else RESULTS
        results["source"] = source_state()  # the commit it ran on (its own machine record stays)
        path.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
