"""A-B comparison of benchmark figures: the working tree (B) against a base commit (A), or one tree under two
environments, run in A-B-B-A order so that a machine whose speed drifts over minutes hits both sides alike.

Run from the repository root::

    .venv/bin/python bench/ab.py [--base REV] [--rounds 4] [--env-a K=V]... [--env-b K=V]...
        --figure LABEL[@N]... -- bench_streams.py --w1-only --w1-packets 8000

Each round runs the bench four times (A, B, B, A). With ``--base``, side A runs from a detached ``git worktree`` of
that commit (made in a temporary directory, removed at the end) and side B from this checkout; without it both run
from this checkout, told apart by ``--env-a`` / ``--env-b`` only. Every run gets ``PYTHONPATH`` set to its own
checkout, so the processes a bench starts (node hosts, the devnet ledger) import that side's ``overlay_node``.

A figure is read from the bench's printed table: the first line that contains ``LABEL`` ending where a word ends
(``W=1`` is not found in ``W=100``); its value is the first number after the label (``@N``: the N-th, from 1:
``"CPU ms per payment: producer@2"`` is the subscriber's). A run that fails or prints no such line is reported and
left out of that figure.

Printed per figure: each side's runs, mean, median, min-max, B / A of the means, and in how many rounds B's two runs
summed higher than A's (a figure better when lower reads the other way). Saved as ``bench/results/ab.json``.
Nothing here decides what is a gain: with this project's 2-core virtual machines, runs of one commit spread by a
tenth and more, so a difference of a few percent needs many rounds, and the rounds' count is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from results_io import save  # noqa: E402  # bench/ is on sys.path as a script

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
#: the order of the four runs of a round (``A-B-B-A``)
ORDER = ("A", "B", "B", "A")


@dataclass(frozen=True)
class Figure:
    """A figure to read from a bench's output: the first line containing ``label``, its ``index``-th number after
    the label (from 1)."""

    label: str
    index: int = 1

    @property
    def key(self) -> str:
        """The figure as it was asked for (``LABEL`` or ``LABEL@N``): its key in the results."""
        return self.label if self.index == 1 else f"{self.label}@{self.index}"

    @classmethod
    def parse(cls, spec: str) -> Figure:
        label, at, index = spec.rpartition("@")
        if at and index.isdigit() and int(index) >= 1 and label:
            return cls(label, int(index))
        return cls(spec)

    def read(self, output: str) -> float | None:
        """The figure in a bench's printed output, or None when no line has the label or too few numbers. The label
        must end where a word ends: ``W=1`` is not read from a line of ``W=100``."""
        for line in output.splitlines():
            at = line.find(self.label)
            while at >= 0:
                end = at + len(self.label)
                if end == len(line) or not (line[end].isalnum() and line[end - 1].isalnum()):
                    numbers = _NUMBER.findall(line[end:])
                    return float(numbers[self.index - 1]) if len(numbers) >= self.index else None
                at = line.find(self.label, at + 1)
        return None


@dataclass
class Side:
    """The values one side's runs gave for one figure, in run order."""

    values: list[float] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        v = self.values
        if not v:
            return {"n": 0}
        return {
            "n": len(v),
            "mean": statistics.fmean(v),
            "median": statistics.median(v),
            "min": min(v),
            "max": max(v),
            "values": v,
        }


def compare(rounds: list[dict[str, list[float | None]]]) -> dict[str, Any]:
    """One figure over the rounds (each round: ``{"A": [two values], "B": [two values]}``, a value None where the run
    gave none): each side's statistics, B / A of the means, and the rounds in which B's sum was higher (only rounds
    where all four runs gave a value count)."""
    a, b = Side(), Side()
    higher = counted = 0
    for r in rounds:
        a.values += [x for x in r["A"] if x is not None]
        b.values += [x for x in r["B"] if x is not None]
        if None not in r["A"] and None not in r["B"]:
            counted += 1
            higher += sum(x for x in r["B"] if x is not None) > sum(x for x in r["A"] if x is not None)
    out: dict[str, Any] = {"A": a.stats(), "B": b.stats(), "rounds_b_higher": higher, "rounds_counted": counted}
    if a.values and b.values and statistics.fmean(a.values):
        out["ratio_b_a"] = statistics.fmean(b.values) / statistics.fmean(a.values)
    return out


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise SystemExit(f"ab.py: --env-a/--env-b take KEY=VALUE, not {pair!r}")
        env[key] = value
    return env


