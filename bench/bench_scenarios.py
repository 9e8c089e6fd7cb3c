"""The specification's expectations on a 5-node cluster: real daemon processes (``scripts/cluster.py``) settling
through one devnet ledger process, every operation made through the control API as the CLI makes it (a fresh
unix-socket connection per call, NDJSON for the long operations).

Run from the repository root::

    .venv/bin/python bench/bench_scenarios.py [--quick] [--calls 200] [--seconds 15] [--threads 4]
        [--items 20] [--stream-seconds 10] [--stream-rate 50] [--adverts 30] [--tls]

Setup (not measured): 5 daemons, every pair linked; each node funded by ``--threads`` + 2 faucet coins; nodes 0 and
1 publish ``--items`` small files each (``--size-kib``; half free, half priced at 50 satoshis; tagged ``bench``;
one replica placed before the publish answers), and nodes 0 and 2 advertise the topic ``tm_bench`` (DHT adverts,
no token on chain).

1. Latency, one call at a time (a CLI user): ``--calls`` calls each of ``discover`` (topic ``tm_bench``, from the
   nodes in turn), ``search`` (tag ``bench``), ``quote`` and ``pay`` (a quote, then its payment: every node pays
   the others in turn, 100 satoshis), and ``access`` (the items in turn, free and priced, each by a node that is
   not its producer, written to a file and verified). p50/p95/p99 per operation (target: p95 under 500 ms).
2. Payments/s: ``--threads`` clients per node, all 5 nodes paying the other 4 in turn (quote, then pay), for
   ``--seconds`` seconds (target: 100/s).
3. Content accesses/s: ``--threads`` clients per node, each accessing the items it did not produce in turn (free
   and priced: a priced one is paid for each time, except by the node holding its replica, which reads its own
   copy), for ``--seconds`` seconds (target: 50/s).
4. Stream latency: node 0 creates a stream (1 satoshi a packet), nodes 1-4 subscribe with W = 10 (``POST
   /v1/subscribe``, read as NDJSON); once all are attached the producer pushes ``--stream-rate`` packets a second
   for ``--stream-seconds``, one ``push`` call each, stamped with the push time; every consumer notes when each
   packet's line arrives. p50/p95/p99 over all of them (target: under 100 ms).
5. Advert propagation: ``--adverts`` rounds; in each, a node advertises a new topic while the other 4 call
   ``discover`` for it back to back; the time from the ``advertise`` call to each one's first answer naming it
   (target: p95 under 200 ms; these peers are all linked to the advertiser, so the advert is pushed to them).

Every operation's answer is checked (hosts found, results listed, the receipt's amount, the file's size, every
packet received); the success rate is over all of them (target: over 99 %). Each phase also records how busy the
machine was, in cores (``/proc/stat``: all of it, the cluster's processes, this benchmark's client threads), so a
reader knows whether the figures come from a saturated machine. Prints a table against the targets and saves
``bench/results/bench_scenarios.json``; never fails on time: it exits non-zero only when something is wrong (the
cluster does not start, the setup fails, or an operation failed).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from cluster import Cluster, Member  # noqa: E402  # scripts/ is on sys.path
from nodeproc import process_cpu_seconds, system_cpu_seconds  # noqa: E402  # bench/ is on sys.path
from results_io import save  # noqa: E402

from overlay_cli.client import ControlClient  # noqa: E402
from overlay_node.errors import ApiError, OverlayError  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bench_scenarios.json"
NODES = 5
AMOUNT = 100  # satoshis per payment
PRICE = 50  # satoshis per priced item
FUNDS = 2_000_000  # satoshis per faucet coin
TOPIC = "tm_bench"
WINDOW = 10
#: hex digits to letters (topic names are lower-case letters and underscores)
LETTERS = str.maketrans("0123456789", "ghijklmnop")
#: the targets: (figure, op, bound)
TARGETS: dict[str, tuple[str, float]] = {
    "latency_p95_ms": ("<", 500),
    "payments_per_s": (">=", 100),
    "accesses_per_s": (">=", 50),
    "stream_p95_ms": ("<", 100),
    "advert_p95_ms": ("<", 200),
    "success_percent": (">=", 99),
}
LATENCY_OPS = ("discover", "search", "quote", "pay", "access")
#: what a failed operation may raise on the client side (anything else is a bug of the benchmark: it propagates)
FAILURES = (OverlayError, OSError, ValueError, KeyError, TypeError, RuntimeError)


# -- calls through the control API, as the CLI makes them ---------------------------------------------------------


def call(member: Member, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One control call on a fresh client (and connection), as one ``overlay-node ctl`` command makes it."""
    with ControlClient(Path(member.data_dir)) as client:
        return client.call(method, path, body)


