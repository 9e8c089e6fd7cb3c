"""One table of every benchmark figure against its target, from the JSON files the benchmarks save.

Run from the repository root (``make bench`` runs it last)::

    .venv/bin/python bench/summary.py [--results bench/results] [--out bench/results/summary.md]

``make bench`` runs every benchmark three times and keeps each round's JSON files in ``bench/results/runs/<round>/``;
a figure's value here is the median over the rounds that have it, and its spread the lowest and highest of them
(figures a benchmark already reports as a median over its own rounds, such as the link throughput, take that
median from each run). Without ``runs/`` the single files in ``bench/results/`` are read: one run, no spread. A
figure no run recorded shows as missing. The table is printed and saved as Markdown; the exit status is 0 either
way (figures are for reading: the machine is shared and its load shows in them).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

Extract = Callable[[dict[str, dict[str, Any]]], float | None]


@dataclass(frozen=True)
class Target:
    """One figure: where it comes from, its unit, and the bound it must meet."""

    name: str
    bench: str
    unit: str
    #: ">=" or "<"
    op: str
    bound: float
    extract: Extract


def _path(bench: str, *keys: str) -> Extract:
    """The value at ``keys`` in ``bench``'s JSON (``None`` if any step is missing)."""

    def get(files: dict[str, dict[str, Any]]) -> float | None:
        node: Any = files.get(bench)
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None

    return get


def _engine_ratio(files: dict[str, dict[str, Any]]) -> float | None:
    """Our submit rate over the reference's at one client, in a run with ``--with-reference``."""
    ours = _path("bench_engine", "summary", "submitConc1", "ours", "perSec", "median")(files)
    ref = _path("bench_engine", "summary", "submitConc1", "reference", "perSec", "median")(files)
    return ours / ref if ours is not None and ref else None


TARGETS: tuple[Target, ...] = (
    Target(
        "streams W=1, 1 subscriber",
        "bench_streams",
        "paid packets/s",
        ">=",
        2_000,
        _path("bench_streams", "w1_1", "paid_packets_per_s"),
    ),
    Target(
        "streams W=100, 1 subscriber",
        "bench_streams",
        "paid packets/s",
        ">=",
        20_000,
        _path("bench_streams", "w100_1", "paid_packets_per_s"),
    ),
    Target(
        "stream packet latency p99 at 1,000 packets/s",
        "bench_streams",
        "ms",
        "<",
        5,
        _path("bench_streams", "latency", "p99_ms"),
    ),
    Target(
        "payee verified+recorded payments/s per core",
        "bench_payments",
        "payments/s",
        ">=",
        3_000,
        _path("bench_payments", "payee", "per_core"),
    ),
    Target(
        "end-to-end payments/s, 16 payers",
        "bench_payments",
        "payments/s",
        ">=",
        1_000,
        _path("bench_payments", "e2e", "per_s"),
    ),
    Target(
        "DHT lookup of all hosts p95 (30 nodes, 3 processes)",
        "bench_dht",
        "ms",
        "<",
        10,
        _path("bench_dht", "lookup_all_hosts", "serial_ms", "p95"),
    ),
    Target(
        "authenticated 1 KiB frames/s",
        "bench_links",
        "frames/s",
        ">=",
        15_000,
        _path("bench_links", "one_way", "auth_frames_per_s", "median"),
    ),
    Target(
        "authenticated / plain websocket frames",
        "bench_links",
        "ratio",
        ">=",
        0.5,
        _path("bench_links", "one_way", "ratio", "median"),
    ),
    Target("link RTT p99", "bench_links", "ms", "<", 2, _path("bench_links", "rtt_auth", "p99_ms")),
    Target(
        "download start with 2 of 3 holders dead",
        "bench_content",
        "s",
        "<",
        0.5,
        _path("bench_content", "dead_first_chunk_s"),
    ),
    Target("overlay engine submit vs the reference, 1 client", "bench_engine", "x reference", ">=", 5, _engine_ratio),
    *(
        Target(
            f"5 daemons: `{op}` p95 through the control API",
            "bench_scenarios",
            "ms",
            "<",
            500,
            _path("bench_scenarios", "latency", op, "p95_ms"),
        )
        for op in ("discover", "search", "quote", "pay", "access")
    ),
    Target(
        "5 daemons: payments/s, all paying each other",
        "bench_scenarios",
        "payments/s",
        ">=",
        100,
        _path("bench_scenarios", "payments", "per_s"),
    ),
    Target(
        "5 daemons: content accesses/s, free and priced",
        "bench_scenarios",
        "accesses/s",
        ">=",
        50,
        _path("bench_scenarios", "access", "per_s"),
    ),
    Target(
        "5 daemons: stream push -> receipt p95, W=10",
        "bench_scenarios",
        "ms",
        "<",
        100,
        _path("bench_scenarios", "stream", "p95_ms"),
    ),
    Target(
        "5 daemons: new advert seen by direct peers p95",
        "bench_scenarios",
        "ms",
        "<",
        200,
        _path("bench_scenarios", "adverts", "p95_ms"),
    ),
    Target(
        "5 daemons: success rate, all operations",
        "bench_scenarios",
        "%",
        ">=",
        99,
        _path("bench_scenarios", "success", "success_percent"),
    ),
)


def load_runs(results: Path) -> list[dict[str, dict[str, Any]]]:
    """Each run as ``{bench name: its JSON}``: the rounds under ``runs/``, else the files in ``results`` as one."""
    rounds = sorted(p for p in (results / "runs").glob("*") if p.is_dir()) if (results / "runs").is_dir() else []
    dirs = rounds or [results]
    runs = []
    for directory in dirs:
        files: dict[str, dict[str, Any]] = {}
        for path in sorted(directory.glob("bench_*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                files[path.stem] = data
        runs.append(files)
    return runs


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(runs: list[dict[str, dict[str, Any]]], source: str) -> str:
    """The Markdown table of every target over ``runs``."""
    lines = [
        "# Benchmark summary",
        "",
        f"{len(runs)} run(s) of each benchmark ({source}); value: the median over the runs, spread: lowest .. "
        "highest, n: runs that recorded the figure.",
        "",
        "| figure | bench | value | spread | n | target | met |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for t in TARGETS:
        values = [v for v in (t.extract(run) for run in runs) if v is not None]
        target = f"{t.op} {_fmt(t.bound)} {t.unit}"
        if not values:
            lines.append(f"| {t.name} | {t.bench} | missing | | 0 | {target} | ? |")
            continue
        median = statistics.median(values)
        met = median >= t.bound if t.op == ">=" else median < t.bound
        spread = f"{_fmt(min(values))} .. {_fmt(max(values))}" if len(values) > 1 else "(one run)"
        lines.append(
            f"| {t.name} | {t.bench} | {_fmt(median)} {t.unit} | {spread} | {len(values)} | {target} | "
            f"{'yes' if met else 'NO'} |"
        )
    lines += [
        "",
        "Notes: the engine ratio needs a `bench_engine.py --with-reference` run (`make bench` runs it without, as "
        "the reference needs node and npm); the figures depend on the machine's load while they ran (each bench's "
        "JSON records it).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=None, help="default: <results>/summary.md")
    args = parser.parse_args()
    runs = load_runs(args.results)
    source = "bench/results/runs/*" if (args.results / "runs").is_dir() else "the single files in bench/results"
    text = table(runs, source)
    out = args.out or args.results / "summary.md"
    out.write_text(text)
    print(text, end="")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
