"""The overlay host of a real node over HTTP: BRC-22 /submit and BRC-24 /lookup with a user topic (tests/plugins),
real transactions from the node's devnet, BRC-64 history, and bad input on every route."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from overlay_node.chain.formats import BeefEntry, encode_beef, parse_submission
from overlay_node.crypto.bump import varint_at, varint_bytes
from overlay_node.node import Node
from overlay_node.services.arc import DevnetClient
from overlay_node.store import engine
from tests.conftest import NodeFactory
from tests.plugins import demo

from .overlay_fixtures import Coin, Spender, proven_beef

LIMIT = 60
DEMO = {
    "overlay.topic_managers": [demo.TOPIC],
    "overlay.lookup_services": [demo.SERVICE],
    "wallet.devnet_block_interval": 0.0,
}


async def demo_node(start_node: NodeFactory, name: str = "a", **overrides: Any) -> Node:
    return await start_node(name, **{**DEMO, **overrides})


def http(node: Node) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.info.http, timeout=20)


async def submit(client: httpx.AsyncClient, beef: bytes, topics: Any = ("tm_demo",), **headers: str) -> httpx.Response:
    all_headers = {"Content-Type": "application/octet-stream", "X-Topics": json.dumps(list(topics)), **headers}
    return await client.post("/submit", content=beef, headers=all_headers)


async def lookup(client: httpx.AsyncClient, query: Any, service: str = "ls_demo", **headers: str) -> httpx.Response:
    return await client.post("/lookup", json={"service": service, "query": query}, headers=headers)


def devnet_of(node: Node) -> DevnetClient:
    return DevnetClient(node.status()["ledger"])


async def test_submit_lookup_duplicate_and_spend(start_node: NodeFactory) -> None:
    with trio.fail_after(LIMIT):
        node = await demo_node(start_node)
        alice = Spender()
        async with http(node) as h, devnet_of(node) as devnet:
            coin = await alice.fund(devnet, 10_000)
            first, beef = alice.spend(coin)
            answer = await submit(h, beef)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"tm_demo": {"outputsToAdmit": [0], "coinsToRetain": [], "coinsRemoved": []}}
            assert answer.headers["access-control-allow-origin"] == "*"
            # the engine broadcast it before storing it
            assert (await devnet.status(first.txid)).accepted
            # a second submission is a duplicate: empty instructions, nothing changes
            again = await submit(h, beef)
            assert again.json() == {"tm_demo": {"outputsToAdmit": [], "coinsToRetain": []}}
            # the JSON answer: the BEEF as submitted, whose last transaction holds the output
            found = await lookup(h, {"txid": first.txid})
            assert found.status_code == 200, found.text
            outputs = found.json()["outputs"]
            assert found.json()["type"] == "output-list"
            assert len(outputs) == 1
            assert bytes(outputs[0]["beef"]) == beef
            assert outputs[0]["outputIndex"] == 0
            assert bytes(outputs[0]["context"]) == b"demo"
            # a spend of it, comma-list X-Topics as py-sdk sends them: the previous coin is retained
            second, beef2 = alice.spend(first)
            second_txid = second.txid
            answer = await h.post(
                "/submit", content=beef2, headers={"Content-Type": "application/octet-stream", "X-Topics": "tm_demo"}
            )
            assert answer.json() == {"tm_demo": {"outputsToAdmit": [0], "coinsToRetain": [0], "coinsRemoved": []}}
            # ls_demo drops spent outputs from its index (keeps_spent = False)
            assert (await lookup(h, {"txid": first.txid})).json()["outputs"] == []
            assert len((await lookup(h, {"findAll": True})).json()["outputs"]) == 1
        topics, services = await node.overlay.counts()
        assert topics == {"tm_demo": (2, 1)}
        assert services == {"ls_demo": 1}
        # the optional hooks heard every admission and spend, after each commit
        hooks = node.overlay.services["ls_demo"].events  # type: ignore[attr-defined]
        assert hooks == [("admitted", first.txid, 0), ("spent", first.txid, 0), ("admitted", second_txid, 0)]


async def test_history_to_depth_two_after_blocks(start_node: NodeFactory) -> None:
    """BRC-64: each spend's BEEF carries only its proven parent; the lookup adds the retained ancestry."""
    with trio.fail_after(LIMIT):
        node = await demo_node(start_node)
        alice = Spender()
        async with http(node) as h, devnet_of(node) as devnet:
            coin = await alice.fund(devnet, 10_000)
            await devnet.mine()
            chain: list[Coin] = []
            parent_beef = await proven_beef(devnet, coin)
            current = coin
            for _ in range(3):
                nxt, beef = alice.spend(current, parent_beef=parent_beef)
                assert (await submit(h, beef)).status_code == 200
                chain.append(nxt)
                await devnet.mine()
                parent_beef = await proven_beef(devnet, nxt)
                current = nxt
            tip = chain[-1]
            shallow = (await lookup(h, {"txid": tip.txid})).json()["outputs"][0]
            assert [t.txid for t in parse_submission(bytes(shallow["beef"])).txs] == [chain[1].txid, tip.txid]
            deep = (await lookup(h, {"txid": tip.txid, "history": 2})).json()["outputs"][0]
            txids = [t.txid for t in parse_submission(bytes(deep["beef"])).txs]
            # depth 2: the tip, its two retained predecessors, and what the oldest one's BEEF carried (its proven
            # parent, the faucet's coin)
            assert txids[-1] == tip.txid
            assert set(txids) == {coin.txid, *(c.txid for c in chain)}
            # depth 1: the tip and its retained predecessor as that was submitted (with its proven parent)
            one = (await lookup(h, {"txid": tip.txid, "history": 1})).json()["outputs"][0]
            assert {t.txid for t in parse_submission(bytes(one["beef"])).txs} == {c.txid for c in chain}


