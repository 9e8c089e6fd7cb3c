"""Tokens on chain between real nodes over https: SHIP adverts and UHRP advertisements made by the wallet,
admitted by the node's own tm_ship/tm_uhrp, propagated to linked peers, found through the DHT by others, answered
by ls_ship/ls_uhrp, and revoked by spending."""

from __future__ import annotations

import hashlib
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from overlay_node.chain.formats import parse_submission
from overlay_node.node import Node
from overlay_node.tls import ensure_ca, issue_certificate
from overlay_node.topics.ship import decode_ship_token
from overlay_node.topics.uhrp import decode_uhrp_token
from tests.conftest import NodeFactory
from tests.plugins import demo

from .test_payments import DevnetFactory, start_devnet

__all__ = ["start_devnet"]  # a fixture, imported to be used here

LIMIT = 90


@pytest.fixture
def ca(tmp_path: Path) -> Any:
    return ensure_ca(tmp_path / "ca")


async def tls_node(start_node: NodeFactory, tmp_path: Path, ca: Any, name: str, ledger: str, **extra: Any) -> Node:
    cert, key = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    issue_certificate(ca, cert, key, ["127.0.0.1"])
    return await start_node(
        name,
        **{
            "http.tls_cert": str(cert),
            "http.tls_key": str(key),
            "http.tls_ca": str(ca.cert),
            "wallet.arc_url": ledger,
            **extra,
        },
    )


def trusting(ca: Any) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert))


def client(node: Node, ca: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.info.http, timeout=20, verify=trusting(ca))


def token_fields(outputs: list[dict[str, Any]], decode: Any) -> list[Any]:
    found = []
    for out in outputs:
        beef = bytes(out["beef"])
        tx = parse_submission(beef).subject
        found.append(decode(tx.outputs[out["outputIndex"]].script))
    return found


