"""A flood of signed DHT requests from one IP (one port, then many ports) against a node of a small network, with
the default limits: the node drops what is over the IP's budget before parsing it, and honest PINGs and lookups
from 127.0.0.1 stay fast meanwhile. The attacker is its own process (``python -m tests.integration.test_floods_dht
PORT SOCKETS``) sending pre-signed PINGs as fast as it can from 127.0.0.2 until its stdin closes; it says
``flooding`` once it has sent its first thousand, so the test waits on its output, not on a clock."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from overlay_node.config import DhtSection
from overlay_node.services.dht import dht_key
from overlay_node.services.dht_rpc import RateLimit, SourceRateLimiter
from tests.integration.dht_fixtures import DhtNet, dht_net

__all__ = ["dht_net"]

ATTACKER = "127.0.0.2"
ROOT = Path(__file__).resolve().parents[2]
LIMIT = 60
ROUNDS = 20


def flood(port: int, sockets: int) -> None:
    """The attacker: signed PINGs of one key to 127.0.0.1:``port`` from ``sockets`` ports of ATTACKER."""
    import os
    import select
    import threading

    from overlay_node.crypto.keys import Identity
    from overlay_node.services.dht_rpc import Signer
    from overlay_node.wire.dht import Ping, encode, new_rpc_id

    identity = Identity.generate()
    sign = Signer(identity).sign
    datagrams = [
        encode(Ping(rpc_id=new_rpc_id()), sender_pub=identity.public_key, now=time.time(), sign=sign)
        for _ in range(500)
    ]
    socks = []
    for _ in range(sockets):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ATTACKER, 0))
        sock.setblocking(False)
        socks.append(sock)
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    sent = 0
    target = ("127.0.0.1", port)
    while not stop.is_set():
        for i, sock in enumerate(socks):
            try:
                sock.sendto(datagrams[(sent + i) % len(datagrams)], target)
            except BlockingIOError:
                select.select([], [sock], [], 0.01)
            sent += 1
            if sent == 1000:
                print("flooding", flush=True)
            for _ in range(8):  # answers are read and dropped, so that the socket buffers do not fill
                try:
                    sock.recv(4096)
                except BlockingIOError:
                    break
    os._exit(0)


async def honest_rounds(dht_net: DhtNet, sockets: int) -> tuple[list[float], list[float], float]:
    """Start the network and the flood, then time ROUNDS honest PINGs and lookups; (pings, lookups, dropped)."""
    target, honest, other = await dht_net.form(3, config=DhtSection(host="127.0.0.1", port=0))
    _host, port = target.address.rsplit(":", 1)
    key = dht_key("tag", "under-flood")
    await other.service.put(key, b"honest", ttl=600)
    attacker = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.integration.test_floods_dht", port, str(sockets)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert attacker.stdin is not None
    assert attacker.stdout is not None
    try:
        assert await attacker.stdout.receive_some(64) == b"flooding\n"
        pings: list[float] = []
        lookups: list[float] = []
        for _ in range(ROUNDS):
            started = trio.current_time()
            await honest.service.ping(target.address, expect_key=target.identity.public_key)
            pings.append(trio.current_time() - started)
            started = trio.current_time()
            assert [r.value for r in await honest.service.get(key)] == [b"honest"]
            lookups.append(trio.current_time() - started)
        dropped = target.drops("rate_limited")
    finally:
        await attacker.stdin.aclose()
        with trio.move_on_after(5):
            await attacker.wait()
        if attacker.returncode is None:
            attacker.kill()
            await attacker.wait()
    return pings, lookups, dropped


@pytest.mark.parametrize("sockets", [1, 32], ids=["one_port", "many_ports"])
async def test_honest_lookups_stay_fast_during_a_flood_from_one_ip(dht_net: DhtNet, sockets: int) -> None:
    with trio.fail_after(LIMIT):
        pings, lookups, dropped = await honest_rounds(dht_net, sockets)
    # every PING answered (without the per-IP budget the node checks and answers the flood until the socket's
    # buffer overflows, and honest PINGs go unanswered after both sends); at most one needed its second send
    # (request_timeout is 1 s: a datagram the kernel dropped while the node answered the flood's first burst);
    # every lookup found the record; the flood was mostly dropped before parsing
    assert sum(p > 0.5 for p in pings) <= 1, pings
    assert statistics.median(pings) < 0.05, pings
    assert statistics.median(lookups) < 0.1, lookups
    assert dropped > 1000


def test_the_rate_limit_spreads_a_flood_evenly_and_forgets_quiet_addresses() -> None:
    """The limiter's arithmetic: a burst of half a second's worth, then one event per interval, whatever is offered
    (no window to fill at its start); an address quiet for a second is forgotten."""
    limit: RateLimit[str] = RateLimit(100, burst=0.5)
    assert sum(limit.allow("flood", 10.0) for _ in range(1000)) == 50  # the burst
    assert not limit.allow("flood", 10.005)
    assert limit.allow("flood", 10.011)  # then one per 10 ms
    assert not limit.allow("flood", 10.012)
    allowed = sum(limit.allow("flood", 10.02 + i * 0.0001) for i in range(10_000))  # one second of 10,000/s
    assert 99 <= allowed <= 101
    assert limit.allow("other", 11.0)  # another key has its own budget
    for i in range(1000):
        limit.allow(f"spoofed-{i}", 11.0)
    assert len(limit) >= 1000
    limit.allow("flood", 13.0)  # once a second, keys whose budget is whole again are dropped
    assert len(limit) == 1
    sources = SourceRateLimiter(10, 20, burst=0.5)
    # five ports of one IP, each within its own budget (5 at once), share the IP's (10 at once)
    allowed = sum(sources.allow(("192.0.2.1", port), 0.0) for port in range(5) for _ in range(5))
    assert allowed == 10


if __name__ == "__main__":
    flood(int(sys.argv[1]), int(sys.argv[2]))