async def test_aggregated_binary_answer(start_node: NodeFactory) -> None:
    with trio.fail_after(LIMIT):
        node = await demo_node(start_node)
        alice = Spender()
        async with http(node) as h, devnet_of(node) as devnet:
            made = []
            for _ in range(3):
                coin, beef = alice.spend(await alice.fund(devnet, 5_000))
                assert (await submit(h, beef)).status_code == 200
                made.append(coin.txid)
            answer = await lookup(h, {"findAll": True}, **{"X-Aggregation": "yes"})
            assert answer.headers["content-type"] == "application/octet-stream"
            data = answer.content
            count, pos = varint_at(data, 0)
            outpoints = []
            for _ in range(count):
                txid = data[pos : pos + 32].hex()
                vout, pos = varint_at(data, pos + 32)
                size, pos = varint_at(data, pos)
                assert data[pos : pos + size] == b"demo"
                pos += size
                outpoints.append((txid, vout))
            assert sorted(outpoints) == sorted((t, 0) for t in made)
            assert data[pos : pos + 4] == bytes.fromhex("0200beef")
            assert set(made) <= {t.txid for t in parse_submission(data[pos:]).txs}


async def test_bad_input_on_every_route_changes_nothing(start_node: NodeFactory) -> None:
    with trio.fail_after(LIMIT):
        node = await demo_node(start_node, "a", **{"overlay.max_submit_bytes": 65536})
        alice = Spender()
        async with http(node) as h, devnet_of(node) as devnet:
            coin, beef = alice.spend(await alice.fund(devnet, 10_000))
            octet = {"Content-Type": "application/octet-stream"}

            async def refused(response: httpx.Response, message: str) -> None:
                assert response.status_code == 400, response.text
                body = response.json()
                assert body["status"] == "error", body
                assert message in body["message"], body

            await refused(await h.post("/submit", content=beef, headers=octet), "Missing x-topics header")
            await refused(
                await submit(h, beef, topics=("tm_nope",)), "This server does not support this topic: tm_nope"
            )
            await refused(await h.post("/submit", content=beef, headers={**octet, "X-Topics": "[1, 2"}), "x-topics")
            await refused(await h.post("/submit", content=beef, headers={**octet, "X-Topics": ""}), "names no topic")
            await refused(await submit(h, b""), "empty")
            await refused(await submit(h, coin.raw), "not a BEEF")
            await refused(await submit(h, beef[:-7]), "cannot be read")
            await refused(await submit(h, beef + b"junk"), "cannot be read")
            await refused(await submit(h, b"\x01\x00\xbe\xef" + b"\xff" * 40), "cannot be read")
            await refused(await submit(h, b"x" * 70_000), "too large")
            wrong_type = await h.post(
                "/submit", content=beef, headers={"Content-Type": "text/plain", "X-Topics": '["tm_demo"]'}
            )
            await refused(wrong_type, "application/octet-stream")
            # a signature that does not verify: one byte of the spend's signature flipped
            tampered = bytearray(beef)
            at = tampered.rfind(coin.raw[44:60])
            tampered[at] ^= 0x01
            await refused(await submit(h, bytes(tampered)), "Unable to verify SPV information")
            # an ancestor missing: the spend alone
            orphan = encode_beef([BeefEntry(coin.txid, coin.raw)], version=1)
            await refused(await submit(h, orphan), "Unable to verify SPV information")
            # a merkle path that is not the chain's: the parent was mined, and the sibling hash in its path altered
            mined = await alice.fund(devnet, 3_000)
            await devnet.mine()
            spend, _ = alice.spend(mined)
            path = bytearray(parse_submission(await proven_beef(devnet, mined)).txs[0].bump or b"")
            sibling = path.rfind(bytes.fromhex(mined.txid)[::-1])
            assert sibling > 0
            at = next(i for i in range(len(path) - 32, 0, -1) if i != sibling)  # the last hash that is not the txid
            path[at] ^= 0xFF
            forged = encode_beef([BeefEntry(mined.txid, mined.raw, bytes(path)), BeefEntry(spend.txid, spend.raw)])
            answer = await submit(h, forged)
            await refused(answer, "Unable to verify SPV information")
            assert "does not match block" in answer.json()["message"], answer.json()
            # lookups
            await refused(await h.post("/lookup", content=b"{nope"), "not valid JSON")
            await refused(await h.post("/lookup", json={"service": "ls_demo"}), 'must contain "service"')
            await refused(await h.post("/lookup", json={"query": {}}), 'must contain "service"')
            await refused(await lookup(h, {}, service="ls_nope"), "Lookup service not found for provider: ls_nope")
            await refused(await lookup(h, "findAll"), "ls_demo takes a JSON object")
            await refused(await h.post("/lookup", content=b"[" * 100_000), "too large")
            deep = b"[" * 10_000 + b"]" * 10_000
            async with http(node) as h2:
                big = await h2.post("/lookup", content=deep, headers={"Content-Type": "application/json"})
            assert big.status_code == 400
            # documentation of what is not hosted
            assert (await h.get("/getDocumentationForTopicManager", params={"manager": "tm_x"})).status_code == 400
            # nothing was stored, and the node still serves a good submission
            assert await node.overlay.counts() == ({}, {})
            assert (await submit(h, beef)).json()["tm_demo"]["outputsToAdmit"] == [0]