async def test_ship_tokens_propagate_answer_and_revoke(
    start_node: NodeFactory, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        ledger = devnet.info.url
        hosted = {"overlay.topic_managers": ["tm_ship", "tm_slap", "tm_uhrp", demo.TOPIC]}
        a = await tls_node(start_node, tmp_path, ca, "a", ledger)
        b = await tls_node(start_node, tmp_path, ca, "b", ledger, **hosted)
        c = await tls_node(start_node, tmp_path, ca, "c", ledger, **hosted)
        assert a.info.http.startswith("https://127.0.0.1:")
        for other in (b, c):
            await other.peers.connect(a.info.swarm[0], persistent=True)
            await other.wallet.faucet(20_000)
        # B and C advertise tm_demo: the DHT advert and a token on chain, admitted by their own tm_ship and
        # propagated to A (every overlay-node hosts tm_ship)
        made = {}
        for node in (b, c):
            answer = await node.adverts.advertise("tm_demo")
            assert answer["token_error"] is None, answer
            assert answer["token"], answer
            assert answer["advert"]["token"] == answer["token"]
            made[node.info.identity_key] = answer["token"]
        for outpoint in made.values():
            await a.overlay.wait_applied(outpoint.split(".")[0], "tm_ship")
        async with client(a, ca) as h:
            found = await h.post("/lookup", json={"service": "ls_ship", "query": {"topics": ["tm_demo"]}})
            tokens = token_fields(found.json()["outputs"], decode_ship_token)
            assert {t.identity_key.hex(): t.uri for t in tokens} == {
                b.info.identity_key: b.info.http,
                c.info.identity_key: c.info.http,
            }
            assert all(t.kind == "SHIP" and t.name == "tm_demo" and t.is_linked() for t in tokens)
            # the reference's other query shapes
            mine = await h.post("/lookup", json={"service": "ls_ship", "query": {"identityKey": b.info.identity_key}})
            assert len(mine.json()["outputs"]) == 1
            every = await h.post("/lookup", json={"service": "ls_ship", "query": "findAll"})
            assert len(every.json()["outputs"]) == 2
        # the wallet paid for it: one satoshi and a fee, written in its history
        history = await b.wallet.history()
        assert history[0].kind == "token"
        assert history[0].resource == "ship:tm_demo"
        # B revokes: the token is spent, A learns of the spend and ls_ship forgets B
        withdrawn = await b.adverts.withdraw("tm_demo")
        (spend,) = withdrawn["token_spends"]
        await a.overlay.wait_applied(spend, "tm_ship")
        async with client(a, ca) as h:
            found = await h.post("/lookup", json={"service": "ls_ship", "query": {"topics": ["tm_demo"]}})
            left = token_fields(found.json()["outputs"], decode_ship_token)
            assert [t.identity_key.hex() for t in left] == [c.info.identity_key]


async def test_dht_fill_and_uhrp_advertisement(
    start_node: NodeFactory, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    """D shares only the DHT with B: its ls_ship and ls_uhrp answers still hold B's tokens, fetched from B's own
    /lookup when asked; B's UHRP advertisement names a URL that serves the exact bytes."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        ledger = devnet.info.url
        b = await tls_node(start_node, tmp_path, ca, "b", ledger, **{"content.replication": 0})
        d = await tls_node(start_node, tmp_path, ca, "d", ledger, **{"dht.bootstrap": [b.info.dht]})
        await d.dht.wait_bootstrapped()
        await b.wallet.faucet(20_000)
        advertised = await b.adverts.advertise("tm_weather")
        assert advertised["token"], advertised
        data = b"temperature,12.5\n" * 100
        path = tmp_path / "weather.csv"
        path.write_bytes(data)
        item = await b.content.publish(path)
        outpoint, error = await b.content.advertise_on_chain(item)
        assert error is None
        assert outpoint
        assert d.peers.link(b.info.identity_key) is None  # no peer link: only the DHT joins them
        async with client(d, ca) as h:
            found = await h.post("/lookup", json={"service": "ls_ship", "query": {"topics": ["tm_weather"]}})
            (ship,) = token_fields(found.json()["outputs"], decode_ship_token)
            assert ship.identity_key.hex() == b.info.identity_key
            assert ship.uri == b.info.http
            from overlay_node.crypto.uhrp import url_for_hash

            url = url_for_hash(hashlib.sha256(data).digest())
            found = await h.post("/lookup", json={"service": "ls_uhrp", "query": {"uhrpUrl": f"uhrp://{url}"}})
            (uhrp,) = token_fields(found.json()["outputs"], decode_uhrp_token)
            assert uhrp.host_identity_key.hex() == b.info.identity_key
            assert uhrp.size == len(data)
            assert uhrp.url == f"{b.info.http}/uhrp/{hashlib.sha256(data).hexdigest()}"
        async with httpx.AsyncClient(verify=trusting(ca), timeout=20) as plain:
            assert (await plain.get(uhrp.url)).content == data


async def test_no_token_without_https(start_node: NodeFactory, start_devnet: DevnetFactory) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        node = await start_node("a", **{"wallet.arc_url": devnet.info.url})
        await node.wallet.faucet(5_000)
        answer = await node.adverts.advertise("tm_weather")
        assert answer["token"] is None
        assert "https://" in answer["token_error"]
        assert answer["advert"]["topic"] == "tm_weather"  # the DHT advert stands
        assert node.wallet.balance().satoshis == 5_000  # nothing was spent


async def test_a_forged_ship_token_is_not_admitted(
    start_node: NodeFactory, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    """A SHIP token whose signature is not its advertiser's: answered 200 with nothing admitted (a topic manager
    refuses outputs, not requests), nothing stored; the same token signed properly is admitted."""
    from overlay_node.crypto.keys import Identity
    from overlay_node.services.arc import DevnetClient
    from overlay_node.topics.ship import ship_token

    from .overlay_fixtures import Spender

    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        node = await tls_node(start_node, tmp_path, ca, "a", devnet.info.url)
        advertiser, payer = Identity.generate(), Spender()
        good = ship_token(advertiser, "SHIP", "https://overlay.example.com", "tm_demo")
        forged = bytearray(good)
        forged[-5] ^= 0x01  # inside the signature field, before the OP_2DROP/OP_DROP tail
        async with DevnetClient(devnet.info.url) as ledger, client(node, ca) as h:
            headers = {"Content-Type": "application/octet-stream", "X-Topics": '["tm_ship"]'}
            for script, admitted in ((bytes(forged), []), (good, [0])):
                coin = await payer.fund(ledger, 2_000)
                _, beef = payer.spend(coin, [(script, 1), (payer.script, 1_998)])
                answer = await h.post("/submit", content=beef, headers=headers)
                assert answer.status_code == 200, answer.text
                assert answer.json()["tm_ship"]["outputsToAdmit"] == admitted
        topics, services = await node.overlay.counts()
        assert topics.get("tm_ship") == (1, 1)
        assert services.get("ls_ship") == 1


async def test_the_cli_contract_advertise_on_chain_then_lookup_ls_ship(
    start_node: NodeFactory, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    """The commands scripts rely on, as written: ``ctl wallet faucet``, ``ctl advertise --topic tm_x`` (the token on
    chain), then ``ctl lookup --service ls_ship --query '{"topics":["tm_x"]}' --json`` with each output's decoded
    fields."""
    from typer.testing import CliRunner

    from overlay_cli.main import app

    async def cli(*args: str) -> Any:
        argv = ["--data-dir", str(b.data_dir.path), *args]
        out = await trio.to_thread.run_sync(lambda: CliRunner().invoke(app, argv))
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout) if "--json" in args else out.stdout

    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        hosted = {"overlay.topic_managers": ["tm_ship", "tm_slap", "tm_uhrp", demo.TOPIC]}
        b = await tls_node(start_node, tmp_path, ca, "b", devnet.info.url, **hosted)
        await cli("ctl", "wallet", "faucet", "20000", "--json")
        made = await cli("ctl", "advertise", "--topic", "tm_demo", "--json")
        assert made["token"], made
        await b.overlay.wait_applied(made["token"].split(".")[0], "tm_ship")
        query = json.dumps({"topics": ["tm_demo"]})
        found = await cli("ctl", "lookup", "--service", "ls_ship", "--query", query, "--json")
        (output,) = found["outputs"]
        assert f"{output['txid']}.{output['outputIndex']}" == made["token"]
        decoded = output["decoded"]
        assert (decoded["protocol"], decoded["identityKey"], decoded["domain"], decoded["topic"]) == (
            "SHIP",
            b.info.identity_key,
            b.info.http,
            "tm_demo",
        )
        human = await cli("ctl", "lookup", "--service", "ls_ship", "--query", query)
        assert made["token"] in human
        # a name the BRC-87 rules refuse is a bad request, with nothing advertised or spent (it was a 500)
        balance = b.wallet.balance().satoshis
        argv = ["--data-dir", str(b.data_dir.path), "ctl", "advertise", "--topic", "tm_demo=x:Y"]
        bad = await trio.to_thread.run_sync(lambda: CliRunner().invoke(app, argv))
        assert bad.exit_code == 2, bad.output
        assert "bad topic or service name 'tm_demo=x:Y'" in bad.stderr
        assert [a.get("topic") for a in (await cli("ctl", "adverts", "--json"))["adverts"]] == ["tm_demo"]
        assert b.wallet.balance().satoshis == balance
