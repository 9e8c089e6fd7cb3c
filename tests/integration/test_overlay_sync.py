"""GASP between real nodes over https: a host that was down while 200 transactions were submitted to the two others
holds all of them (with their BRC-64 history) after its first sync; a fourth host that joins empty catches up the
same way; a host answering garbage cannot hurt the one syncing from it."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import httpx
import trio

from overlay_node.chain.formats import parse_submission
from overlay_node.datadir import DataDir
from overlay_node.node import Node
from overlay_node.services.arc import DevnetClient
from overlay_node.tls import issue_certificate
from tests.conftest import NodeFactory, new_data_dir, test_config
from tests.plugins import demo

from .overlay_fixtures import Coin, Spender
from .test_overlay_tokens import ca, client
from .test_payments import DevnetFactory, start_devnet

__all__ = ["ca", "start_devnet"]  # fixtures, imported to be used here

LIMIT = 150
HOSTS_DEMO = {
    "overlay.topic_managers": ["tm_ship", "tm_slap", "tm_uhrp", demo.TOPIC],
    "overlay.lookup_services": ["ls_ship", "ls_slap", "ls_uhrp", demo.SERVICE],
    "overlay.sync_interval": 0.0,  # a round at start only (and on demand)
}


async def restartable(
    nursery: trio.Nursery, tmp_path: Path, ca: Any, name: str, ledger: str, data_dir: DataDir | None = None
) -> Node:
    """A TLS node hosting tm_demo on ``data_dir`` (a new one by default), started in ``nursery``."""
    cert, key = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    if not cert.exists():
        issue_certificate(ca, cert, key, ["127.0.0.1"])
    config = test_config(
        **{
            **HOSTS_DEMO,
            "http.tls_cert": str(cert),
            "http.tls_key": str(key),
            "http.tls_ca": str(ca.cert),
            "wallet.arc_url": ledger,
        }
    )
    node = Node(data_dir or new_data_dir(tmp_path, name), config)
    await nursery.start(node.run)
    return node


async def chains(devnet: DevnetClient, count: int, length: int) -> list[list[bytes]]:
    """``count`` chains of ``length`` P2PKH spends each (every spend's BEEF carries its unmined ancestry)."""
    out = []
    for _ in range(count):
        spender = Spender()
        coin: Coin = await spender.fund(devnet, 50_000)
        beefs = []
        for _ in range(length):
            coin, beef = spender.spend(coin)
            beefs.append(beef)
        out.append(beefs)
    return out


async def test_a_host_back_from_downtime_and_a_new_host_catch_up(
    nursery: trio.Nursery, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        ledger = devnet.info.url
        a = await restartable(nursery, tmp_path, ca, "a", ledger)
        b = await restartable(nursery, tmp_path, ca, "b", ledger)
        c = await restartable(nursery, tmp_path, ca, "c", ledger)
        for node in (b, c):
            await node.peers.connect(a.info.swarm[0], persistent=True)
        await c.peers.connect(b.info.swarm[0], persistent=True)
        # every host of tm_demo advertises it on chain; the tokens reach every other host (tm_ship)
        tokens = []
        for node in (a, b, c):
            await node.wallet.faucet(20_000)
            made = await node.adverts.advertise("tm_demo")
            assert made["token"], made
            tokens.append(made["token"].split(".")[0])
        for node in (a, b, c):
            for txid in tokens:
                await node.overlay.wait_applied(txid, "tm_ship")

        # C goes down; 40 chains of 5 spends (200 transactions) go to A, which propagates them to B
        c_dir = c.data_dir
        c.request_shutdown()
        await c.wait_stopped()
        submitted: list[str] = []
        async with client(a, ca) as h:
            for beefs in await chains(devnet.client, 40, 5):
                for beef in beefs:
                    answer = await h.post(
                        "/submit",
                        content=beef,
                        headers={"Content-Type": "application/octet-stream", "X-Topics": '["tm_demo"]'},
                    )
                    assert answer.status_code == 200, answer.text
                    submitted.append(_txid(beef))
        for txid in submitted:
            await b.overlay.wait_applied(txid, "tm_demo")
        assert (await a.overlay.counts())[0]["tm_demo"] == (200, 40)

        # C comes back on its data dir: its first sync round (at start) fetches what it missed from A and B
        c = await restartable(nursery, tmp_path, ca, "c", ledger, data_dir=c_dir)
        await c.overlay_sync.wait_rounds(1)
        topics, _ = await c.overlay.counts()
        assert topics.get("tm_demo") == (200, 40), [r.as_json() for r in c.overlay_sync.last_reports]
        # the history came too: a chain's tip answers with its four predecessors (BRC-64)
        tip = submitted[4]
        nodes, _beef = await c.overlay.history(tip, 0, 10)
        assert [n.depth for n in nodes] == [0, 1, 2, 3, 4]

        # D joins empty, linked to A only: it learns the hosts of tm_demo by syncing tm_ship, then syncs tm_demo
        d = await restartable(nursery, tmp_path, ca, "d", ledger)
        await d.peers.connect(a.info.swarm[0], persistent=True)
        reports = await d.overlay_sync.sync_all()
        assert (await d.overlay.counts())[0]["tm_demo"] == (200, 40), [r.as_json() for r in reports]


def _txid(beef: bytes) -> str:
    from overlay_node.chain.formats import parse_submission

    return parse_submission(beef).subject.txid


async def test_a_garbage_host_is_dropped(start_node: NodeFactory) -> None:
    """Pages longer than asked, transactions that are not the ones asked for, non-JSON answers, a txid with a
    trailing line break: the host is dropped for the round, counted, and nothing is stored."""
    with trio.fail_after(LIMIT):
        node = await start_node("a", **{**HOSTS_DEMO, "overlay.sync_page": 5})

        async def liar(stream: trio.SocketStream, kind: str) -> None:
            await stream.receive_some(65536)
            if kind == "long":
                utxos = [{"txid": "ab" * 32, "outputIndex": i, "score": i} for i in range(50)]
                body = json.dumps({"UTXOList": utxos, "since": 0}).encode()
            elif kind == "newline":
                utxos = [{"txid": "ab" * 32 + "\n", "outputIndex": 0, "score": 1}]
                body = json.dumps({"UTXOList": utxos, "since": 0}).encode()
            elif kind == "deep":
                body = b"[" * 200_000
            else:
                body = b"\x00\xff" * 1000
            head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            await stream.send_all(head.encode() + body)
            await stream.aclose()

        async with trio.open_nursery() as servers:
            urls = []
            for kind in ("long", "deep", "binary", "newline"):
                serve = functools.partial(trio.serve_tcp, functools.partial(liar, kind=kind), 0, host="127.0.0.1")
                listeners = await servers.start(serve)
                urls.append(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
            reports = await node.overlay_sync.sync_all(["tm_demo"], urls)
            servers.cancel_scope.cancel()
        assert all(r.error for r in reports), [r.as_json() for r in reports]
        assert "lists 50 outputs, 5 were asked for" in (reports[0].error or "")
        assert "a UTXOList txid is not 64 hex digits" in (reports[3].error or ""), reports[3].as_json()
        assert await node.overlay.counts() == ({}, {})
        async with httpx.AsyncClient(base_url=node.info.http) as h:
            metrics = (await h.get("/metrics")).text
        assert 'overlay_engine_sync_total{outcome="host_dropped"} 4.0' in metrics


async def test_a_hostile_host_cannot_stall_or_flood_the_sync(
    start_node: NodeFactory, start_devnet: DevnetFactory, nursery: trio.Nursery
) -> None:
    """A fake host that lists real outputs but answers (1) another transaction than the one asked for, (2) an
    unproven ancestry longer than ``overlay.sync_max_nodes``, (3) nothing at all: each is dropped or times out, the
    round ends within its bounds, and nothing is stored."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from overlay_node.net.listen import bind_tcp, serve_app

    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        node = await start_node(
            "a",
            **{
                **HOSTS_DEMO,
                "wallet.arc_url": devnet.info.url,
                "overlay.sync_max_nodes": 20,
                "overlay.sync_timeout": 0.5,
            },
        )
        (long_chain,) = await chains(devnet.client, 1, 40)  # 40 unproven spends: more than 20 to fetch
        txs = {}
        for beef in long_chain:
            for ptx in parse_submission(beef).txs:
                txs[ptx.txid] = ptx
        tip = _txid(long_chain[-1])
        other = next(t for t in txs if t != tip)
        stalled = trio.Event()

        def host(kind: str) -> Starlette:
            async def page(_request: Request) -> Response:
                if kind == "silent":
                    await stalled.wait()  # never answers within sync_timeout
                return JSONResponse({"UTXOList": [{"txid": tip, "outputIndex": 0, "score": 1}], "since": 0})

            async def gasp_node(request: Request) -> Response:
                asked = (await request.json())["txid"]
                txid = other if kind == "liar" else asked
                return JSONResponse({"graphID": f"{tip}.0", "rawTx": txs[txid].raw.hex(), "outputIndex": 0})

            return Starlette(
                routes=[
                    Route("/requestSyncResponse", page, methods=["POST"]),
                    Route("/requestForeignGASPNode", gasp_node, methods=["POST"]),
                ]
            )

        stop = trio.Event()
        urls = []
        for kind in ("liar", "endless", "silent"):
            sock = bind_tcp("127.0.0.1", 0)
            await nursery.start(
                functools.partial(serve_app, host(kind), sock, shutdown_trigger=stop.wait, graceful_timeout=0.1)
            )
            urls.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
        reports = await node.overlay_sync.sync_all(["tm_demo"], urls)
        stalled.set()
        stop.set()
        liar, endless, silent = reports
        assert liar.refused == 1, liar.as_json()
        assert liar.admitted == 0, liar.as_json()
        assert endless.refused == 1, endless.as_json()
        assert endless.admitted == 0, endless.as_json()
        assert silent.error, silent.as_json()
        assert "did not answer within 0.5s" in silent.error, silent.as_json()
        assert await node.overlay.counts() == ({}, {})
        assert silent.since == 0  # no progress past what could not be fetched