def ndjson_result(member: Member, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A long operation (publish, access): its progress lines read and dropped, its ``result`` line returned."""
    with ControlClient(Path(member.data_dir)) as client:
        for event in client.stream("POST", path, body):
            if event.get("event") == "result":
                return event
            if event.get("event") == "error":
                raise ApiError(str(event.get("message", "")), code=str(event.get("code", "error")), status=0)
    raise RuntimeError(f"{path} ended without a result")


# -- bookkeeping ------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Every measured operation: its latency when it succeeded, its error when it failed (thread safe)."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, op: str, fn: Callable[[], Any], check: Callable[[Any], bool] = bool) -> Any | None:
        """Run ``fn``; its latency under ``op`` if it returns an answer that passes ``check``, else a failure."""
        t = time.perf_counter()
        try:
            answer = fn()
            if not check(answer):
                raise ValueError(f"unexpected answer: {str(answer)[:200]}")
        except FAILURES as exc:
            self.fail(op, exc)
            return None
        elapsed = time.perf_counter() - t
        with self.lock:
            self.latencies.setdefault(op, []).append(elapsed)
        return answer

    def fail(self, op: str, exc: BaseException | str) -> None:
        with self.lock:
            self.failed[op] = self.failed.get(op, 0) + 1
            if len(self.errors) < 20:
                self.errors.append(f"{op}: {exc}")

    def ok(self, op: str, n: int = 1) -> None:
        """``n`` operations that succeeded without a latency of their own (stream packets)."""
        with self.lock:
            self.latencies.setdefault(op, []).extend([0.0] * n)

    def summary(self) -> dict[str, Any]:
        ops = sorted(set(self.latencies) | set(self.failed))
        by_op = {op: {"ok": len(self.latencies.get(op, [])), "failed": self.failed.get(op, 0)} for op in ops}
        ok = sum(v["ok"] for v in by_op.values())
        failed = sum(v["failed"] for v in by_op.values())
        rate = 100.0 * ok / (ok + failed) if ok + failed else 0.0
        return {"ok": ok, "failed": failed, "success_percent": round(rate, 3), "by_op": by_op, "errors": self.errors}


def quantiles_ms(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds (nearest rank)."""
    if not samples:
        return {"n": 0}
    ms = sorted(s * 1000 for s in samples)

    def rank(q: float) -> float:
        return round(ms[min(len(ms) - 1, max(0, math.ceil(len(ms) * q) - 1))], 2)

    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": rank(0.95),
        "p99_ms": rank(0.99),
        "max_ms": round(ms[-1], 2),
    }


@contextmanager
def phase(phases: dict[str, Any], name: str, cluster: Cluster) -> Iterator[None]:
    """Record how long a phase took and how many cores were busy meanwhile: the whole machine (and the time a
    virtual machine's host took, steal), the cluster's processes (daemons and ledger), this benchmark's client."""
    pids = [m.pid for m in cluster.members] + [cluster.ledger_pid]

    def cluster_cpu() -> float:
        return sum(process_cpu_seconds(pid) for pid in pids)

    machine, ours, own, wall = (
        system_cpu_seconds(),
        cluster_cpu(),
        process_cpu_seconds(os.getpid()),
        time.perf_counter(),
    )
    yield
    wall = time.perf_counter() - wall
    after = system_cpu_seconds()
    phases[name] = {
        "seconds": round(wall, 3),
        "cores": os.cpu_count(),
        "machine_busy_cores": round((after["busy"] - machine["busy"]) / wall, 2) if machine else None,
        "steal_cores": round((after["steal"] - machine["steal"]) / wall, 2) if machine else None,
        "cluster_cores": round((cluster_cpu() - ours) / wall, 2),
        "bench_client_cores": round((process_cpu_seconds(os.getpid()) - own) / wall, 2),
    }


# -- setup ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    producer: int
    hash: str
    size: int
    price: int


def fund(cluster: Cluster, coins: int) -> None:
    """``coins`` faucet coins on every node (one per concurrent payer, and spares)."""

    def one(i: int) -> None:
        for _ in range(coins):
            call(cluster.members[i], "POST", "/v1/wallet/faucet", {"satoshis": FUNDS})

    with ThreadPoolExecutor(NODES) as pool:
        list(pool.map(one, range(NODES)))


