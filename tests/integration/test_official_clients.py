"""The official TypeScript SDK's overlay clients (``@bsv/sdk`` from .tools/, run by node) use our nodes unchanged:
``LookupResolver`` (ls_ship, ls_slap, ls_uhrp: answers that ``Transaction.fromBEEF`` parses and verifies, scripts
only), ``TopicBroadcaster`` (finds through our SHIP tokens the two of three nodes hosting tm_demo and submits to
them) and ``StorageDownloader`` (resolves a published UHRP URL and downloads the exact bytes from our gateway).
Everything runs over https:// with a local CA that node is told to trust (NODE_EXTRA_CA_CERTS)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

from overlay_node.crypto.uhrp import url_for_hash
from overlay_node.services.arc import DevnetClient
from tests.conftest import NodeFactory
from tests.plugins import demo

from .overlay_fixtures import Spender
from .test_overlay_tokens import ca, tls_node
from .test_payments import DevnetFactory, start_devnet

__all__ = ["ca", "start_devnet"]  # fixtures, imported to be used here

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / ".tools" / "node_modules" / "@bsv" / "sdk"
LIMIT = 120


async def run_clients(request: dict[str, Any], ca_file: Path) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not SDK.is_dir():
        pytest.fail("@bsv/sdk or node missing: run `make tools` (npm install --prefix .tools @bsv/sdk)")
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(ca_file)}
    proc = await trio.run_process(
        [node, str(ROOT / "tests/integration/js/overlay_clients.cjs"), str(SDK)],
        stdin=json.dumps(request).encode(),
        capture_stdout=True,
        capture_stderr=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


async def test_lookup_resolver_topic_broadcaster_and_storage_downloader(
    start_node: NodeFactory, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        ledger = devnet.info.url
        hosts_demo = {
            "overlay.topic_managers": ["tm_ship", "tm_slap", "tm_uhrp", demo.TOPIC],
            "overlay.lookup_services": ["ls_ship", "ls_slap", "ls_uhrp", demo.SERVICE],
            "content.replication": 0,
        }
        a = await tls_node(start_node, tmp_path, ca, "a", ledger)
        b = await tls_node(start_node, tmp_path, ca, "b", ledger, **hosts_demo)
        c = await tls_node(start_node, tmp_path, ca, "c", ledger, **hosts_demo)
        for other in (b, c):
            await other.peers.connect(a.info.swarm[0], persistent=True)
            await other.wallet.faucet(30_000)
        # B and C advertise the topic they host (SHIP) and B its lookup service (SLAP); B publishes a file (UHRP)
        spends = []
        for node in (b, c):
            made = await node.adverts.advertise("tm_demo")
            assert made["token"], made
            spends.append((made["token"], "tm_ship"))
        slap = await b.adverts.advertise("ls_demo")
        assert slap["token"], slap
        spends.append((slap["token"], "tm_slap"))
        data = os.urandom(5000)
        path = tmp_path / "data.bin"
        path.write_bytes(data)
        await b.content.publish(path)
        (uhrp,) = await b.tokens.tokens("UHRP")
        spends.append((uhrp.outpoint, "tm_uhrp"))
        for outpoint, topic in spends:  # A, the tracker the clients ask, has every token by propagation
            await a.overlay.wait_applied(outpoint.split(".")[0], topic)
        # a transaction for tm_demo, to be broadcast by the official client
        payer = Spender()
        async with DevnetClient(ledger) as client:
            coin, beef = payer.spend(await payer.fund(client, 10_000))

        uhrp_url = url_for_hash(hashlib.sha256(data).digest())
        result = await run_clients(
            {"tracker": a.info.http, "topic": "tm_demo", "service": "ls_demo", "beef": beef.hex(), "uhrpUrl": uhrp_url},
            ca.cert,
        )

        ship = result["ship"]["outputs"]
        assert result["ship"]["type"] == "output-list"
        assert len(ship) == 2
        assert all(o["verified"] for o in ship)
        for o in ship:  # ["SHIP", identity key, URI, topic] plus the signature
            protocol, key, uri, topic, _signature = o["fields"]
            assert bytes.fromhex(protocol) == b"SHIP"
            assert bytes.fromhex(topic) == b"tm_demo"
            assert {key: bytes.fromhex(uri).decode()} in (
                {b.info.identity_key: b.info.http},
                {c.info.identity_key: c.info.http},
            )
        (slap_out,) = result["slap"]["outputs"]
        assert slap_out["verified"]
        assert bytes.fromhex(slap_out["fields"][3]) == b"ls_demo"
        (uhrp_out,) = result["uhrp"]["outputs"]
        assert uhrp_out["verified"]
        assert uhrp_out["fields"][0] == b.info.identity_key
        # the broadcaster reached B and C (the hosts of tm_demo) and not A, and both admitted it
        assert result["broadcast"]["status"] == "success", result["broadcast"]
        assert result["broadcast"]["txid"] == coin.txid
        assert "2 Overlay Services hosts" in result["broadcast"]["message"]
        for node in (b, c):
            await node.overlay.wait_applied(coin.txid, "tm_demo")
        assert "tm_demo" not in a.overlay.managers
        # the downloader resolved our gateway's URL and got the exact bytes
        assert result["resolved"] == [f"{b.info.http}/uhrp/{hashlib.sha256(data).hexdigest()}"]
        assert bytes.fromhex(result["download"]["hex"]) == data
