"""One table of every benchmark figure against its target, from the JSON files the benchmarks save.

Run from the repository root (``make bench`` runs it last)::

    .venv/bin/python bench/summary.py [--results bench/results] [--out bench/results/summary.md]

``make bench`` runs every benchmark three times and keeps each round's JSON files in ``bench/results/runs/<round>/``;
a figure's value here is the median over the rounds that have it, and its spread the lowest and highest of them
(figures a benchmark already reports as a median over its own rounds, such as the link throughput, take that
median from each run). Without ``runs/`` the single files in ``bench/results/`` are read: one run, no spread; so is
a bench whose file there is not one of the rounds' copies (it ran alone after ``make bench``). A figure no run
recorded shows as missing, and a bench with no file at all says which script makes it. Below the table, each
bench's source and when its file was saved: a table older than a file is stale. The table is printed and saved
as Markdown; the exit status is 0 either way (figures are for reading: the machine is shared and its load shows in
them).
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


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_runs(results: Path) -> tuple[list[dict[str, dict[str, Any]]], dict[str, str]]:
    """Each run as ``{bench name: its JSON}``, and where each bench's figures come from.

    A bench's figures come from the rounds under ``runs/`` that have its file, unless its file in ``results`` is not
    one of those copies (it ran alone after ``make bench``, or ``make bench`` never ran it): then from that file
    alone, as one run. Without ``runs/`` every bench is read from its file in ``results``.
    """
    runs_dir = results / "runs"
    rounds = sorted(p for p in runs_dir.glob("*") if p.is_dir()) if runs_dir.is_dir() else []
    runs: list[dict[str, dict[str, Any]]] = [{} for _ in rounds]
    sources: dict[str, str] = {}
    names = {p.stem for p in results.glob("bench_*.json")} | {p.stem for r in rounds for p in r.glob("bench_*.json")}
    for name in sorted(names):
        single = results / f"{name}.json"
        copies = [(i, r / f"{name}.json") for i, r in enumerate(rounds) if (r / f"{name}.json").is_file()]
        if copies and (not single.is_file() or any(_same(single, copy) for _, copy in copies)):
            for i, copy in copies:
                data = _read(copy)
                if data is not None:
                    runs[i][name] = data
            sources[name] = f"{len(copies)} round(s) in runs/"
            continue
        data = _read(single)
        if data is None:
            continue
        if not runs:
            runs.append({})
        runs[-1][name] = data
        sources[name] = f"{single.name}" + (" (after the rounds in runs/)" if rounds else "")
    return runs or [{}], sources


def _same(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _saved(results: Path, name: str, data: dict[str, Any] | None) -> str:
    """When and on what a bench's file was saved: its time (UTC) and the commit it records."""
    import datetime

    path = results / f"{name}.json"
    when = (
        datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        if path.is_file()
        else "?"
    )
    source = (data or {}).get("source")
    commit = source.get("commit", "?") if isinstance(source, dict) else "?"
    return f"{when}, commit {commit}"


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(runs: list[dict[str, dict[str, Any]]], sources: dict[str, str], results: Path = RESULTS) -> str:
    """The Markdown table of every target over ``runs``, then where each bench's figures come from."""
    lines = [
        "# Benchmark summary",
        "",
        "value: the median over the runs that recorded the figure, spread: lowest .. highest, n: those runs; where "
        "each bench's runs come from is listed below the table.",
        "",
        "| figure | bench | value | spread | n | target | met |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for t in TARGETS:
        values = [v for v in (t.extract(run) for run in runs) if v is not None]
        target = f"{t.op} {_fmt(t.bound)} {t.unit}"
        if not values:
            why = "missing" if t.bench in sources else f"missing (no {t.bench}.json: run bench/{t.bench}.py)"
            lines.append(f"| {t.name} | {t.bench} | {why} | | 0 | {target} | ? |")
            continue
        median = statistics.median(values)
        met = median >= t.bound if t.op == ">=" else median < t.bound
        spread = f"{_fmt(min(values))} .. {_fmt(max(values))}" if len(values) > 1 else "(one run)"
        lines.append(
            f"| {t.name} | {t.bench} | {_fmt(median)} {t.unit} | {spread} | {len(values)} | {target} | "
            f"{'yes' if met else 'NO'} |"
        )
    lines += ["", "| bench | runs from | its file in bench/results saved |", "|---|---|---|"]
    for name, source in sorted(sources.items()):
        latest = next((run[name] for run in reversed(runs) if name in run), None)
        lines.append(f"| {name} | {source} | {_saved(results, name, latest)} |")
    lines += [
        "",
        "Notes: the engine ratio needs a `bench_engine.py --with-reference` run (`make bench` runs it without, as "
        "the reference needs node and npm); the figures depend on the machine's load while they ran (each bench's "
        "JSON records it). A bench run alone after this table was saved is not in it: run `bench/summary.py` again.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=None, help="default: <results>/summary.md")
    args = parser.parse_args()
    runs, sources = load_runs(args.results)
    text = table(runs, sources, args.results)
    out = args.out or args.results / "summary.md"
    out.write_text(text)
    print(text, end="")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
