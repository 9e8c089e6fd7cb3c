"""A lookup's answer is read from the store every time: :meth:`OverlayRepository.answerable` (whether each outpoint is
stored, and its BEEF) over a real SQLite file, and the engine's answers with the JSON writer's memory of BEEF texts
warmed: an output spent and evicted, or deleted, is not answered any more, and a BEEF stored again under the same
txid is answered as it is now."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from overlay_node.api.overlay import _NumberTexts, output_list_json
from overlay_node.config import OverlaySection, StoreSection
from overlay_node.metrics import Metrics
from overlay_node.services.overlay_engine import OverlayEngine
from overlay_node.store.db import Store, open_store
from overlay_node.topics.plugins import FormulaItem, LookupIndex, Metadata
from tests.store_builders import submission, txid

LIMIT = 30


class FixedLookup:
    """Answers the outpoints a query names, from no index (as a service that learns of outpoints elsewhere): what
    the answer holds is decided by what the store holds."""

    keeps_spent = True

    async def lookup(self, query: Any, _index: LookupIndex) -> Sequence[FormulaItem]:
        return [FormulaItem(txid=t, vout=v, history=query.get("history")) for t, v in query["outpoints"]]

    def index(self, _output: Any) -> None:
        return None

    def documentation(self) -> str:
        return "fixed"

    def metadata(self) -> Metadata:
        return Metadata(name="fixed", short_description="fixed outpoints")


def _engine(store: Store) -> OverlayEngine:
    return OverlayEngine(
        OverlaySection(), store, Metrics(), {}, {"ls_fixed": FixedLookup()}, tracker=None, broadcaster=None
    )


async def _answer(engine: OverlayEngine, *outpoints: tuple[str, int], history: int | None = None) -> dict[str, Any]:
    outputs = await engine.lookup("ls_fixed", {"outpoints": outpoints, "history": history})
    value: dict[str, Any] = json.loads(output_list_json(outputs))
    return value


def _beefs(answer: dict[str, Any]) -> list[tuple[bytes, int]]:
    return [(bytes(o["beef"]), o["outputIndex"]) for o in answer["outputs"]]


async def test_answerable_is_what_the_store_holds(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(tmp_path / "node.db", StoreSection()) as store:
            await store.overlay.apply([submission(1), submission(2)], durable=False)
            one = await store.overlay.answerable([(txid(1), 0)])
            assert one == {(txid(1), 0): b"beef-1"}
            many = [(txid(1), 0), (txid(2), 1), (txid(2), 7), (txid(9), 0)]
            assert await store.overlay.answerable(many) == {(txid(1), 0): b"beef-1", (txid(2), 1): b"beef-2"}
            # the same outpoints as the whole outputs' read finds them
            outputs, beefs = await store.overlay.outputs_with_beefs(many)
            assert {op: beefs[op[0]] for op in outputs} == await store.overlay.answerable(many)
            assert await store.overlay.answerable([(txid(9), 0)]) == {}
            # a spend that retains nothing deletes 1's outputs, and its BEEF with the last of them
            await store.overlay.apply([submission(3, spends=1)], durable=True)
            assert await store.overlay.answerable([(txid(1), 0)]) == {}
            assert await store.overlay.answerable([(txid(1), 1), (txid(3), 0)]) == {(txid(3), 0): b"beef-3"}


async def test_an_answer_changes_after_an_eviction_with_the_texts_warmed(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(tmp_path / "node.db", StoreSection()) as store:
            engine = _engine(store)
            await store.overlay.apply([submission(1), submission(2)], durable=False)
            for _ in range(2):  # the second answer's BEEF texts come from the writer's memory
                answer = await _answer(engine, (txid(1), 0), (txid(2), 1), (txid(1), 0))
                assert _beefs(answer) == [(b"beef-1", 0), (b"beef-2", 1)]
            # 1's outputs spent and evicted (not retained): no longer answered, whether asked alone or with others
            await store.overlay.apply([submission(3, spends=1)], durable=True)
            assert _beefs(await _answer(engine, (txid(1), 0))) == []
            assert _beefs(await _answer(engine, (txid(1), 0), (txid(2), 1))) == [(b"beef-2", 1)]
            # the same txid admitted again (into another topic) with other BEEF bytes: answered with those
            first = submission(1)
            topic = replace(first.topics[0], topic="tm_other")
            again = replace(first, beef=b"beef-1 with a proof", score=10, topics=(topic,))
            await store.overlay.apply([again], durable=True)
            assert _beefs(await _answer(engine, (txid(1), 0))) == [(b"beef-1 with a proof", 0)]
            # asked with history, the whole outputs are read: the same answer
            assert _beefs(await _answer(engine, (txid(1), 0), history=1)) == [(b"beef-1 with a proof", 0)]


def test_the_beef_texts_are_bounded_and_exact() -> None:
    texts = _NumberTexts(limit=10_000, largest=1_000)
    seen = [os.urandom(n) for n in (0, 1, 300, 999, 1_000, 1_001, 5_000)]
    for _ in range(2):
        for data in seen:
            assert json.loads(texts.text(data)) == list(data)
    assert texts._size <= texts.limit
    assert all(len(data) <= texts.largest for data in texts._texts)
    many = [os.urandom(400) for _ in range(100)]  # far more than the limit holds
    for data in many:
        assert json.loads(texts.text(data)) == list(data)
        assert texts._size <= texts.limit
