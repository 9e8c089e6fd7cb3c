"""A paid stream kept busy through the control API while the network is cut: a thread pushing packets on the
producer, and readers that remember when each packet arrived and how their subscription ended."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from tests.soak.world import World

__all__ = ["Reader", "Stream"]


@dataclass(slots=True)
class Reader:
    """One subscription, read in a thread: when each packet arrived, and how the subscription ended."""

    consumer: int
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    ended: str | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)

    def run(self, world: World, stream_id: str, producer: int) -> None:
        body = {"stream_id": stream_id, "window": 5, "max_price": 1, "producer": world.key(producer)}
        ended = None
        try:
            for event in world.stream(self.consumer, "/v1/subscribe", body):
                if "seq" in event:
                    with self.changed:
                        self.arrivals.append((time.monotonic(), int(event["seq"])))
                        self.changed.notify_all()
                elif "summary" in event or event.get("event") == "error":
                    ended = json.dumps(event)
        except Exception as exc:  # noqa: BLE001 - how the subscription ended is what the tests check
            ended = f"{type(exc).__name__}: {exc}"
        with self.changed:
            self.ended = ended or "the answer ended without a summary"
            self.changed.notify_all()

    def first_from(self, seq: int, timeout: float) -> float | None:
        """When the first packet numbered ``seq`` or later arrived, waiting for it at most ``timeout`` seconds (None:
        none came, or the subscription ended)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                later = [at for at, n in self.arrivals if n >= seq]
                if later:
                    return min(later)
                left = deadline - time.monotonic()
                if left <= 0 or self.ended is not None:
                    return None
                self.changed.wait(left)

    def between(self, start: float, end: float) -> int:
        """How many packets arrived between ``start`` and ``end``."""
        with self.changed:
            return sum(1 for at, _ in self.arrivals if start < at < end)


class Stream:
    """A per-packet stream (1 satoshi a packet) on ``producer``, fed a few packets every 0.2 s, read by each of
    ``consumers`` (funded from the faucet first). A context manager: on exit the subscriptions are stopped and the
    threads joined."""

    def __init__(self, world: World, stream_id: str, producer: int, consumers: list[int]) -> None:
        self.world = world
        self.stream_id = stream_id
        self.producer = producer
        self.readers = {c: Reader(c) for c in consumers}
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> Stream:
        world = self.world
        for consumer in self.readers:
            world.call(consumer, "POST", "/v1/wallet/faucet", {"satoshis": 200_000})
        body = {"stream_id": self.stream_id, "pricing_model": "per-packet", "rate": 1}
        world.call(self.producer, "POST", "/v1/streams", body)
        self.threads = [threading.Thread(target=self._push, name="push", daemon=True)]
        self.threads += [
            threading.Thread(target=r.run, args=(world, self.stream_id, self.producer), name=f"read{c}", daemon=True)
            for c, r in self.readers.items()
        ]
        for t in self.threads:
            t.start()
        for consumer, reader in self.readers.items():
            if reader.first_from(0, 60) is None:
                self.__exit__()
                raise AssertionError(f"node{consumer} got no packet of {self.stream_id}: {reader.ended}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for consumer in self.readers:
            try:
                self.world.call(consumer, "POST", "/v1/subscriptions/stop", {"stream_id": self.stream_id})
            except Exception:  # noqa: BLE001 - its subscription may have ended already
                pass
        for t in self.threads:
            t.join(15)

    def head(self) -> int:
        """The sequence number the producer gives its next packet: every packet from it on was pushed later."""
        return int(self.world.call(self.producer, "GET", f"/v1/streams/{self.stream_id}")["head"])

    def _push(self) -> None:
        n = 0
        path = f"/v1/streams/{self.stream_id}/push"
        while not self.stop.wait(0.2):
            packets = [json.dumps({"n": n + k}) for k in range(2)]
            try:
                self.world.call(self.producer, "POST", path, {"packets": packets}, timeout=10)
                n += 2
            except Exception:  # noqa: BLE001 - a push that fails is tried again at the next tick
                continue
