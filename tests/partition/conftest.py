"""The network namespaces of a partition test: made for the test, deleted after it (even when it fails), and the
leftovers of earlier runs that crashed removed first. Where namespaces cannot be made the tests skip, saying why."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from netns import Fabric, NetnsUnavailable, probe, remove_leftovers

#: the side of each node of the cluster: nodes 0-3 on side A, 4-6 on side B
SIDES = ("A", "A", "A", "A", "B", "B", "B")


def _fabric(sides: tuple[str, ...]) -> Iterator[Fabric]:
    try:
        probe()
    except NetnsUnavailable as exc:
        pytest.skip(f"partition tests need network namespaces: {exc}")
    remove_leftovers()
    with Fabric(sides) as made:
        yield made


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    """Seven nodes' namespaces, 4 on side A and 3 on side B."""
    yield from _fabric(SIDES)


@pytest.fixture
def pair() -> Iterator[Fabric]:
    """Two nodes' namespaces, one on each side."""
    yield from _fabric(("A", "B"))
