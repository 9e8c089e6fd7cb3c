"""bench/summary.py reads the benchmarks' JSON files as they are saved: every target's keys exist in a real bench's
file, and a bench saved after ``make bench``'s rounds (or never in them) is read from its own file, not shown as
missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.conftest import bench_module

ROOT = Path(__file__).resolve().parents[2]


def _summary() -> ModuleType:
    return bench_module("summary.py")


SCENARIOS = {
    "latency": {op: {"n": 50, "p95_ms": 30.0} for op in ("discover", "search", "quote", "pay", "access")},
    "payments": {"per_s": 120.0},
    "access": {"per_s": 80.0},
    "stream": {"n": 100, "p95_ms": 40.0},
    "adverts": {"n": 8, "p95_ms": 20.0},
    "success": {"success_percent": 100.0},
}


def _scenario_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if "| bench_scenarios |" in line and line.startswith("| 5 daemons")]


def test_bench_run_alone_after_the_rounds_is_read(tmp_path: Path) -> None:
    summary = _summary()
    results = tmp_path / "results"
    for round_ in ("1", "2"):  # make bench's rounds, from before bench_scenarios.py existed
        (results / "runs" / round_).mkdir(parents=True)
        (results / "runs" / round_ / "bench_links.json").write_text(json.dumps({"rtt_auth": {"p99_ms": 0.4}}))
    (results / "bench_links.json").write_text((results / "runs" / "2" / "bench_links.json").read_text())
    (results / "bench_scenarios.json").write_text(json.dumps(SCENARIOS))  # run alone afterwards
    runs, sources = summary.load_runs(results)
    text = summary.table(runs, sources, results)
    rows = _scenario_rows(text)
    assert len(rows) == 10
    assert not [row for row in rows if "missing" in row], text
    assert "| 5 daemons: payments/s, all paying each other | bench_scenarios | 120 payments/s | (one run) | 1 |" in text
    assert "| link RTT p99 | bench_links | 0.400 ms | 0.400 .. 0.400 | 2 |" in text  # the rounds, not the copy
    assert sources == {
        "bench_links": "2 round(s) in runs/",
        "bench_scenarios": "bench_scenarios.json (after the rounds in runs/)",
    }


def test_a_bench_with_no_file_says_which_script_makes_it(tmp_path: Path) -> None:
    summary = _summary()
    runs, sources = summary.load_runs(tmp_path)
    text = summary.table(runs, sources, tmp_path)
    assert "missing (no bench_scenarios.json: run bench/bench_scenarios.py)" in text


def test_every_scenarios_target_reads_a_key_the_bench_writes() -> None:
    """The keys summary.py reads are the ones bench_scenarios.py's table prints from (one source of truth each)."""
    summary = _summary()
    scenarios = [t for t in summary.TARGETS if t.bench == "bench_scenarios"]
    assert len(scenarios) == 10
    assert all(t.extract({"bench_scenarios": SCENARIOS}) is not None for t in scenarios)
    source = (ROOT / "bench" / "bench_scenarios.py").read_text()
    for key in ("latency", "payments", "access", "stream", "adverts", "success"):
        assert f'results["{key}"]' in source


def test_summary_script_runs_on_a_results_dir(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench_scenarios.json").write_text(json.dumps(SCENARIOS))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "summary.py"), "--results", str(results)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert len(_scenario_rows(done.stdout)) == 10
    assert "missing |" not in "\n".join(_scenario_rows(done.stdout))
    assert (results / "summary.md").read_text() in done.stdout
