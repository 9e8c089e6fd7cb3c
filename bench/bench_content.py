"""Benchmark of UHRP content on loopback: whole nodes in one process (one trio loop), real peer links and HTTP.

Run from the repository root::

    .venv/bin/python bench/bench_content.py [--size-mib 256] [--gateway-requests 400]

It measures replication throughput of one file to 3 replicas (publish excluded: the file is already in the
producer's blob store), download throughput from 1 holder and from 3 holders (verified, written to disk), and the
HTTP gateway's requests per second and p95 latency for 1 MiB objects (16 concurrent clients). All nodes share one
process and one core's event loop, so the figures are a floor for separate daemons. It prints a table against the
targets of issue 5 and saves ``bench/results/bench_content.json``; it never fails on time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from overlay_node.config import load_config, starter_config_text
from overlay_node.datadir import DataDir
from overlay_node.node import Node

MiB = 1024 * 1024
RESULTS = Path(__file__).parent / "results" / "bench_content.json"


def _config(**overrides: Any) -> Any:
    base: dict[str, Any] = {
        "swarm.host": "127.0.0.1",
        "swarm.port": 0,
        "http.port": 0,
        "dht.host": "127.0.0.1",
        "dht.port": 0,
        "content.repair_interval": 0,
        "node.log_level": "warning",
    }
    return load_config(env={}, overrides=base | overrides)


async def _start(nursery: trio.Nursery, root: Path, name: str, **overrides: Any) -> Node:
    dd = DataDir(root / name)
    dd.init(config_text=starter_config_text())
    node = Node(dd, _config(**overrides))
    await nursery.start(node.run)
    return node


async def bench(size_mib: int, gateway_requests: int) -> dict[str, Any]:
    out: dict[str, Any] = {"size_mib": size_mib}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with trio.open_nursery() as nursery:
            first = await _start(nursery, root, "n0")
            shared = {"wallet.arc_url": first.status()["ledger"], "dht.bootstrap": [first.info.dht]}
            nodes = [first] + [await _start(nursery, root, f"n{i}", **shared) for i in range(1, 6)]
            for node in nodes:
                await node.content._announce()
            producer = nodes[0]
            source = root / "big.bin"
            with source.open("wb") as f:
                for _ in range(size_mib):
                    f.write(os.urandom(MiB))
            item = await producer.content.publish(source, replication=3, replicate=False)
            started = time.perf_counter()
            rows = await producer.content.distribute(item.hash)
            elapsed = time.perf_counter() - started
            holders = [r.identity_key for r in rows if r.state == "available"]
            out["replication_mb_s"] = round(3 * item.size / elapsed / 1e6, 1)
            out["replicas"] = len(holders)
            by_key = {n.info.identity_key: n for n in nodes}
            reader = next(n for n in nodes[1:] if n.info.identity_key not in holders)

            # download from 1 holder: the others stop serving (their copies are moved aside for the run)
            from overlay_node.services.content_fetch import fetch

            hidden = []
            for key in holders[1:]:
                holder = by_key[key]
                path = holder.content.blobs.path(bytes.fromhex(item.hash))
                path.rename(path.with_suffix(".away"))
                hidden.append(path)
            producer_path = producer.content.blobs.path(bytes.fromhex(item.hash))
            producer_path.rename(producer_path.with_suffix(".away"))
            hidden.append(producer_path)
            target = root / "one.bin"
            started = time.perf_counter()
            await fetch(reader.content, item.hash, target)
            out["download_1_holder_mb_s"] = round(item.size / (time.perf_counter() - started) / 1e6, 1)
            for path in hidden:
                path.with_suffix(".away").rename(path)
            target.unlink()
            started = time.perf_counter()
            result = await fetch(reader.content, item.hash, root / "three.bin")
            out["download_3_holders_mb_s"] = round(item.size / (time.perf_counter() - started) / 1e6, 1)
            out["holders_used"] = len(result.holders_used)

            # gateway: 1 MiB objects
            small = root / "small.bin"
            small.write_bytes(os.urandom(MiB))
            small_item = await producer.content.publish(small, replication=0)
            latencies: list[float] = []
            url = f"/uhrp/{small_item.hash}"
            async with httpx.AsyncClient(base_url=producer.info.http, limits=httpx.Limits(max_connections=16)) as c:

                async def client(n: int) -> None:
                    for _ in range(n):
                        t0 = time.perf_counter()
                        r = await c.get(url)
                        latencies.append(time.perf_counter() - t0)
                        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == small_item.hash

                started = time.perf_counter()
                async with trio.open_nursery() as inner:
                    for _ in range(16):
                        inner.start_soon(client, gateway_requests // 16)
                total = time.perf_counter() - started
            out["gateway_req_s_1mib"] = round(len(latencies) / total, 1)
            out["gateway_p95_ms_1mib"] = round(statistics.quantiles(latencies, n=20)[18] * 1000, 2)
            for node in nodes:
                node.request_shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--gateway-requests", type=int, default=400)
    args = parser.parse_args()
    figures = trio.run(bench, args.size_mib, args.gateway_requests)
    figures["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    targets = {
        "replication_mb_s": ">= 100",
        "download_1_holder_mb_s": ">= 100",
        "download_3_holders_mb_s": ">= 100",
        "gateway_req_s_1mib": ">= 1000 (small objects)",
        "gateway_p95_ms_1mib": "< 20",
    }
    print(f"{'figure':<28} {'value':>10}  target")
    for key, target in targets.items():
        print(f"{key:<28} {figures[key]:>10}  {target}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