async def test_submit_body_forms(start_node: NodeFactory) -> None:
    """/submit reads a chunked body, and ``x-includes-off-chain-values`` (VarInt(length) || BEEF || values); a
    chunked body over ``overlay.max_submit_bytes`` and a length prefix past the body are refused, every answer
    with the CORS headers."""
    with trio.fail_after(LIMIT):
        node = await demo_node(start_node, "a", **{"overlay.max_submit_bytes": 65536})
        alice = Spender()
        async with http(node) as h, devnet_of(node) as devnet:
            first, beef = alice.spend(await alice.fund(devnet, 10_000))
            second, beef2 = alice.spend(await alice.fund(devnet, 10_000))

            async def pieces(data: bytes, size: int) -> Any:
                for at in range(0, len(data), size):
                    yield data[at : at + size]

            headers = {"Content-Type": "application/octet-stream", "X-Topics": '["tm_demo"]'}
            chunked = await h.post("/submit", content=pieces(beef, 50), headers=headers)
            assert chunked.status_code == 200, chunked.text
            assert chunked.json()["tm_demo"]["outputsToAdmit"] == [0]
            assert chunked.headers["access-control-allow-origin"] == "*"
            assert chunked.headers["content-type"] == "application/json"
            values = b"off-chain values"
            with_values = await submit(
                h, varint_bytes(len(beef2)) + beef2 + values, **{"x-includes-off-chain-values": "true"}
            )
            assert with_values.status_code == 200, with_values.text
            assert with_values.json()["tm_demo"]["outputsToAdmit"] == [0]
            # the BEEF alone was stored, without the prefix and the values
            (stored,) = (await lookup(h, {"txid": second.txid})).json()["outputs"]
            assert bytes(stored["beef"]) == beef2
            too_large = await h.post("/submit", content=pieces(b"\x01\x00\xbe\xef" * 20_000, 4096), headers=headers)
            assert too_large.status_code == 400, too_large.text
            assert "too large" in too_large.json()["message"]
            assert too_large.headers["access-control-allow-origin"] == "*"
            short = await submit(h, varint_bytes(len(beef) + 1) + beef, **{"x-includes-off-chain-values": "true"})
            assert short.status_code == 400, short.text
            assert short.json()["status"] == "error"
            assert "VarInt(length) || BEEF" in short.json()["message"]
        topics, _ = await node.overlay.counts()
        assert topics == {"tm_demo": (2, 2)}
        assert first.txid != second.txid


