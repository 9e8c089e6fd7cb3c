"""The overlay engine's filter of applied txids (``services/overlay_known.py``), alone and under a real engine over a
real SQLite file: a fresh submission skips its first read, and what the store already holds is still found (a
duplicate, a previous coin) after a restart, when the filter is filled from the store."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from overlay_node.chain.formats import BeefEntry, encode_beef
from overlay_node.config import OverlaySection, StoreSection
from overlay_node.crypto.bump import varint_bytes
from overlay_node.crypto.sighash import outpoint_bytes, txid_of_raw
from overlay_node.metrics import Metrics
from overlay_node.services.overlay_engine import OverlayEngine
from overlay_node.services.overlay_known import KnownTxids
from overlay_node.store.db import Store, open_store
from overlay_node.topics.plugins import PluginContext, SubmitMode
from tests.plugins import demo

P2PKH = bytes.fromhex("76a914" + "11" * 20 + "88ac")


def _fresh() -> str:
    return os.urandom(32).hex()


def test_never_a_false_no_across_stages() -> None:
    known = KnownTxids(first_capacity=16)
    added = [_fresh() for _ in range(2_000)]
    assert known.may_hold(added[0])  # not ready: every answer is "maybe"
    known.add_all(added)
    known.ready = True
    assert len(known) == 2_000
    assert all(known.may_hold(txid) for txid in added)
    strangers = [_fresh() for _ in range(2_000)]
    assert sum(known.may_hold(txid) for txid in strangers) < 100  # a few false "maybe" per stage at most
    assert known.may_hold("not a txid") in (True, False)  # a made-up key is still a key


def _tx(spends: tuple[str, int], *, marked: bool = True) -> tuple[str, bytes]:
    """A transaction spending ``spends`` to one P2PKH output (and the demo marker): the raw bytes and its BEEF."""
    outputs = [(6_000, P2PKH)] + ([(0, demo.MARKER)] if marked else [])
    raw = b"".join(
        (
            (1).to_bytes(4, "little"),
            b"\x01",
            outpoint_bytes(*spends),
            b"\x00",
            b"\xff\xff\xff\xff",
            varint_bytes(len(outputs)),
            *(sats.to_bytes(8, "little") + varint_bytes(len(script)) + script for sats, script in outputs),
            bytes(4),
        )
    )
    txid = txid_of_raw(raw)
    return txid, encode_beef([BeefEntry(txid, raw)], version=1)


def _engine(store: Store) -> OverlayEngine:
    context = PluginContext(name="tm_demo", identity_key="02" + "00" * 32)
    return OverlayEngine(
        OverlaySection(),
        store,
        Metrics(),
        {"tm_demo": demo.DemoTopicManager(context)},
        {"ls_demo": demo.DemoLookupService(PluginContext(name="ls_demo", identity_key=context.identity_key))},
        tracker=None,
        broadcaster=None,
    )


async def test_fresh_skips_and_stored_is_found_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    mode: SubmitMode = "historical-tx-no-spv"  # no SPV here: what is checked is what the engine reads and writes
    first, first_beef = _tx((_fresh(), 0))
    second, second_beef = _tx((first, 0))
    with trio.fail_after(30):
        async with open_store(path, StoreSection()) as store, trio.open_nursery() as nursery:
            engine = _engine(store)
            await nursery.start(engine.run)
            await engine.known_loaded.wait()
            assert engine.known.ready
            assert not engine.known.may_hold(first)
            steak = await engine.submit(first_beef, ["tm_demo"], mode=mode)
            assert steak == {"tm_demo": {"outputsToAdmit": [0], "coinsToRetain": [], "coinsRemoved": []}}
            assert engine.known.may_hold(first)
            again = await engine.submit(first_beef, ["tm_demo"], mode=mode)
            assert again == {"tm_demo": {"outputsToAdmit": [], "coinsToRetain": []}}
            spend = await engine.submit(second_beef, ["tm_demo"], mode=mode)
            assert spend == {"tm_demo": {"outputsToAdmit": [0], "coinsToRetain": [0], "coinsRemoved": []}}
            nursery.cancel_scope.cancel()
        # a restart: the filter is filled from the store before it says "no" to anything
        _third, third_beef = _tx((second, 0))
        async with open_store(path, StoreSection()) as store, trio.open_nursery() as nursery:
            engine = _engine(store)
            await nursery.start(engine.run)
            await engine.known_loaded.wait()
            assert engine.known.ready
            assert len(engine.known) == 2
            assert engine.known.may_hold(first)
            assert engine.known.may_hold(second)
            again = await engine.submit(first_beef, ["tm_demo"], mode=mode)
            assert again == {"tm_demo": {"outputsToAdmit": [], "coinsToRetain": []}}
            spend = await engine.submit(third_beef, ["tm_demo"], mode=mode)
            assert spend == {"tm_demo": {"outputsToAdmit": [0], "coinsToRetain": [0], "coinsRemoved": []}}
            topics, _ = await engine.counts()
            assert topics == {"tm_demo": (3, 1)}
            nursery.cancel_scope.cancel()


async def test_concurrent_submissions_commit_in_score_order(tmp_path: Path) -> None:
    """Lone submissions are written straight from their task, the others through the group commit: either way each
    admitted output lands in the order of its score (GASP pages by score)."""
    beefs = [_tx((_fresh(), 0))[1] for _ in range(40)]
    with trio.fail_after(30):
        async with open_store(tmp_path / "node.db", StoreSection()) as store, trio.open_nursery() as nursery:
            engine = _engine(store)
            await nursery.start(engine.run)
            steaks: list[object] = []

            async def one(beef: bytes) -> None:
                steaks.append(await engine.submit(beef, ["tm_demo"], mode="historical-tx-no-spv"))

            async with trio.open_nursery() as clients:
                for beef in beefs:
                    clients.start_soon(one, beef)
            assert all(
                s == {"tm_demo": {"outputsToAdmit": [0], "coinsToRetain": [], "coinsRemoved": []}} for s in steaks
            )
            assert len(steaks) == 40
            rows = await store._read(
                lambda conn: conn.execute("SELECT score FROM overlay_outputs ORDER BY id").fetchall()
            )
            scores = [row[0] for row in rows]
            assert len(scores) == 40
            assert scores == sorted(set(scores))
            nursery.cancel_scope.cancel()


async def test_a_stream_of_duplicates_lets_other_tasks_run(tmp_path: Path) -> None:
    """A free submission slot costs no turn of the event loop, but a submission that writes nothing (a duplicate)
    still yields once: a client resubmitting in a loop never starves the node's other tasks."""
    _, beef = _tx((_fresh(), 0))
    with trio.fail_after(30):
        async with open_store(tmp_path / "node.db", StoreSection()) as store, trio.open_nursery() as nursery:
            engine = _engine(store)
            await nursery.start(engine.run)
            await engine.submit(beef, ["tm_demo"], mode="historical-tx-no-spv")
            turns = 0

            async def other() -> None:
                nonlocal turns
                while True:
                    turns += 1
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(other)
            await trio.lowlevel.checkpoint()
            before = turns
            for _ in range(50):
                steak = await engine.submit(beef, ["tm_demo"], mode="historical-tx-no-spv")
                assert steak == {"tm_demo": {"outputsToAdmit": [], "coinsToRetain": []}}
            # one turn of the other task per submission: 49 at least, as trio runs a batch's tasks in random order
            # (the other task's turn in the first and the last batch may come before ``before`` or after the count)
            assert turns - before >= 49
            nursery.cancel_scope.cancel()
