"""Benchmark of UHRP content on loopback: six whole nodes, each in its own process (as separate daemons would
run), real peer links and HTTP.

Run from the repository root::

    .venv/bin/python bench/bench_content.py [--size-mib 256] [--gateway-requests 4000]

It measures replication throughput of one file to 3 replicas (publish excluded: the file is already in the
producer's blob store), download throughput from 1 holder and from 3 holders (verified, written to disk), and the
HTTP gateway's requests per second and p50/p95 latency for a small object (1 KiB, 16 concurrent clients) and for a
1 MiB object (4 concurrent clients), and the start of a download when 2 of an object's 3 holders were killed
(time to the first chunk, and in all). The gateway load runs in separate worker processes (keep-alive HTTP/1.1
connections, every body's hash checked). ``--one-process`` runs all six nodes in the benchmark's own process and
event loop instead (a floor: one core's loop for everyone). It prints a table against the targets of issue 5 and
saves ``bench/results/bench_content.json``; it never fails on time.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

# the package of this checkout, not whichever one the environment installed (as bench_payments.py does)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodeproc import Host, NodeHost, NodeSpec, open_host  # bench/ is on sys.path as a script
from results_io import source_state

from overlay_node.node import Node
from overlay_node.services.content_fetch import fetch

MiB = 1024 * 1024
RESULTS = Path(__file__).parent / "results" / "bench_content.json"


# on top of nodeproc.LOOPBACK
BASE: dict[str, Any] = {"content.repair_interval": 0, "node.log_level": "warning"}


# -- what the benchmark asks of a node (the same calls in-process or in a node process) ---------------------------


def _describe(node: Node) -> dict[str, Any]:
    return {
        "identity_key": node.info.identity_key,
        "http": node.info.http,
        "dht": node.info.dht,
        "ledger": node.status()["ledger"],
        "blobs": str(node.content.blobs.root),
    }


async def _op(host: Host, op: str, args: list[Any]) -> Any:
    node = host.nodes[0]
    if op == "announce":
        await node.content._announce()
        return None
    if op == "publish":
        path, replication = args
        item = await node.content.publish(Path(path), replication=replication, replicate=False)
        return {"hash": item.hash, "size": item.size}
    if op == "distribute":
        started = time.perf_counter()
        rows = await node.content.distribute(args[0])
        holders = [r.identity_key for r in rows if r.state == "available"]
        return {"elapsed": time.perf_counter() - started, "holders": holders}
    if op == "fetch":
        content_hash, output = args
        started = time.perf_counter()
        marks: dict[str, float] = {}

        def progress(event: dict[str, Any]) -> None:
            marks.setdefault(event["event"], time.perf_counter() - started)

        result = await fetch(node.content, content_hash, Path(output), progress=progress)
        return {
            "elapsed": time.perf_counter() - started,
            "holders_used": len(result.holders_used),
            # the first chunk checked and written: the download has started
            "first_chunk": marks.get("chunk", marks.get("done", 0.0)),
            "marks": marks,
        }
    raise ValueError(f"unknown op {op}")


def _blob_path(node: NodeHost, content_hash: str) -> Path:
    h = content_hash
    return Path(node.info["blobs"]) / h[:2] / h[2:4] / h


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    size_mib: int = args.size_mib
    out: dict[str, Any] = {"size_mib": size_mib, "nodes": "one process" if args.one_process else "one process each"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with trio.open_nursery() as nursery:
            nodes: list[NodeHost] = []

            async def start(name: str, overrides: dict[str, Any]) -> NodeHost:
                spec = NodeSpec(str(root), name, BASE | overrides)
                return await open_host(nursery, [spec], _op, _describe, in_process=args.one_process)

            first = await start("n0", {})
            shared = {"wallet.arc_url": first.info["ledger"], "dht.bootstrap": [first.info["dht"]]}
            nodes = [first] + [await start(f"n{i}", shared) for i in range(1, 6)]
            try:
                await _run(args, root, nodes, out)
            finally:
                for node in nodes:
                    await node.stop()
    return out


async def _run(args: argparse.Namespace, root: Path, nodes: list[NodeHost], out: dict[str, Any]) -> None:
    for node in nodes:
        await node.call("announce")
    producer = nodes[0]
    source = root / "big.bin"
    with source.open("wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(MiB))
    item = await producer.call("publish", str(source), 3)
    placed = await producer.call("distribute", item["hash"])
    holders = placed["holders"]
    out["replication_mb_s"] = round(3 * item["size"] / placed["elapsed"] / 1e6, 1)
    out["replicas"] = len(holders)
    by_key = {n.info["identity_key"]: n for n in nodes}
    reader = next(n for n in nodes[1:] if n.info["identity_key"] not in holders)

    # download from 1 holder: the others stop serving (their copies are moved aside for the run)
    hidden = [_blob_path(by_key[key], item["hash"]) for key in holders[1:]] + [_blob_path(producer, item["hash"])]
    for path in hidden:
        path.rename(path.with_suffix(".away"))
    one = await reader.call("fetch", item["hash"], str(root / "one.bin"))
    out["download_1_holder_mb_s"] = round(item["size"] / one["elapsed"] / 1e6, 1)
    for path in hidden:
        path.with_suffix(".away").rename(path)
    (root / "one.bin").unlink()
    three = await reader.call("fetch", item["hash"], str(root / "three.bin"))
    out["download_3_holders_mb_s"] = round(item["size"] / three["elapsed"] / 1e6, 1)
    out["holders_used"] = three["holders_used"]

    # gateway: the load comes from separate processes (like real clients), so the servers' loop only serves
    for label, size, clients in (
        ("small", args.small_kib * 1024, args.gateway_clients),
        ("1mib", MiB, args.latency_clients),
    ):
        obj = root / f"{label}.bin"
        obj.write_bytes(os.urandom(size))
        obj_item = await producer.call("publish", str(obj), 0)
        figures = await _gateway_load(producer.info["http"], obj_item["hash"], args.gateway_requests, clients)
        out[f"gateway_req_s_{label}"] = figures["req_s"]
        out[f"gateway_p50_ms_{label}"] = figures["p50_ms"]
        out[f"gateway_p95_ms_{label}"] = figures["p95_ms"]
        out[f"gateway_clients_{label}"] = clients

    await _dead_holders(args, root, nodes, out)


async def _dead_holders(args: argparse.Namespace, root: Path, nodes: list[NodeHost], out: dict[str, Any]) -> None:
    """Download start with 2 of 3 holders killed (last: the killed nodes are gone for the rest of the run).

    An object of ``--dead-mib`` MiB is held by its producer and two replicas; the reader has linked to all three
    (it downloaded from them) when both replica processes are killed (SIGKILL, so they close nothing); then it
    downloads. ``dead_first_chunk_s`` is the time to the first chunk checked and written, ``dead_total_s`` the whole
    download.
    """
    producer = nodes[0]
    obj = root / "dead.bin"
    obj.write_bytes(os.urandom(args.dead_mib * MiB))
    item = await producer.call("publish", str(obj), 2)
    placed = await producer.call("distribute", item["hash"])
    producer_key = producer.info["identity_key"]
    replicas = [k for k in placed["holders"] if k != producer_key]
    by_key = {n.info["identity_key"]: n for n in nodes}
    reader = next(n for n in nodes[1:] if n.info["identity_key"] not in replicas)
    warm = await reader.call("fetch", item["hash"], str(root / "dead-warm.bin"))
    (root / "dead-warm.bin").unlink()
    victims = [by_key[k] for k in replicas[:2]]
    for victim in victims:
        await _kill(victim)
    dead = await reader.call("fetch", item["hash"], str(root / "dead-after.bin"))
    out["dead_mib"] = args.dead_mib
    out["dead_killed"] = len(victims)
    out["live_first_chunk_s"] = round(warm["first_chunk"], 3)
    out["live_total_s"] = round(warm["elapsed"], 3)
    out["dead_first_chunk_s"] = round(dead["first_chunk"], 3)
    out["dead_total_s"] = round(dead["elapsed"], 3)
    out["dead_marks_s"] = {k: round(v, 3) for k, v in dead["marks"].items()}


async def _kill(node: NodeHost) -> None:
    """SIGKILL a node's process (a node in this process is stopped instead: it cannot be killed alone)."""
    proc = getattr(node, "_proc", None)
    if proc is None or proc.pid is None:
        await node.stop()
        return
    proc.kill()
    await trio.to_thread.run_sync(proc.join, 10)