def publish_items(cluster: Cluster, root: Path, per_producer: int, size: int) -> list[Item]:
    """``per_producer`` files published by nodes 0 and 1 each, every other one priced, one replica placed."""
    files = root / "files"
    files.mkdir()

    def one(producer: int) -> list[Item]:
        items = []
        for k in range(per_producer):
            path = files / f"p{producer}-{k}.bin"
            path.write_bytes(os.urandom(size))
            price = PRICE if k % 2 else 0
            body = {
                "path": str(path),
                "title": f"bench item {producer}/{k}",
                "tags": ["bench", "priced" if price else "free"],
                "price": price,
                "replication": 1,
                "wait": True,
            }
            done = ndjson_result(cluster.members[producer], "/v1/content/publish", body)
            items.append(Item(producer, str(done["hash"]), int(done["size"]), price))
        return items

    with ThreadPoolExecutor(2) as pool:
        return [item for items in pool.map(one, (0, 1)) for item in items]


def setup(cluster: Cluster, root: Path, args: argparse.Namespace) -> list[Item]:
    fund(cluster, args.threads + 2)
    items = publish_items(cluster, root, args.items, args.size_kib * 1024)
    for i in (0, 2):
        call(cluster.members[i], "POST", "/v1/advertise", {"topic": TOPIC, "on_chain": False, "service_type": "bench"})
    for i in range(NODES):
        (root / "out" / str(i)).mkdir(parents=True)
    return items


# -- the operations -----------------------------------------------------------------------------------------------


