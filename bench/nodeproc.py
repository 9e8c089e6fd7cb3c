"""Hosts for benchmark nodes: a separate OS process with its own trio loop (as separate daemons would run), or the
benchmark's own loop. Both run the same operations, so a benchmark is written once and runs either way.

A host starts one or more nodes, each built from a :class:`NodeSpec` (data-dir root, name, config overrides on top
of :data:`LOOPBACK`), or none (its operations then build what they measure themselves, as ``bench_links.py``'s
bare peer managers; ``overlay_node.node`` is imported only when a node starts), and then runs the operations the
benchmark sends it, one at a time, through an *op function* the benchmark supplies::

    async def ops(host: Host, op: str, args: list[Any]) -> Any: ...

An operation may start tasks that outlive it in ``host.nursery`` and keep values for later operations in
``host.state`` (for example: subscribe and start readers, answer "ready"; a later operation waits for the readers).
The nodes of a host are described once at start by a *describe function* (``Node -> dict``); the descriptions are
``host.infos`` (``host.info`` for the first node). A process host with nodes settles its heap once they are ready
(``node.settle_heap``), as ``overlay-node run`` does.

In a process host the op and describe functions travel to the child by reference (the ``spawn`` start method
re-imports them there), so they must be module-level functions, or their dotted names (``"module:function"`` or
``"module.function"``). Arguments and results must be picklable. Operations on one host are sequential; different
hosts run in parallel.

Profiling: with ``OVERLAY_BENCH_PROFILE=DIR`` in the environment, each process host runs under ``cProfile`` (its
main thread, where the nodes' trio loop runs) and writes ``DIR/<first node's name>.prof`` when it stops (read it
with ``python -m pstats``).

With ``OVERLAY_BENCH_PROFILE_WINDOW=DIR``, each process host profiles its main thread only between two
``"thread_cpu"`` ops (the window a benchmark measures), written to ``DIR/<first node's name>.window.prof``.

Every process host also answers the op ``"thread_cpu"`` itself (:data:`THREAD_CPU_OP`): the CPU seconds of its
threads so far, by thread name (the trio loop's ``MainThread``, each store's writer, worker threads), so that a
benchmark can say where a process's CPU goes.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import trio

from overlay_node.config import load_config, starter_config_text
from overlay_node.datadir import DataDir

if TYPE_CHECKING:  # imported when a node starts: a host without nodes (bench_links.py) needs none of it
    from overlay_node.node import Node

#: Config every benchmark node starts from: loopback addresses, ports chosen by the system.
LOOPBACK: dict[str, Any] = {
    "swarm.host": "127.0.0.1",
    "swarm.port": 0,
    "http.port": 0,
    "dht.host": "127.0.0.1",
    "dht.port": 0,
}


class NodeSpec(NamedTuple):
    """One node to start: its data dir is ``root / name`` (created), its config ``LOOPBACK | overrides``."""

    root: str
    name: str
    overrides: dict[str, Any]


@dataclass
class Host:
    """What an operation sees: the host's nodes (in spec order), a nursery for tasks that outlive an operation
    (cancelled when the host stops), and a dict kept between operations."""

    nodes: list[Node]
    nursery: trio.Nursery
    state: dict[str, Any] = field(default_factory=dict)


OpFunction = Callable[[Host, str, list[Any]], Awaitable[Any]]
DescribeFunction = Callable[["Node"], dict[str, Any]]


class NodeHost(Protocol):
    """What the benchmark holds: a process host or a local host."""

    infos: list[dict[str, Any]]

    @property
    def info(self) -> dict[str, Any]: ...

    async def call(self, op: str, *args: Any) -> Any: ...

    async def stop(self) -> None: ...

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) of the process the nodes run in, so far."""
        ...


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, all its threads (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_cpu_seconds() -> dict[str, float]:
    """The machine's CPU seconds so far, all CPUs together (Linux ``/proc/stat``; empty elsewhere): ``busy``
    (everything but idle and I/O wait, interrupts included) and ``steal`` (time a virtual machine's CPUs waited
    for the host)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return {}
    if first[0] != "cpu":
        return {}
    ticks = [int(v) for v in first[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    hz = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / hz, "steal": steal / hz}


#: the op every process host answers itself (before the benchmark's op function): :func:`thread_cpu_seconds`
THREAD_CPU_OP = "thread_cpu"


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of this process's live threads so far, summed by thread name with the digits
    left out ("Trio thread 3" counts as "Trio thread"); Linux ``/proc``, empty elsewhere. Threads that ended are
    not counted: compare it with :meth:`NodeHost.cpu_seconds` over the same span."""
    import re
    import threading

    hz = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except (OSError, TypeError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = re.sub(r"\s*\d+$", "", thread.name) or "thread"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / hz
    return out


async def start_node(nursery: trio.Nursery, spec: NodeSpec) -> Node:
    """Create the spec's data dir and run its node in ``nursery``; returns once the node is ready."""
    from overlay_node.node import Node

    dd = DataDir(Path(spec.root) / spec.name)
    dd.init(config_text=starter_config_text())
    node = Node(dd, load_config(env={}, overrides=LOOPBACK | spec.overrides))
    await nursery.start(node.run)
    return node


def _resolve(ref: Callable[..., Any] | str) -> Callable[..., Any]:
    if not isinstance(ref, str):
        return ref
    module, sep, name = ref.partition(":")
    if not sep:
        module, _, name = ref.rpartition(".")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise TypeError(f"{ref} is not callable")
    return fn  # type: ignore[no-any-return]


async def _task_nursery(*, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
    """Hands back a nursery for the operations' own tasks; it lives until its cancel scope is cancelled."""
    async with trio.open_nursery() as tasks:
        task_status.started(tasks)
        await trio.sleep_forever()


# -- a host in its own process ------------------------------------------------------------------------------------


class _Window:
    """``OVERLAY_BENCH_PROFILE_WINDOW=DIR``: a cProfile of the host's main thread between two ``thread_cpu`` ops (a
    benchmark asks for them right before and right after what it measures), written to ``DIR/<name>.window.prof``
    at the second; again for each later pair (the file is overwritten)."""

    def __init__(self, folder: str | None, name: str) -> None:
        self._path = os.path.join(folder, name + ".window.prof") if folder else None
        self._prof: Any = None

    def toggle(self) -> None:
        if self._path is None:
            return
        if self._prof is None:
            import cProfile  # only when asked

            self._prof = cProfile.Profile()
            self._prof.enable()
            return
        self._prof.disable()
        self._prof.dump_stats(self._path)
        self._prof = None


def _serve(
    specs: list[NodeSpec],
    ops_ref: OpFunction | str,
    describe_ref: DescribeFunction | str,
    conn: Connection,
    log_level: int | None,
) -> None:
    """The child process: start the nodes, send their descriptions, then run operations until ``stop``."""
    if log_level is not None:
        logging.basicConfig(level=log_level)
    ops = _resolve(ops_ref)
    describe = _resolve(describe_ref)
    window = _Window(os.environ.get("OVERLAY_BENCH_PROFILE_WINDOW"), specs[0].name if specs else f"host-{os.getpid()}")

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nodes = [await start_node(nursery, spec) for spec in specs]
            tasks: trio.Nursery = await nursery.start(_task_nursery)
            host = Host(nodes=nodes, nursery=tasks)
            if nodes:  # a process of its own, as a daemon's: what `overlay-node run` does once its node is ready
                from overlay_node.node import settle_heap

                settle_heap()
            conn.send([describe(node) for node in nodes])
            while True:
                op, args = await trio.to_thread.run_sync(conn.recv)
                if op == "stop":
                    break
                if op == THREAD_CPU_OP:
                    conn.send(("ok", thread_cpu_seconds()))
                    window.toggle()
                    continue
                try:
                    conn.send(("ok", await ops(host, op, args)))
                except Exception as exc:  # noqa: BLE001 -- any op failure goes to the benchmark, which stops
                    conn.send(("error", repr(exc)))
            tasks.cancel_scope.cancel()
            for node in nodes:
                node.request_shutdown()

    if os.environ.get("OVERLAY_BENCH_PROFILE"):
        import cProfile  # only when asked

        prof = cProfile.Profile()
        prof.enable()
        trio.run(run)
        prof.disable()
        name = specs[0].name if specs else f"host-{os.getpid()}"  # a host may run no nodes (bench_links.py)
        prof.dump_stats(os.path.join(os.environ["OVERLAY_BENCH_PROFILE"], name + ".prof"))
        return
    trio.run(run)


class NodeProcess:
    """A host in its own OS process (``spawn``), driven over a pipe.

    The constructor blocks until the nodes are ready: call it through ``trio.to_thread.run_sync`` (or use
    :func:`open_host`).
    """

    def __init__(
        self,
        specs: list[NodeSpec],
        ops: OpFunction | str,
        describe: DescribeFunction | str,
        *,
        log_level: int | None = None,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(specs, ops, describe, child, log_level), daemon=True)
        self._proc.start()
        child.close()  # so that a child that dies shows here as EOFError instead of a hang
        try:
            self.infos: list[dict[str, Any]] = self._conn.recv()
        except EOFError:
            self._proc.join()
            raise RuntimeError(f"the node process failed to start (exit status {self._proc.exitcode})") from None

    @property
    def info(self) -> dict[str, Any]:
        return self.infos[0]

    async def call(self, op: str, *args: Any) -> Any:
        """Run ``op`` in the process; returns its result. Raises RuntimeError if it raised there."""

        def roundtrip() -> Any:
            self._conn.send((op, list(args)))
            return self._conn.recv()

        status, value = await trio.to_thread.run_sync(roundtrip)
        if status != "ok":
            raise RuntimeError(f"{op} failed in node process: {value}")
        return value

    def stop_blocking(self) -> None:
        """Stop the nodes and wait (up to 30 s) for the process to end."""
        try:
            self._conn.send(("stop", []))
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(timeout=30)
        self._conn.close()

    async def stop(self) -> None:
        await trio.to_thread.run_sync(self.stop_blocking)

    def cpu_seconds(self) -> float:
        return 0.0 if self._proc.pid is None else process_cpu_seconds(self._proc.pid)


# -- a host in the benchmark's loop -------------------------------------------------------------------------------


class LocalHost:
    """A host in the benchmark's own trio loop (same operations, no process boundary). Use :meth:`open`."""

    def __init__(self, host: Host, ops: OpFunction, describe: DescribeFunction) -> None:
        self._host = host
        self._ops = ops
        self.infos = [describe(node) for node in host.nodes]

    @classmethod
    async def open(
        cls,
        nursery: trio.Nursery,
        specs: list[NodeSpec],
        ops: OpFunction | str,
        describe: DescribeFunction | str,
    ) -> LocalHost:
        """Start the nodes in ``nursery`` (they run until :meth:`stop`)."""
        nodes = [await start_node(nursery, spec) for spec in specs]
        tasks: trio.Nursery = await nursery.start(_task_nursery)
        return cls(Host(nodes=nodes, nursery=tasks), _resolve(ops), _resolve(describe))

    @property
    def info(self) -> dict[str, Any]:
        return self.infos[0]

    @property
    def nodes(self) -> list[Node]:
        return self._host.nodes

    async def call(self, op: str, *args: Any) -> Any:
        return await self._ops(self._host, op, list(args))

    async def stop(self) -> None:
        self._host.nursery.cancel_scope.cancel()
        for node in self._host.nodes:
            node.request_shutdown()

    def cpu_seconds(self) -> float:
        """The benchmark's own process (every local host shares it)."""
        return process_cpu_seconds(os.getpid())


async def open_host(
    nursery: trio.Nursery,
    specs: list[NodeSpec],
    ops: OpFunction | str,
    describe: DescribeFunction | str,
    *,
    in_process: bool,
    log_level: int | None = None,
) -> NodeHost:
    """Start a host: in this loop (``in_process``, nodes run in ``nursery``) or in its own process.

    Args:
        nursery: where local nodes run (unused for a process host).
        specs: the nodes, started one after the other.
        ops: the op function (see the module doc), or its dotted name.
        describe: ``Node -> dict`` for :attr:`NodeHost.infos`, or its dotted name.
        in_process: run in the benchmark's loop instead of a new process.
        log_level: for a process host, ``logging.basicConfig`` level in the child (None: left alone).
    """
    if in_process:
        return await LocalHost.open(nursery, specs, ops, describe)
    return await trio.to_thread.run_sync(lambda: NodeProcess(specs, ops, describe, log_level=log_level))
