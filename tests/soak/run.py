"""The soak run: a cluster of daemons (``scripts/cluster.py``) with a devnet ledger, worked by the driver
(``workload.py``) while the chaos loop (``chaos.py``) kills and restarts nodes; then settled and checked
(``checks.py``), with a final table printed and saved to ``bench/results/soak.json``.

    python -m tests.soak --minutes 5 [--seed N] [--dir D] [--keep]

The seed is printed first; the same seed draws the same faults, victims and pauses, and the same workload choices
(what the nodes answer, and when, still varies). Exit status 0 when no invariant was violated, 1 otherwise; the
cluster's directory (daemon logs, databases) is kept when something was violated, or with ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.soak import checks
from tests.soak.chaos import MAX_DOWN, chaos
from tests.soak.workload import REPLICATION, STREAM_RATE, STREAMS, fetcher, payer, publisher, pusher, subscriber
from tests.soak.world import FAILURES, ROOT, Cluster, Sub, World

NODES = 7
#: settings of every node: repair often, trim surplus at once, give up unanswered payments soon enough to settle
SETTINGS = [
    "--set", "content.repair_interval=15",
    "--set", "content.trim_grace=0",
    "--set", "content.check_timeout=3",
    "--set", "wallet.unanswered_timeout=30",
]  # fmt: skip
#: each node's wallet gets this many faucet coins of COIN satoshis (several coins: payments run concurrently)
COINS = 4
COIN = 500_000
#: the node producing the streams, and (stream id, consumer node, window W) of each subscriber
PRODUCER = 1
SUBSCRIBERS = (("soak-w1", 3, 1), ("soak-w10", 4, 10), ("soak-w10", 5, 10))
RESULTS = ROOT / "bench" / "results" / "soak.json"
#: seconds the driver's threads get to finish their operation in flight once the soak stops
JOIN_TIMEOUT = 300.0


def setup(world: World) -> None:
    """Fund every wallet, create the streams and their subscribers' records."""

    def fund(i: int) -> None:
        for _ in range(COINS):
            world.call(i, "POST", "/v1/wallet/faucet", {"satoshis": COIN})

    checks.parallel(fund, list(range(world.n)))
    for stream_id, _ in STREAMS:
        world.call(
            PRODUCER,
            "POST",
            "/v1/streams",
            {"stream_id": stream_id, "pricing_model": "per-packet", "rate": STREAM_RATE},
        )
    world.subs = [Sub(sid, PRODUCER, consumer, window, STREAM_RATE) for sid, consumer, window in SUBSCRIBERS]


def _stop_driver(world: World, workers: list[threading.Thread], readers: list[threading.Thread]) -> None:
    world.stop.set()
    for _ in range(3):
        checks.stop_subscriptions(world)
        for t in readers:
            t.join(10)
        if not any(t.is_alive() for t in readers):
            break
    deadline = time.monotonic() + JOIN_TIMEOUT
    for t in workers + readers:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            world.note(f"the driver's {t.name} thread was still in an operation {JOIN_TIMEOUT:.0f}s after the stop")


def run_load(world: World, seed: int, minutes: float) -> float:
    """The driver and the chaos loop for ``minutes``; then every node restarted and the driver stopped. Returns the
    seconds the cluster ran under chaos."""
    stop_chaos = threading.Event()
    chaos_thread = threading.Thread(target=chaos, args=(world, random.Random(seed), stop_chaos), name="chaos")
    workers = [
        threading.Thread(target=fn, args=(world, random.Random(f"{seed}-{name}")), name=name, daemon=True)
        for name, fn in (("publisher", publisher), ("fetcher", fetcher), ("payer", payer), ("payer2", payer))
    ]
    workers.append(threading.Thread(target=pusher, args=(world, PRODUCER), name="pusher", daemon=True))
    readers = [
        threading.Thread(target=subscriber, args=(world, sub), name=f"subscriber-node{sub.consumer}", daemon=True)
        for sub in world.subs
    ]
    started = time.monotonic()
    for t in [*workers, *readers, chaos_thread]:
        t.start()
    time.sleep(minutes * 60)
    stop_chaos.set()
    chaos_thread.join()
    ran = time.monotonic() - started
    print(f"soak: chaos stopped after {ran / 60:.1f} minutes; every node is up again; settling", flush=True)
    _stop_driver(world, workers, readers)
    return ran


