"""GASP sync of a topic between two hosts: host A holds N outputs (10,000 by default), host B holds none and syncs
them (``ctl sync``'s control route) through A's ``/requestSyncResponse`` and ``/requestForeignGASPNode``, each
request authenticated (BRC-104: the GASP routes need it by default).

The workload is the overlay engine anchor's (``bench_engine.py``): each output is a P2PKH child of a fake mined
parent, so B fetches two transactions per output (the child, then its proven parent) and submits both. Both nodes
run in processes of their own with ``tm_bench``/``ls_bench``, ``overlay.spv = "scripts-only"`` (the fake parents'
merkle roots are in no chain), no broadcast and no propagation; durable commits.

    .venv/bin/python bench/bench_sync.py [--outputs N] [--quick]

Prints and saves ``bench/results/bench_sync.json``: the sync's wall time, outputs and transactions per second, and
each process's CPU. Loading A is not timed. Exits 1 only when B does not end up with every output.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_engine import make_submission  # noqa: E402  # bench/ is on sys.path
from engine_plugin import SERVICE_ENTRY, TOPIC, TOPIC_ENTRY  # noqa: E402
from nodeproc import Host, NodeSpec, open_host  # noqa: E402
from results_io import save  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bench_sync.json"
NODE_CONFIG: dict[str, Any] = {
    "overlay.topic_managers": ["tm_ship", TOPIC_ENTRY],
    "overlay.lookup_services": ["ls_ship", SERVICE_ENTRY],
    "overlay.spv": "scripts-only",
    "overlay.broadcast": False,
    "overlay.propagate": False,
    "overlay.sync_interval": 0.0,
    "overlay.sync_page": 1000,
    "overlay.sync_concurrency": 16,
    "overlay.sync_deadline": 3600.0,
}


def describe(node: Any) -> dict[str, Any]:
    import os

    return {"http": node.info.http, "pid": os.getpid()}


async def sync_ops(host: Host, op: str, args: list[Any]) -> Any:
    node = host.nodes[0]
    if op == "counts":
        topics, _ = await node.overlay.counts()
        return topics.get(TOPIC, (0, 0))
    if op == "sync":
        (url,) = args
        reports = await node.overlay_sync.sync_all([TOPIC], [url])
        return [r.as_json() for r in reports]
    raise ValueError(op)


async def load(url: str, beefs: list[bytes], concurrency: int = 32) -> None:
    headers = {"Content-Type": "application/octet-stream", "X-Topics": f'["{TOPIC}"]'}
    limiter = trio.CapacityLimiter(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(beef: bytes) -> None:
            async with limiter:
                answer = await client.post("/submit", content=beef, headers=headers)
                if answer.status_code != 200 or not answer.json()[TOPIC]["outputsToAdmit"]:
                    raise RuntimeError(f"submission refused: {answer.text[:200]}")

        async with trio.open_nursery() as nursery:
            for beef in beefs:
                nursery.start_soon(one, beef)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    beefs = [make_submission(i, 11).beef for i in range(args.outputs)]
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            hosts = [
                await open_host(
                    nursery,
                    [NodeSpec(tmp, name, dict(NODE_CONFIG))],
                    sync_ops,
                    describe,
                    in_process=False,
                    log_level=logging.WARNING,
                )
                for name in ("a", "b")
            ]
            a, b = hosts
            try:
                started = time.perf_counter()
                await load(str(a.info["http"]), beefs)
                loaded = time.perf_counter() - started
                assert await a.call("counts") == (args.outputs, args.outputs)
                cpu_a, cpu_b = a.cpu_seconds(), b.cpu_seconds()
                started = time.perf_counter()
                reports = await b.call("sync", str(a.info["http"]))
                wall = time.perf_counter() - started
                cpu_a, cpu_b = a.cpu_seconds() - cpu_a, b.cpu_seconds() - cpu_b
                held = await b.call("counts")
            finally:
                for host in hosts:
                    await host.stop()
    (report,) = reports
    return {
        "outputs": args.outputs,
        "load_seconds": round(loaded, 2),
        "sync_seconds": round(wall, 2),
        "outputs_per_s": round(args.outputs / wall, 1),
        "transactions_per_s": round(report["fetched"] / wall, 1),
        "cpu_seconds": {"host_a": round(cpu_a, 2), "host_b": round(cpu_b, 2)},
        "report": report,
        "held_by_b": list(held),
        "config": {k: v for k, v in NODE_CONFIG.items() if not k.endswith(("managers", "services"))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", type=int, default=None, help="outputs host A holds (default 10,000)")
    parser.add_argument("--quick", action="store_true", help="1,000 outputs")
    args = parser.parse_args()
    args.outputs = args.outputs or (1_000 if args.quick else 10_000)
    results = trio.run(run, args)
    save(RESULTS, results)
    print(f"GASP sync of {results['outputs']} outputs between two hosts (both in their own processes)")
    print(f"  sync wall time            {results['sync_seconds']:>10} s")
    print(f"  outputs per second        {results['outputs_per_s']:>10}")
    print(f"  transactions per second   {results['transactions_per_s']:>10}  ({results['report']['fetched']} fetched)")
    cpu = results["cpu_seconds"]
    print(f"  CPU s: A (answering) {cpu['host_a']}, B (syncing) {cpu['host_b']}")
    print(f"  B holds {results['held_by_b'][0]} outputs ({results['held_by_b'][1]} unspent)")
    print(f"saved {RESULTS}")
    if results["held_by_b"][0] != results["outputs"]:
        print(f"FAILED: B holds {results['held_by_b'][0]} of {results['outputs']}: {results['report']}")
        sys.exit(1)


if __name__ == "__main__":
    main()
