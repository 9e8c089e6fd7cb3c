"""GASP request bodies the fuzzer (``make fuzz``) found answered with a 500 on the public port: numbers the store
cannot compare with and output indexes in other digits. Each is a 400 now, with nothing logged, and the node keeps
serving."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import NodeFactory

BAD_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("/requestSyncResponse", {"since": 10**20}),
    ("/requestSyncResponse", {"since": 1e300}),
    ("/requestSyncResponse", {"since": 0, "limit": 2**64}),
    ("/requestForeignGASPNode", {"graphID": "ab" * 32 + ".\u00b2", "txid": "ab" * 32, "outputIndex": 0}),
    ("/requestForeignGASPNode", {"graphID": "ab" * 32 + ".0", "txid": "ab" * 32, "outputIndex": 10**20}),
]


async def test_out_of_range_gasp_numbers_are_refused(start_node: NodeFactory, caplog: pytest.LogCaptureFixture) -> None:
    # GASP without BRC-104 first: any peer that authenticates reaches these routes
    node = await start_node("gasp", **{"auth.require": []})
    with trio.fail_after(20), caplog.at_level(logging.ERROR, logger="overlay_node"):
        async with httpx.AsyncClient(base_url=node.info.http, timeout=10) as client:
            for path, body in BAD_BODIES:
                answer = await client.post(path, json=body, headers={"x-bsv-topic": "tm_ship"})
                assert answer.status_code == 400, (path, body, answer.text)
                assert answer.json()["status"] == "error"
            assert (await client.get("/health/live")).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
