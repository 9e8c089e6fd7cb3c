"""The fuzz run: a time budget per surface (``FUZZ_SECONDS``, default 60), a hypothesis runner driven by that
budget, and the report (inputs per surface, crashes, RSS and open files) printed at the end and saved to
``bench/results/fuzz-properties.json`` (``make fuzz-properties``; ``make fuzz`` runs the fast fuzzer of
``fast.py``)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "fuzz-properties.json"


def fuzz_seconds() -> float:
    """Seconds of fuzzing per surface (``FUZZ_SECONDS``)."""
    return float(os.environ.get("FUZZ_SECONDS", "60"))


@dataclass
class Surface:
    """What the fuzz of one surface did."""

    name: str
    inputs: int = 0
    crashes: int = 0
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    failure: str = ""


@dataclass
class FuzzReport:
    """Every surface of this run, printed and saved at the end of the session."""

    surfaces: dict[str, Surface] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def surface(self, name: str) -> Surface:
        return self.surfaces.setdefault(name, Surface(name))

    def as_dict(self) -> dict[str, Any]:
        return {
            "fuzz_seconds": fuzz_seconds(),
            "python": platform.python_version(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "total_inputs": sum(s.inputs for s in self.surfaces.values()),
            "total_crashes": sum(s.crashes for s in self.surfaces.values()),
            "surfaces": {
                s.name: {
                    "inputs": s.inputs,
                    "crashes": s.crashes,
                    "seconds": round(s.seconds, 1),
                    "inputs_per_second": round(s.inputs / s.seconds) if s.seconds else 0,
                    **({"failure": s.failure} if s.failure else {}),
                    **s.notes,
                }
                for s in self.surfaces.values()
            },
            **self.extra,
        }

    def print_table(self) -> None:
        out = sys.stdout
        out.write(f"\nfuzz: {fuzz_seconds():g} s per surface\n")
        out.write(f"{'surface':<34}{'inputs':>10}{'per s':>8}{'crashes':>9}\n")
        for s in self.surfaces.values():
            rate = round(s.inputs / s.seconds) if s.seconds else 0
            out.write(f"{s.name:<34}{s.inputs:>10}{rate:>8}{s.crashes:>9}\n")
            if s.failure:
                out.write(f"    failure: {s.failure}\n")
        for key, value in self.extra.items():
            out.write(f"{key}: {json.dumps(value)}\n")
        out.write(f"saved {RESULTS}\n")
        out.flush()


def run_property(
    report: FuzzReport,
    name: str,
    strategy: st.SearchStrategy[T],
    check: Callable[[T], None],
    *,
    seconds: float | None = None,
) -> Surface:
    """Run ``check`` on inputs from ``strategy`` for the surface's time budget.

    Hypothesis runs in batches (no example database, fresh randomness each batch) until the budget is spent; a
    failing input is shrunk by hypothesis and re-raised, and counted as the surface's crash.
    """
    surface = report.surface(name)
    budget = fuzz_seconds() if seconds is None else seconds

    def body(value: T) -> None:
        surface.inputs += 1
        check(value)

    batch = 20
    start = time.monotonic()
    end = start + budget
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            runner = settings(
                max_examples=batch,
                deadline=None,
                database=None,
                derandomize=False,
                phases=(Phase.generate, Phase.shrink),
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )(given(strategy)(body))
            began, before = time.monotonic(), surface.inputs
            runner()
            took = time.monotonic() - began
            done = surface.inputs - before
            # about two seconds per batch, never past the budget by much
            per_input = took / max(done, 1)
            batch = max(10, min(20_000, int(min(2.0, max(end - time.monotonic(), 0.1)) / max(per_input, 1e-6))))
    except Exception as exc:
        surface.crashes += 1
        surface.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        raise
    finally:
        surface.seconds += time.monotonic() - start
    return surface