def finish(world: World) -> dict[str, Any]:
    """Settle the cluster and check every invariant; returns what each check counted."""
    checked: dict[str, Any] = {}
    checks.rejoin(world)
    with httpx.Client(base_url=world.cluster.ledger, timeout=30) as ledger:
        steps: list[tuple[str, Any]] = [
            ("links after the restarts", lambda: checks.links(world)),
            ("content", lambda: checks.check_content(world, checks.repair(world))),
            ("links after repair", lambda: checks.links(world)),
            ("settlement", lambda: checks.settle_payments(world, ledger)),
            ("streams", lambda: checks.check_streams(world)),
            ("payments", lambda: checks.check_payments(world, ledger)),
            ("wallets", lambda: checks.check_wallets(world)),
        ]
        for name, step in steps:
            try:
                checked[name] = step()
            except (*FAILURES, httpx.HTTPError) as exc:
                world.violation(name, f"the check could not run: {type(exc).__name__}: {exc}")
    checked.pop("settlement", None)
    world.repairs["logged_recruits"] = checks.logged_repairs(world)
    return checked


def report(world: World, seed: int, minutes: float, ran: float, wall: float, checked: dict[str, Any]) -> dict[str, Any]:
    by_family = Counter(v["invariant"] for v in world.violations)
    return {
        "seed": seed,
        "nodes": world.n,
        "minutes_planned": minutes,
        "minutes_run": round(ran / 60, 2),
        "minutes_wall": round(wall / 60, 2),
        "replication": REPLICATION,
        "max_down": MAX_DOWN,
        "operations": {kind: dict(sorted(c.items())) for kind, c in sorted(world.ops.items())},
        "faults": dict(sorted(world.faults.items())),
        "repairs_seen": dict(sorted(world.repairs.items())),
        "acknowledged": {
            "blobs": len(world.blobs),
            "payments": len(world.payments),
            "stream_packets_read": sum(len(s.seqs) for s in world.subs),
        },
        "checked": checked,
        "invariant_violations": sum(by_family.values()),
        "violations_by_invariant": dict(by_family),
        "violations": world.violations,
        "notes": world.notes,
        "failure_samples": world.samples,
    }


def print_table(result: dict[str, Any]) -> None:
    print()
    print(
        f"soak: {result['minutes_run']} minutes under chaos ({result['minutes_wall']} in all), "
        f"{result['nodes']} nodes, seed {result['seed']}"
    )
    print(f"  {'operation':<18}{'ok':>8}{'failed':>8}  why it failed")
    for kind, counts in result["operations"].items():
        why = ", ".join(f"{k.split(':', 1)[1]} {n}" for k, n in counts.items() if k.startswith("failed:"))
        print(f"  {kind:<18}{counts.get('ok', 0):>8}{counts.get('failed', 0):>8}  {why}")
    faults = ", ".join(f"{k} {n}" for k, n in result["faults"].items()) or "none"
    print(f"  faults injected: {faults}")
    print(f"  repairs seen: {', '.join(f'{k} {n}' for k, n in result['repairs_seen'].items())}")
    acked = result["acknowledged"]
    print(
        f"  acknowledged: {acked['blobs']} blobs, {acked['payments']} payments, "
        f"{acked['stream_packets_read']} stream packets read"
    )
    for name, counted in result["checked"].items():
        print(f"  {name}: {json.dumps(counted)}")
    print(f"  invariant violations: {result['invariant_violations']} {result['violations_by_invariant'] or ''}")
    print(f"  saved to {RESULTS.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of work under chaos")
    parser.add_argument("--seed", type=int, default=None, help="the chaos seed (default: a random one, printed)")
    parser.add_argument("--dir", type=Path, default=None, help="where the cluster lives (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's directory afterwards")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    print(f"soak seed {seed} (the same run again: make soak MINUTES={args.minutes:g} SEED={seed})", flush=True)
    root = (args.dir or Path(tempfile.mkdtemp(prefix="overlay-soak-"))).resolve()
    begun = time.monotonic()
    with Cluster(NODES, root=root / "cluster", extra_args=SETTINGS) as cluster:
        print(f"soak: {NODES} nodes and a devnet ledger up in {root}", flush=True)
        world = World(cluster, root / "work")
        setup(world)
        ran = run_load(world, seed, args.minutes)
        checked = finish(world)
    result = report(world, seed, args.minutes, ran, time.monotonic() - begun, checked)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    if result["invariant_violations"] or args.keep:
        print(f"  the cluster's files (daemon logs, databases) are kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if result["invariant_violations"] else 0