def _run(checkout: Path, bench: list[str], env: dict[str, str]) -> tuple[str, int, float]:
    """Run one bench from ``checkout``: (its output, exit status, seconds)."""
    full = {**os.environ, **env, "PYTHONPATH": str(checkout)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(checkout / "bench" / bench[0]), *bench[1:]],
        cwd=checkout,
        env=full,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout + done.stderr, done.returncode, time.monotonic() - started


def _worktree(rev: str, where: Path) -> Path:
    path = where / "base"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(path), rev], cwd=ROOT, check=True, capture_output=True
    )
    return path


def _drop_worktree(path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False, capture_output=True)


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def report(figures: list[Figure], results: dict[str, dict[str, Any]]) -> str:
    """The printed table: one block per figure."""
    lines = []
    for fig in figures:
        r = results[fig.key]
        lines.append(fig.label + ("" if fig.index == 1 else f" (number {fig.index})"))
        for side in ("A", "B"):
            s = r[side]
            if not s["n"]:
                lines.append(f"  {side}: no value")
                continue
            values = " ".join(_fmt(v) for v in s["values"])
            lines.append(
                f"  {side}: mean {_fmt(s['mean'])}  median {_fmt(s['median'])}  "
                f"{_fmt(s['min'])}-{_fmt(s['max'])}  (n={s['n']}: {values})"
            )
        if "ratio_b_a" in r:
            lines.append(
                f"  B / A of the means {r['ratio_b_a']:.3f}; B higher in {r['rounds_b_higher']} of "
                f"{r['rounds_counted']} rounds"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="side A's commit (default: this checkout, for --env-a/--env-b)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of A-B-B-A")
    parser.add_argument("--env-a", action="append", default=[], metavar="K=V", help="environment of side A's runs")
    parser.add_argument("--env-b", action="append", default=[], metavar="K=V", help="environment of side B's runs")
    parser.add_argument("--figure", action="append", required=True, metavar="LABEL[@N]", help="a figure to compare")
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="-- BENCH.py [its arguments]")
    args = parser.parse_args()
    bench = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if not bench or not (ROOT / "bench" / bench[0]).is_file():
        parser.error("name a bench of bench/ after --, e.g. -- bench_dht.py")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.base is None and args.env_a == args.env_b:
        parser.error("without --base, the two sides differ only by --env-a/--env-b: give one")
    figures = [Figure.parse(spec) for spec in args.figure]
    envs = {"A": _env_pairs(args.env_a), "B": _env_pairs(args.env_b)}

    with tempfile.TemporaryDirectory(prefix="overlay-ab-") as tmp:
        checkouts = {"A": _worktree(args.base, Path(tmp)) if args.base else ROOT, "B": ROOT}
        try:
            per_figure: dict[str, list[dict[str, list[float | None]]]] = {}
            runs: list[dict[str, Any]] = []
            for n in range(1, args.rounds + 1):
                got: dict[str, dict[str, list[float | None]]] = {}
                for side in ORDER:
                    output, status, seconds = _run(checkouts[side], bench, envs[side])
                    values = [fig.read(output) if status == 0 else None for fig in figures]
                    runs.append({"round": n, "side": side, "status": status, "seconds": seconds, "values": values})
                    shown = " ".join("-" if v is None else _fmt(v) for v in values)
                    note = "" if status == 0 else f"  (exit {status}: {output.strip().splitlines()[-1:]})"
                    print(f"round {n} {side}: {shown}  [{seconds:.0f} s]{note}", flush=True)
                    for fig, value in zip(figures, values, strict=True):
                        got.setdefault(fig.key, {"A": [], "B": []})[side].append(value)
                for key, sides in got.items():
                    per_figure.setdefault(key, []).append(sides)
        finally:
            if args.base:
                _drop_worktree(checkouts["A"])

    results = {fig.key: compare(per_figure[fig.key]) for fig in figures}
    print()
    print(report(figures, results))
    save(
        ROOT / "bench" / "results" / "ab.json",
        {"base": args.base, "env_a": envs["A"], "env_b": envs["B"], "bench": bench, "runs": runs, "figures": results},
    )


if __name__ == "__main__":
    main()
