"""The fuzz tests' shared report. These tests are collected only by ``make fuzz`` (the ``fuzz`` marker, deselected
by the default ``addopts``); ``FUZZ_SECONDS`` is each surface's time budget."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .runner import RESULTS, FuzzReport


@pytest.fixture(scope="session")
def fuzz_report() -> Iterator[FuzzReport]:
    report = FuzzReport()
    yield report
    if report.surfaces:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        report.print_table()