async def _gateway_load(base: str, content_hash: str, requests: int, clients: int) -> dict[str, float]:
    """Run ``requests`` GETs of ``/uhrp/<hash>`` from ``clients`` keep-alive connections in worker processes."""
    procs = max(1, min(clients, os.cpu_count() or 1))
    per_proc = [clients // procs + (i < clients % procs) for i in range(procs)]
    latencies: list[float] = []
    done: list[float] = []

    async def one(threads: int) -> None:
        n = requests * threads // clients
        cmd = [sys.executable, __file__, "--load-worker", base, content_hash, str(n), str(threads)]
        result = await trio.run_process(cmd, capture_stdout=True)
        answer = json.loads(result.stdout)
        latencies.extend(answer["latencies"])
        done.append(answer["elapsed"])

    async with trio.open_nursery() as nursery:
        for threads in per_proc:
            nursery.start_soon(one, threads)
    cuts = statistics.quantiles(latencies, n=20)
    return {
        "req_s": round(len(latencies) / max(done), 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p95_ms": round(cuts[18] * 1000, 2),
    }


def _load_worker(base: str, content_hash: str, requests: int, threads: int) -> None:
    """A load process: ``threads`` keep-alive HTTP/1.1 clients, each checking every body's hash; prints JSON."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    path = f"/uhrp/{content_hash}"
    latencies: list[float] = []
    barrier = threading.Barrier(threads)

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", path)  # warm-up: connect outside the measured window
        conn.getresponse().read()
        barrier.wait()
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            latencies.append(time.perf_counter() - t0)
            if response.status != 200 or hashlib.sha256(body).hexdigest() != content_hash:
                raise SystemExit(f"bad answer {response.status}")
        conn.close()

    workers = [threading.Thread(target=client, args=(requests // threads,)) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    print(json.dumps({"latencies": latencies, "elapsed": elapsed}))


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--load-worker":
        _load_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--gateway-requests", type=int, default=4000, help="requests per gateway measurement")
    parser.add_argument("--small-kib", type=int, default=1, help="size of the small gateway object")
    parser.add_argument("--gateway-clients", type=int, default=16, help="concurrent clients for small objects")
    parser.add_argument("--latency-clients", type=int, default=4, help="concurrent clients for 1 MiB objects")
    parser.add_argument("--one-process", action="store_true", help="run all nodes in this process's event loop")
    parser.add_argument("--dead-mib", type=int, default=8, help="size of the object downloaded with holders killed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to save the figures")
    args = parser.parse_args()
    figures = trio.run(bench, args)
    figures["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    targets = {
        "replication_mb_s": ">= 100",
        "download_1_holder_mb_s": ">= 100",
        "download_3_holders_mb_s": ">= 100",
        "gateway_req_s_small": ">= 1000",
        "gateway_p95_ms_small": "",
        "gateway_req_s_1mib": "",
        "gateway_p95_ms_1mib": "< 20",
        "live_first_chunk_s": "",
        "dead_first_chunk_s": "< 0.5",
        "dead_total_s": "",
    }
    print(f"{'figure':<28} {'value':>10}  target")
    for key, target in targets.items():
        print(f"{key:<28} {figures[key]:>10}  {target}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figures["source"] = source_state()  # the commit it ran on (its own machine record stays)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
