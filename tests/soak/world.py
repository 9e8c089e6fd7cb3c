"""What the soak's threads share: the cluster, which nodes are down, the records of what the nodes acknowledged,
and the tallies the final table reports. Every mutation goes through one lock."""

from __future__ import annotations

import random
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overlay_cli.client import ControlClient
from overlay_node.errors import OverlayError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from cluster import Cluster

__all__ = ["FAILURES", "ROOT", "Blob", "Cluster", "OpFailed", "Paid", "Sub", "World", "error_code", "result_of"]

ROOT = Path(__file__).resolve().parents[2]

#: what a failed operation raises: the control client's errors, a socket that went away, a malformed answer
FAILURES = (OverlayError, OSError, ValueError, KeyError, TypeError)


class OpFailed(Exception):
    """An operation ended without its result (an NDJSON error event, or no result line at all)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_code(exc: BaseException) -> str:
    """A short name for why an operation failed (the daemon's error code where there is one)."""
    code = getattr(exc, "code", None)
    return str(code) if isinstance(code, str) and code else type(exc).__name__


def result_of(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The ``result`` event of an NDJSON operation (publish, access).

    Raises:
        OpFailed: the operation answered an error event, or ended without a result.
    """
    for event in events:
        if event.get("event") == "result":
            return event
        if event.get("event") == "error":
            raise OpFailed(str(event.get("code", "error")), str(event.get("message", "")))
    raise OpFailed("truncated", "the answer ended without a result line")


@dataclass(frozen=True, slots=True)
class Blob:
    """Content a node acknowledged (its publish answered a result): the id is the SHA-256 of the bytes."""

    hash: str
    size: int
    publisher: int


@dataclass(frozen=True, slots=True)
class Paid:
    """A payment the payer's node answered with a receipt."""

    payer: int
    payee: int
    txid: str
    amount: int
    quote_id: str


@dataclass(slots=True)
class Sub:
    """One subscriber of a paid stream, over all its sessions (a session ends when a node it needs dies)."""

    stream_id: str
    producer: int
    consumer: int
    window: int
    rate: int
    seqs: set[int] = field(default_factory=set)
    sessions: int = 0
    summaries: list[dict[str, Any]] = field(default_factory=list)


class World:
    """The cluster and the soak's records; threads call :meth:`call`/:meth:`stream` and report through
    :meth:`count`, :meth:`fault` and :meth:`violation`."""

    def __init__(self, cluster: Cluster, work_dir: Path) -> None:
        self.cluster = cluster
        self.work_dir = work_dir
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.down: set[int] = set()
        self.ops: dict[str, Counter[str]] = defaultdict(Counter)
        self.faults: Counter[str] = Counter()
        self.repairs: Counter[str] = Counter()
        self.blobs: list[Blob] = []
        self.payments: list[Paid] = []
        self.subs: list[Sub] = []
        self.violations: list[dict[str, str]] = []
        self.notes: list[str] = []
        #: the first message of each (kind, error code) of failed operations
        self.samples: dict[str, str] = {}

    # -- nodes -------------------------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        return len(self.cluster.members)

    def key(self, i: int) -> str:
        return self.cluster.members[i].identity_key

    def index_of(self, identity_key: str) -> int | None:
        for i, member in enumerate(self.cluster.members):
            if member.identity_key == identity_key:
                return i
        return None

    def data_dir(self, i: int) -> Path:
        return Path(self.cluster.members[i].data_dir)

    def live(self) -> list[int]:
        with self.lock:
            return [i for i in range(self.n) if i not in self.down]

    def pick(self, rng: random.Random, count: int = 1) -> list[int] | None:
        """``count`` distinct live nodes chosen at random, or None while fewer are up."""
        live = self.live()
        if len(live) < count:
            return None
        return rng.sample(live, count)

    def call(self, i: int, method: str, path: str, body: dict[str, Any] | None = None, *, timeout: float = 60) -> Any:
        """One control API call to node ``i``."""
        with ControlClient(self.data_dir(i), timeout=timeout) as client:
            return client.call(method, path, body)

    def stream(self, i: int, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A control API call answered with NDJSON (publish, access, subscribe): its objects as they arrive."""
        client = ControlClient(self.data_dir(i))
        try:
            yield from client.stream("POST", path, body)
        finally:
            client.close()

    # -- tallies -----------------------------------------------------------------------------------------------

    def count(self, kind: str, exc: BaseException | None = None) -> None:
        """One operation of ``kind`` done (``exc`` None) or failed (with why)."""
        with self.lock:
            if exc is None:
                self.ops[kind]["ok"] += 1
            else:
                self.ops[kind]["failed"] += 1
                self.ops[kind][f"failed:{error_code(exc)}"] += 1
                self.samples.setdefault(f"{kind}: {error_code(exc)}", str(exc)[:300])

    def fault(self, kind: str) -> None:
        with self.lock:
            self.faults[kind] += 1

    def violation(self, family: str, message: str) -> None:
        """An invariant of ``family`` (content, streams, payments, wallets, restarts) broken."""
        with self.lock:
            self.violations.append({"invariant": family, "message": message})
        print(f"VIOLATION [{family}]: {message}", flush=True)

    def note(self, message: str) -> None:
        """Something worth a line in the report that breaks no invariant."""
        with self.lock:
            self.notes.append(message)
        print(f"note: {message}", flush=True)
