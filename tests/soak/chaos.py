"""The soak's chaos loop: seeded (one ``random.Random(seed)`` draws every fault, victim and pause, in order),
it kill -9s a random node and restarts it on its data dir and ports after a random pause, never with more than
:data:`MAX_DOWN` nodes down at once, never the ledger (a separate process the cluster does not count as a member).

A peer link is cut by killing a node and restarting it at once (``LINK_CUT_PAUSE``): the control API has no route
that drops one link, so every link of the victim goes, and its peers see the link close mid-frame as after a crash.
"""

from __future__ import annotations

import random
import threading
import time

from tests.soak.world import World

MAX_DOWN = 2
#: seconds between two faults, and a killed node's pause before it is restarted
FAULT_GAP = (4.0, 12.0)
KILL_PAUSE = (2.0, 20.0)
LINK_CUT_PAUSE = (0.1, 1.0)
#: the share of faults that are link cuts (kill and restart at once)
LINK_CUT_SHARE = 0.3
#: a node that fails to start is tried again after this many seconds
RETRY_START = 2.0
#: seconds a restarted node may take to become ready
START_LIMIT = 90.0


def _restart(world: World, i: int) -> bool:
    """Start node ``i`` again; False when it exited before it was ready (a violation; tried again later). A node
    still not ready after :data:`START_LIMIT` seconds is a violation too, and stays counted as down."""
    errors: list[BaseException] = []

    def start() -> None:
        try:
            world.cluster.restart(i)
        except (RuntimeError, OSError, ValueError) as exc:
            errors.append(exc)

    starter = threading.Thread(target=start, name=f"restart-node{i}", daemon=True)
    starter.start()
    starter.join(START_LIMIT)
    if starter.is_alive():
        world.fault("restart_hung")
        world.violation("restarts", f"node{i} was not ready {START_LIMIT:.0f}s after its restart (see its daemon.log)")
        return True
    if errors:
        world.fault("restart_failed")
        world.violation("restarts", f"node{i} did not start again after a kill: {str(errors[0])[-400:]}")
        return False
    with world.lock:
        world.down.discard(i)
    world.fault("restart")
    return True


def _inject(world: World, rng: random.Random, pending: dict[int, float]) -> None:
    """One fault: every draw is made whether or not it can be carried out, so the sequence follows the seed."""
    cut = rng.random() < LINK_CUT_SHARE
    pause = rng.uniform(*(LINK_CUT_PAUSE if cut else KILL_PAUSE))
    pick = rng.random()
    with world.lock:
        live = [i for i in range(world.n) if i not in world.down]
        if len(world.down) >= MAX_DOWN or not live:
            return
        victim = live[int(pick * len(live))]
        world.down.add(victim)
    world.cluster.kill(victim)
    kind = "link_cut" if cut else "kill"
    world.fault(kind)
    print(f"chaos: {kind} node{victim}, back in {pause:.1f}s", flush=True)
    pending[victim] = time.monotonic() + pause


def chaos(world: World, rng: random.Random, stop: threading.Event) -> None:
    """Inject faults until ``stop`` is set, then bring every node back up."""
    pending: dict[int, float] = {}
    next_fault = time.monotonic() + rng.uniform(*FAULT_GAP)
    while not stop.is_set():
        now = time.monotonic()
        for i, at in sorted(pending.items()):
            if at <= now:
                if _restart(world, i):
                    del pending[i]
                else:
                    pending[i] = now + RETRY_START
        if now >= next_fault:
            _inject(world, rng, pending)
            next_fault = now + rng.uniform(*FAULT_GAP)
        stop.wait(0.2)
    for i in sorted(pending):
        if not _restart(world, i):
            _restart(world, i)