async def test_listings_and_documentation(start_node: NodeFactory) -> None:
    with trio.fail_after(LIMIT):
        node = await demo_node(start_node)
        async with http(node) as h:
            assert (await h.get("/listTopicManagers")).json() == {
                "tm_demo": {"name": "Demo topic", "shortDescription": "P2PKH outputs, with history", "version": "1.0"}
            }
            assert (await h.get("/listLookupServiceProviders")).json() == {
                "ls_demo": {"name": "Demo lookup", "shortDescription": "tm_demo outputs by txid"}
            }
            doc = await h.get("/getDocumentationForTopicManager", params={"manager": "tm_demo"})
            assert doc.headers["content-type"].startswith("text/markdown")
            assert doc.text.startswith("# tm_demo")
            for param in ("lookupService", "lookupServices"):
                doc = await h.get("/getDocumentationForLookupServiceProvider", params={param: "ls_demo"})
                assert doc.text.startswith("# ls_demo")
            options = await h.options("/submit")
            assert options.status_code == 200
            assert options.headers["access-control-allow-headers"] == "*"


async def test_a_refused_broadcast_stores_nothing(start_node: NodeFactory) -> None:
    """A double spend: the devnet refuses the second spender of a coin, so the engine stores nothing of it."""
    with trio.fail_after(LIMIT):
        node = await demo_node(start_node)
        alice = Spender()
        async with http(node) as h, devnet_of(node) as devnet:
            coin = await alice.fund(devnet, 10_000)
            _, beef = alice.spend(coin)
            rival, rival_beef = alice.spend(coin, fee=2)
            assert (await submit(h, beef)).status_code == 200
            answer = await submit(h, rival_beef)
            assert answer.status_code == 400
            assert "Failed to broadcast" in answer.json()["message"]
            assert (await lookup(h, {"txid": rival.txid})).json()["outputs"] == []


@pytest.mark.parametrize(("mode", "broadcast"), [("historical-tx", False), ("historical-tx-no-spv", True)])
async def test_submit_modes(start_node: NodeFactory, mode: str, broadcast: bool) -> None:
    """As the reference engine: only ``historical-tx`` skips the broadcast; ``historical-tx-no-spv`` skips SPV."""
    with trio.fail_after(LIMIT):
        node = await demo_node(start_node)
        alice = Spender()
        async with devnet_of(node) as devnet:
            coin, beef = alice.spend(await alice.fund(devnet, 10_000))
            steak = await node.overlay.submit(beef, ["tm_demo"], mode=mode)  # type: ignore[arg-type]
            assert steak["tm_demo"]["outputsToAdmit"] == [0]
            assert (await devnet.status(coin.txid)).accepted is broadcast


def test_the_json_answer_is_what_json_dumps_writes() -> None:
    from overlay_node.api.overlay import output_list_json
    from overlay_node.services.overlay_engine import AnswerOutput

    outputs = [
        AnswerOutput(txid="aa" * 32, vout=3, beef=bytes(range(256)), context=b"\x00ctx\xff"),
        AnswerOutput(txid="bb" * 32, vout=0, beef=b"\x01\x00\xbe\xef"),
    ]
    expected = {
        "type": "output-list",
        "outputs": [
            {"beef": list(range(256)), "outputIndex": 3, "context": [0, 99, 116, 120, 255]},
            {"beef": [1, 0, 190, 239], "outputIndex": 0},
        ],
    }
    assert json.loads(output_list_json(outputs)) == expected
    assert json.loads(output_list_json([])) == {"type": "output-list", "outputs": []}


