"""The soak's driver: threads that keep the cluster busy through the control API while nodes die under them.

- :func:`publisher`: content of random size (up to :data:`MAX_BLOB`) published with R = :data:`REPLICATION` and
  ``wait``; an answered result makes it acknowledged (remembered with its hash).
- :func:`fetcher`: acknowledged content fetched from random nodes; the bytes must hash to the id.
- :func:`payer`: quote -> pay between random pairs; a receipt makes the payment acknowledged. A payer that cannot
  build the BEEF of a coin it holds (here or in a subscription's summary) is a violation: a restarted wallet must
  be able to pay with every coin it considers spendable.
- :func:`pusher` and :func:`subscriber`: paid streams fed by their producer and read by subscribers (W = 1 and
  W = 10), every packet's sequence number remembered; a subscriber whose session ends subscribes again (once both
  it and the producer are up).

An operation on a node that is down, or that dies during it, fails and is counted by its error code; only a wrong
answer (bytes that do not hash to their id, a receipt for another amount) is a violation here.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
from pathlib import Path

from tests.soak.world import FAILURES, Blob, OpFailed, Paid, Sub, World, result_of

#: R of every content published
REPLICATION = 3
#: content sizes are uniform in [1, MAX_BLOB] bytes
MAX_BLOB = 3 * 1024 * 1024
#: payment amounts, in satoshis
PAY_RANGE = (200, 5000)
#: satoshis per packet of the streams
STREAM_RATE = 2
#: (stream id, packets pushed per tick) of each stream; a tick is PUSH_TICK seconds
STREAMS = (("soak-w1", 1), ("soak-w10", 5))
PUSH_TICK = 0.5


#: what a wallet says when it cannot build the BEEF of a coin it considers spendable (an invariant: never)
UNBUILDABLE = "cannot build a BEEF"


def _check_payable(world: World, node: int, message: str) -> None:
    if UNBUILDABLE in message:
        world.violation("wallets", f"node{node} cannot pay with a coin it holds: {message[:300]}")


def _pause(world: World, rng: random.Random, low: float, high: float) -> None:
    world.stop.wait(rng.uniform(low, high))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def publisher(world: World, rng: random.Random) -> None:
    files = world.work_dir / "publish"
    files.mkdir(parents=True, exist_ok=True)
    n = 0
    while not world.stop.is_set():
        picked = world.pick(rng)
        if picked is None:
            _pause(world, rng, 0.5, 1.0)
            continue
        (node,) = picked
        data = rng.randbytes(rng.randint(1, MAX_BLOB))
        digest = hashlib.sha256(data).hexdigest()
        path = files / f"{digest}.bin"
        path.write_bytes(data)
        n += 1
        body = {"path": str(path), "replication": REPLICATION, "wait": True, "title": f"soak {n}", "tags": ["soak"]}
        try:
            result = result_of(world.stream(node, "/v1/content/publish", body))
        except (*FAILURES, OpFailed) as exc:
            world.count("publish", exc)
        else:
            world.count("publish")
            if result.get("hash") != digest or result.get("size") != len(data):
                world.violation("content", f"publish on node{node} answered {result.get('hash')} for content {digest}")
            else:
                with world.lock:
                    world.blobs.append(Blob(digest, len(data), node))
        finally:
            path.unlink(missing_ok=True)
        _pause(world, rng, 0.5, 2.0)


def fetcher(world: World, rng: random.Random) -> None:
    out_dir = world.work_dir / "fetch"
    out_dir.mkdir(parents=True, exist_ok=True)
    while not world.stop.is_set():
        with world.lock:
            blob = rng.choice(world.blobs) if world.blobs else None
        picked = world.pick(rng)
        if blob is None or picked is None:
            _pause(world, rng, 0.5, 1.0)
            continue
        (node,) = picked
        out = out_dir / f"{secrets.token_hex(8)}.bin"
        try:
            result_of(world.stream(node, "/v1/content/access", {"content": blob.hash, "output": str(out)}))
            got = _sha256_file(out)
        except (*FAILURES, OpFailed) as exc:
            world.count("fetch", exc)
        else:
            world.count("fetch")
            if got != blob.hash:
                world.violation("content", f"fetch of {blob.hash[:16]} from node{node} gave bytes hashing to {got}")
        finally:
            for leftover in out_dir.glob(f"{out.name}*"):
                leftover.unlink(missing_ok=True)
        _pause(world, rng, 0.3, 1.5)


def payer(world: World, rng: random.Random) -> None:
    n = 0
    while not world.stop.is_set():
        picked = world.pick(rng, 2)
        if picked is None:
            _pause(world, rng, 0.5, 1.0)
            continue
        payer_i, payee_i = picked
        amount = rng.randint(*PAY_RANGE)
        n += 1
        try:
            quote = world.call(
                payer_i,
                "POST",
                "/v1/quote",
                {"provider": world.key(payee_i), "resource": f"soak:{n}", "amount": amount},
            )
            receipt = world.call(payer_i, "POST", "/v1/pay", {"quote_id": str(quote["quote_id"])})
        except FAILURES as exc:
            world.count("pay", exc)
            _check_payable(world, payer_i, str(exc))
        else:
            world.count("pay")
            if receipt.get("amount") != amount or receipt.get("payee") != world.key(payee_i):
                world.violation("payments", f"node{payer_i} paid {amount} to node{payee_i}, got the receipt {receipt}")
            with world.lock:
                world.payments.append(Paid(payer_i, payee_i, str(receipt["txid"]), amount, str(quote["quote_id"])))
        _pause(world, rng, 0.2, 1.0)


def pusher(world: World, producer: int) -> None:
    """Feed every stream of :data:`STREAMS` on ``producer`` a few packets per tick, numbered by the driver."""
    sent = dict.fromkeys((sid for sid, _ in STREAMS), 0)
    while not world.stop.wait(PUSH_TICK):
        if producer in world.live():
            for stream_id, per_tick in STREAMS:
                packets = [json.dumps({"stream": stream_id, "n": sent[stream_id] + k}) for k in range(per_tick)]
                try:
                    world.call(producer, "POST", f"/v1/streams/{stream_id}/push", {"packets": packets}, timeout=10)
                except FAILURES as exc:
                    world.count("push", exc)
                else:
                    world.count("push")
                    sent[stream_id] += per_tick


def subscriber(world: World, sub: Sub) -> None:
    """Subscribe ``sub.consumer`` to the stream and read it until the session ends; then again, until the soak
    stops (``POST /v1/subscriptions/stop`` ends the last session)."""
    body = {
        "stream_id": sub.stream_id,
        "window": sub.window,
        "max_price": sub.rate,
        "producer": world.key(sub.producer),
    }
    while not world.stop.is_set():
        live = world.live()
        if sub.consumer not in live or sub.producer not in live:
            # a subscription to a producer that is down fails to dial it (dial_failed), which says nothing new
            world.stop.wait(0.5)
            continue
        with world.lock:
            sub.sessions += 1
        try:
            for event in world.stream(sub.consumer, "/v1/subscribe", body):
                if "seq" in event:
                    with world.lock:
                        sub.seqs.add(int(event["seq"]))
                elif "summary" in event:
                    with world.lock:
                        sub.summaries.append(event["summary"])
                    _check_payable(world, sub.consumer, json.dumps(event["summary"].get("error") or {}))
        except FAILURES as exc:
            world.count(f"subscribe W={sub.window}", exc)
        else:
            world.count(f"subscribe W={sub.window}")
        world.stop.wait(1.0)
