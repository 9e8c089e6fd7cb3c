"""Fixtures shared by every test level: data dirs and in-process nodes on 127.0.0.1 with port 0."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
import trio.testing

from overlay_node.config import Config, load_config, starter_config_text
from overlay_node.datadir import DataDir
from overlay_node.node import Node

NodeFactory = Callable[..., Awaitable[Node]]

ROOT = Path(__file__).resolve().parents[1]


def bench_module(filename: str) -> ModuleType:
    """A script of ``bench/`` imported as a module (``bench/`` is no package), under the name ``bench_<stem>``."""
    stem = filename.removesuffix(".py")
    spec = importlib.util.spec_from_file_location(f"bench_{stem}", ROOT / "bench" / filename)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class MovableClock:
    """A wall clock for the nodes of a test (``start_node(..., wall_clock=clock)``), moved forward to expire signed
    times (records, quotes) without waiting: ``clock.offset += 1.2``."""

    def __init__(self) -> None:
        import time

        self.offset = 0.0
        self._time: Callable[[], float] = time.time

    def __call__(self) -> float:
        return self._time() + self.offset


async def runs_without_yielding(burst: Callable[[], Awaitable[None]]) -> bool:
    """Whether ``burst`` ran to its end without a schedule point: a task started just before it had not run yet."""
    others_ran = 0

    async def other() -> None:
        nonlocal others_ran
        others_ran += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await burst()
        unyielding = others_ran == 0
    assert others_ran == 1
    return unyielding


@pytest.fixture
def virtual_clock() -> trio.testing.MockClock:
    """The test's trio clock: it runs at the real rate (timeouts and waits on real sockets behave as usual) and the
    test jumps it forward instead of sleeping. Not autojump: with real sockets and worker threads in the test, an
    idle event loop does not mean that nothing will happen, and autojump would fire timeouts early."""
    return trio.testing.MockClock(rate=1.0)


def test_config(**overrides: Any) -> Config:
    """A config for tests: loopback, free ports, short timeouts."""
    base: dict[str, Any] = {
        "swarm.host": "127.0.0.1",
        "swarm.port": 0,
        "http.port": 0,
        "dht.host": "127.0.0.1",
        "dht.port": 0,
        "node.shutdown_grace": 2.0,
    }
    base.update(overrides)
    return load_config(env={}, overrides=base)


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def new_data_dir(root: Path, name: str) -> DataDir:
    dd = DataDir(root / name)
    dd.init(config_text=starter_config_text())
    return dd


@pytest.fixture
async def start_node(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[NodeFactory]:
    """Start nodes in the test's nursery: ``node = await start_node("a", **config_overrides)``."""
    nodes: list[Node] = []

    async def factory(name: str = "node", *, wall_clock: Callable[[], float] | None = None, **overrides: Any) -> Node:
        config = test_config(**overrides)
        data_dir = new_data_dir(tmp_path, name)
        node = Node(data_dir, config) if wall_clock is None else Node(data_dir, config, wall_clock=wall_clock)
        await nursery.start(node.run)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.request_shutdown()
    with trio.fail_after(10):
        for node in nodes:
            await node.wait_stopped()