async def test_a_lone_clients_submissions_are_written_on_the_event_loop_thread(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone client's submissions after its first are written without the hand-off to the writer thread
    (``store/engine.py`` invariant 8); submissions in flight together go through the writer thread."""
    monkeypatch.setattr(engine, "INLINE_COMMIT_LIMIT", 60.0)  # no commit here counts as slow
    with trio.fail_after(LIMIT):
        node = await demo_node(start_node)
        db = node.store._db
        alice = Spender()
        async with http(node) as h, devnet_of(node) as devnet:
            coins = [await alice.fund(devnet, 10_000) for _ in range(4)]
            before = db.inline_writes
            coin = coins[0]
            for _ in range(6):
                coin, beef = alice.spend(coin)
                answer = await submit(h, beef)
                assert answer.json()["tm_demo"]["outputsToAdmit"] == [0], answer.text
            # all but the first, unless the node's own background writes had the writer thread busy just then
            assert 4 <= db.inline_writes - before <= 5
            before = db.inline_writes
            answers: list[httpx.Response] = []

            async def one(beef: bytes) -> None:
                answers.append(await submit(h, beef))

            async with trio.open_nursery() as nursery:
                for other in coins[1:]:
                    nursery.start_soon(one, alice.spend(other)[1])
            assert [a.json()["tm_demo"]["outputsToAdmit"] for a in answers] == [[0], [0], [0]]
            assert db.inline_writes - before <= 1  # the first may have found the engine idle and been done alone
        topics, _ = await node.overlay.counts()
        assert topics == {"tm_demo": (9, 4)}


async def test_a_lone_submission_on_the_only_connection_is_written_without_a_turn_of_the_loop(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone client's submission that came on the HTTP server's only connection (``sole``) is written inline at
    once: no other client's request can be waiting to begin, so the two turns of the event loop that let one begin
    first are skipped (no other task runs before its commit); without ``sole`` the loop turns first."""
    monkeypatch.setattr(engine, "INLINE_COMMIT_LIMIT", 60.0)  # no commit here counts as slow
    with trio.fail_after(LIMIT):
        quiet: dict[str, Any] = {"overlay.spv": "scripts-only", "overlay.broadcast": False}  # no await but the commit
        node = await demo_node(start_node, **quiet)
        db = node.store._db
        alice = Spender()
        async with devnet_of(node) as devnet:
            coin = await alice.fund(devnet, 10_000)
        turns = 0

        async def spin() -> None:
            nonlocal turns
            while True:
                await trio.lowlevel.checkpoint()
                turns += 1

        seen: list[tuple[bool, int, int]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(spin)
            # the first of a run is written by the writer thread; the second and later inline (``_commit``)
            for sole in (True, True, True, False, False, True):
                coin, beef = alice.spend(coin)
                turns_before, inline_before = turns, db.inline_writes
                steak = await node.overlay.submit(beef, ["tm_demo"], sole=sole)
                assert steak["tm_demo"]["outputsToAdmit"] == [0]
                seen.append((sole, turns - turns_before, db.inline_writes - inline_before))
            nursery.cancel_scope.cancel()
        assert seen[0][2] == 0
        for sole, turned, inline in seen[1:]:
            assert inline == 1
            assert (turned == 0) if sole else (turned >= 1), seen


async def test_the_hot_routes_answer_as_the_app_would(start_node: NodeFactory) -> None:
    """``POST /submit`` and ``POST /lookup`` are answered in front of Starlette (``with_hot_routes``): the same
    headers, status codes and error bodies; their other methods still reach the app (preflight, 405)."""
    with trio.fail_after(LIMIT):
        node = await demo_node(start_node)
        async with http(node) as h:
            answer = await lookup(h, {"findAll": True})
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"type": "output-list", "outputs": []}
            assert answer.headers["content-type"] == "application/json"
            assert answer.headers["access-control-allow-origin"] == "*"
            assert answer.headers["access-control-allow-private-network"] == "true"
            refused = await lookup(h, {}, service="ls_nope")
            assert refused.status_code == 400
            assert refused.json() == {"status": "error", "message": "Lookup service not found for provider: ls_nope"}
            assert refused.headers["access-control-allow-origin"] == "*"
            refused = await h.post("/submit", content=b"x", headers={"Content-Type": "application/octet-stream"})
            assert refused.json() == {"status": "error", "message": "Missing x-topics header"}
            for path in ("/submit", "/lookup"):
                preflight = await h.options(path)
                assert preflight.status_code == 200
                assert preflight.headers["access-control-allow-methods"] == "*"
                wrong = await h.get(path)
                assert wrong.status_code == 405
                assert wrong.json()["code"] == "method_not_allowed"