class Ops:
    """The measured operations of one cluster, each recorded in ``tally``."""

    def __init__(self, cluster: Cluster, root: Path, items: list[Item], tally: Tally) -> None:
        self.members = cluster.members
        self.keys = [m.identity_key for m in cluster.members]
        self.root = root
        self.items = items
        self.tally = tally
        #: quote asked -> receipt checked, under load (beside the two calls' own latencies in ``tally``)
        self.quote_pay_totals: list[float] = []
        self._seq = 0
        self._lock = threading.Lock()

    def _next(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def discover(self, node: int, topic: str = TOPIC) -> bool:
        found = self.tally.timed(
            "discover",
            lambda: call(self.members[node], "POST", "/v1/discover", {"topic": topic}),
            lambda a: isinstance(a, dict) and bool(a.get("hosts")),
        )
        return found is not None

    def search(self, node: int) -> None:
        self.tally.timed(
            "search",
            lambda: call(self.members[node], "POST", "/v1/content/search", {"tags": ["bench"]}),
            lambda a: isinstance(a, dict) and bool(a.get("results")),
        )

    def quote_pay(self, payer: int, payee: int, label: str = "") -> bool:
        """A quote from ``payee``, then its payment; ``label`` prefixes the ops' names (``pay`` under load)."""
        resource = f"bench:{payer}:{self._next()}"
        body = {"provider": self.keys[payee], "resource": resource, "amount": AMOUNT}
        member = self.members[payer]
        t = time.perf_counter()
        quote = self.tally.timed(
            f"{label}quote",
            lambda: call(member, "POST", "/v1/quote", body),
            lambda a: isinstance(a, dict) and a.get("amount") == AMOUNT and bool(a.get("quote_id")),
        )
        if quote is None:
            return False
        receipt = self.tally.timed(
            f"{label}pay",
            lambda: call(member, "POST", "/v1/pay", {"quote_id": quote["quote_id"]}),
            lambda a: isinstance(a, dict) and a.get("amount") == AMOUNT and bool(a.get("txid")),
        )
        if receipt is not None and label:
            self.quote_pay_totals.append(time.perf_counter() - t)
        return receipt is not None

    def access(self, node: int, item: Item, op: str = "access") -> bool:
        output = self.root / "out" / str(node) / f"{self._next()}.bin"
        body = {"content": item.hash, "output": str(output), "max_price": PRICE}
        done = self.tally.timed(
            op,
            lambda: ndjson_result(self.members[node], "/v1/content/access", body),
            lambda a: int(a.get("size", -1)) == item.size,
        )
        output.unlink(missing_ok=True)
        return done is not None

    def consumers_of(self, item: Item) -> list[int]:
        return [n for n in range(NODES) if n != item.producer]


# -- 1. latency, one call at a time -------------------------------------------------------------------------------


def serial_latency(ops: Ops, calls: int) -> dict[str, Any]:
    for i in range(calls):
        ops.discover([1, 3, 4][i % 3])  # nodes 0 and 2 advertise it
    for i in range(calls):
        ops.search(i % NODES)
    for i in range(calls):
        payer = i % NODES
        ops.quote_pay(payer, (payer + 1 + (i // NODES) % (NODES - 1)) % NODES)
    for i in range(calls):
        item = ops.items[i % len(ops.items)]
        consumers = ops.consumers_of(item)
        ops.access(consumers[(i // len(ops.items)) % len(consumers)], item)
    return {op: quantiles_ms(ops.tally.latencies.get(op, [])) for op in LATENCY_OPS}


# -- 2. and 3. throughput -----------------------------------------------------------------------------------------


def _load(threads: int, seconds: float, work: Callable[[int, int, int], bool]) -> tuple[int, float]:
    """``threads`` clients per node, each calling ``work(node, thread, round)`` until ``seconds`` have passed;
    returns the successful calls and the time from the start until the last one finished."""
    deadline = time.perf_counter() + seconds
    done = [0] * (NODES * threads)
    start = threading.Barrier(NODES * threads + 1)

    def client(slot: int) -> None:
        node, thread = divmod(slot, threads)
        start.wait()
        r = 0
        while time.perf_counter() < deadline:
            done[slot] += work(node, thread, r)
            r += 1

    with ThreadPoolExecutor(NODES * threads) as pool:
        futures = [pool.submit(client, slot) for slot in range(NODES * threads)]
        start.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - t0
    return sum(done), elapsed


def payments_load(ops: Ops, threads: int, seconds: float) -> dict[str, Any]:
    def work(node: int, thread: int, r: int) -> bool:
        payee = (node + 1 + (thread + r) % (NODES - 1)) % NODES
        return ops.quote_pay(node, payee, label="load:")

    n, elapsed = _load(threads, seconds, work)
    return {
        "payers": NODES * threads,
        "payees": NODES,
        "payments": n,
        "seconds": round(elapsed, 3),
        "per_s": round(n / elapsed, 1),
        "quote_pay_latency": quantiles_ms(ops.quote_pay_totals),
    }


def access_load(ops: Ops, threads: int, seconds: float) -> dict[str, Any]:
    theirs = {n: [it for it in ops.items if it.producer != n] for n in range(NODES)}
    priced: list[Item] = []

    def work(node: int, thread: int, r: int) -> bool:
        mine = theirs[node]
        item = mine[(thread * 7 + r) % len(mine)]
        ok = ops.access(node, item, op="load:access")
        if ok and item.price:
            priced.append(item)  # list.append: atomic under the GIL
        return ok

    n, elapsed = _load(threads, seconds, work)
    return {
        "consumers": NODES * threads,
        "accesses": n,
        "priced": len(priced),
        "seconds": round(elapsed, 3),
        "per_s": round(n / elapsed, 1),
        "latency": quantiles_ms(ops.tally.latencies.get("load:access", [])),
    }


# -- 4. stream latency --------------------------------------------------------------------------------------------


def _read_stream(member: Member, body: dict[str, Any], total: int, delays: list[float]) -> None:
    """Subscribe and note each packet's delay (arrival - its push stamp) until ``total`` came or the stream ends."""
    try:
        with ControlClient(Path(member.data_dir)) as client:
            for event in client.stream("POST", "/v1/subscribe", body):
                if "summary" in event:
                    return
                delays.append(time.perf_counter() - float(str(event["payload"]).split(" ", 2)[1]))
                if len(delays) >= total:
                    return  # closing the connection ends the subscription
    except FAILURES:
        return  # the packets it did not get count as failed


def _attached(producer: Member, stream_id: str, n: int, timeout: float = 60.0) -> None:
    """Wait (setup, not measured) until ``n`` subscribers are attached to the stream."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = call(producer, "GET", f"/v1/streams/{stream_id}")
        if sum(s["state"] == "attached" for s in status["subscribers"]) >= n:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the stream's {n} subscribers did not attach in {timeout:.0f}s")


def stream_latency(cluster: Cluster, tally: Tally, rate: float, seconds: float) -> dict[str, Any]:
    producer, consumers = cluster.members[0], cluster.members[1:]
    stream_id = f"bench-{uuid.uuid4().hex[:8]}"
    call(producer, "POST", "/v1/streams", {"stream_id": stream_id, "rate": 1})
    total = int(rate * seconds)
    body = {"stream_id": stream_id, "window": WINDOW, "producer": producer.identity_key}
    delays: list[list[float]] = [[] for _ in consumers]
    readers = [
        threading.Thread(target=_read_stream, args=(m, body, total, d), daemon=True)
        for m, d in zip(consumers, delays, strict=True)
    ]
    for reader in readers:
        reader.start()
    _attached(producer, stream_id, len(consumers))
    pad = "x" * 200
    start = time.perf_counter()
    for i in range(total):
        pause = start + i / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        packet = f"{i} {time.perf_counter():.9f} {pad}"
        tally.timed(
            "stream_push", partial(call, producer, "POST", f"/v1/streams/{stream_id}/push", {"packets": [packet]})
        )
    for member, reader in zip(consumers, readers, strict=True):
        reader.join(timeout=30)
        if reader.is_alive():  # packets missing: end the subscription, its reader then ends
            call(member, "POST", "/v1/subscriptions/stop", {"stream_id": stream_id})
            reader.join(timeout=30)
    for got in delays:
        tally.ok("stream_packet", len(got))
        if len(got) < total:
            tally.fail("stream_packet", f"a consumer received {len(got)} of {total} packets")
    call(producer, "POST", f"/v1/streams/{stream_id}/close")
    return {
        "window": WINDOW,
        "rate": rate,
        "consumers": len(consumers),
        "packets_each": total,
        **quantiles_ms([d for got in delays for d in got]),
    }


# -- 5. advert propagation ------------------------------------------------------------------------------------------


def advert_propagation(ops: Ops, rounds: int, timeout: float = 10.0) -> dict[str, Any]:
    delays: list[float] = []
    advertise: list[float] = []
    for r in range(rounds):
        origin = r % NODES
        topic = "tm_prop_" + uuid.uuid4().hex[:12].translate(LETTERS)  # names are letters only
        watchers = [n for n in range(NODES) if n != origin]
        go = threading.Event()
        t0 = [0.0]

        def watch(node: int, topic: str = topic, go: threading.Event = go, t0: list[float] = t0) -> None:
            go.wait()
            deadline = time.perf_counter() + timeout
            while time.perf_counter() < deadline:
                try:
                    answer = call(ops.members[node], "POST", "/v1/discover", {"topic": topic})
                except FAILURES as exc:
                    ops.tally.fail("advert_seen", exc)
                    return
                if answer["hosts"]:
                    delays.append(time.perf_counter() - t0[0])
                    ops.tally.ok("advert_seen")
                    return
            ops.tally.fail("advert_seen", f"node {node} did not see {topic} in {timeout:.0f}s")

        with ThreadPoolExecutor(len(watchers)) as pool:
            futures = [pool.submit(watch, n) for n in watchers]
            t0[0] = time.perf_counter()
            go.set()
            body = {"topic": topic, "on_chain": False}
            ops.tally.timed("advertise", partial(call, ops.members[origin], "POST", "/v1/advertise", body))
            advertise.append(time.perf_counter() - t0[0])
            for f in futures:
                f.result()
    return {
        "rounds": rounds,
        "peers_each": NODES - 1,
        **quantiles_ms(delays),
        "advertise_call": quantiles_ms(advertise),
    }


# -- the run ------------------------------------------------------------------------------------------------------


def measure(cluster: Cluster, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"phases": {}}
    phases = results["phases"]
    with phase(phases, "setup", cluster):
        items = setup(cluster, root, args)
    results["items"] = {"count": len(items), "size_kib": args.size_kib, "priced": sum(1 for i in items if i.price)}
    tally = Tally()
    ops = Ops(cluster, root, items, tally)
    with phase(phases, "latency", cluster):
        results["latency"] = serial_latency(ops, args.calls)
    with phase(phases, "payments", cluster):
        results["payments"] = payments_load(ops, args.threads, args.seconds)
    with phase(phases, "access", cluster):
        results["access"] = access_load(ops, args.threads, args.seconds)
    with phase(phases, "stream", cluster):
        results["stream"] = stream_latency(cluster, tally, args.stream_rate, args.stream_seconds)
    with phase(phases, "adverts", cluster):
        results["adverts"] = advert_propagation(ops, args.adverts)
    results["success"] = tally.summary()
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scen-") as tmp:
        root = Path(tmp)
        extra = ["--set", "node.log_level=warning", "--set", "content.repair_interval=0"]
        t = time.perf_counter()
        with Cluster(NODES, root=root / "cluster", tls=args.tls, extra_args=extra) as cluster:
            start_s = round(time.perf_counter() - t, 2)
            results = measure(cluster, root, args)
        results["cluster"] = {
            "nodes": NODES,
            "start_seconds": start_s,
            "tls": args.tls,
            "processes": "a daemon each (overlay-node run) and one devnet ledger (overlay-node devnet)",
        }
    return results


def met(name: str, value: float | None) -> str:
    if value is None:
        return "?"
    op, bound = TARGETS[name]
    return "yes" if (value >= bound if op == ">=" else value < bound) else "NO"


def print_table(r: dict[str, Any]) -> None:
    def row(figure: str, value: Any, target: str = "", name: str = "") -> None:
        shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
        print(f"{figure:<58} {shown:>12} {target:>10} {met(name, value) if name else '':>4}")

    row("figure", "value", "target", "")
    for op in LATENCY_OPS:
        q = r["latency"][op]
        if not q["n"]:
            row(f"{op}: no successful call", "-", "< 500 ms", "")
            continue
        row(
            f"{op} p95 ms ({q['n']} calls; p50 {q['p50_ms']}, p99 {q['p99_ms']})",
            q["p95_ms"],
            "< 500",
            "latency_p95_ms",
        )
    p, a, s, v = r["payments"], r["access"], r["stream"], r["adverts"]
    row(f"payments/s ({p['payers']} payers, {p['payees']} payees)", p["per_s"], ">= 100", "payments_per_s")
    lat = p["quote_pay_latency"]
    if lat["n"]:
        row("  quote+pay under that load p50 / p95 ms", f"{lat['p50_ms']} / {lat['p95_ms']}")
    row(
        f"content accesses/s ({a['consumers']} clients, {a['priced']} of priced items)",
        a["per_s"],
        ">= 50",
        "accesses_per_s",
    )
    if s["n"]:
        row(f"stream latency p95 ms (W={s['window']}; p50 {s['p50_ms']}, p99 {s['p99_ms']})", s["p95_ms"], "< 100",
            "stream_p95_ms")  # fmt: skip
    if v["n"]:
        row(f"advert seen by direct peers p95 ms (p50 {v['p50_ms']}, max {v['max_ms']})", v["p95_ms"], "< 200",
            "advert_p95_ms")  # fmt: skip
    ok = r["success"]
    row(f"success rate % ({ok['ok']} ok, {ok['failed']} failed)", ok["success_percent"], ">= 99", "success_percent")
    for name, ph in r["phases"].items():
        row(
            f"  cores busy in {name} (of {ph['cores']}): machine, cluster, client",
            f"{ph['machine_busy_cores']} {ph['cluster_cores']} {ph['bench_client_cores']}",
        )
    for error in ok["errors"]:
        print(f"error: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a run of about a minute)")
    parser.add_argument("--calls", type=int, default=None, help="calls per operation for the latencies (200)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each throughput run (15)")
    parser.add_argument("--threads", type=int, default=4, help="clients per node in the throughput runs")
    parser.add_argument("--items", type=int, default=None, help="items published by each of 2 producers (20)")
    parser.add_argument("--size-kib", type=int, default=16, help="size of each item")
    parser.add_argument("--stream-seconds", type=float, default=None, help="length of the stream run (10)")
    parser.add_argument("--stream-rate", type=float, default=50.0, help="packets pushed per second")
    parser.add_argument("--adverts", type=int, default=None, help="advert propagation rounds (30)")
    parser.add_argument("--tls", action="store_true", help="https on the nodes' http ports (tokens on chain)")
    args = parser.parse_args()
    quick = args.quick
    args.calls = args.calls or (50 if quick else 200)
    args.seconds = args.seconds or (4.0 if quick else 15.0)
    args.items = args.items or (8 if quick else 20)
    args.stream_seconds = args.stream_seconds or (3.0 if quick else 10.0)
    args.adverts = args.adverts or (8 if quick else 30)
    if min(args.calls, args.threads, args.items, args.adverts) < 1 or args.items < 2:
        parser.error("--calls, --threads and --adverts must be at least 1, --items at least 2")
    results = run(args)
    results["mode"] = "quick" if quick else "full"
    results["options"] = {k: v for k, v in vars(args).items() if k != "quick"}
    results["targets"] = {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()}
    save(RESULTS, results)
    print_table(results)
    print(f"saved {RESULTS}")
    if results["success"]["failed"]:
        sys.exit(f"{results['success']['failed']} operation(s) failed (see the errors above)")


if __name__ == "__main__":
    main()
