"""``ctl submit``, ``ctl lookup``, ``ctl topics`` and ``ctl history`` against a real daemon in this process, with
``--json`` after the verb."""

from __future__ import annotations

import json

from overlay_node.services.arc import DevnetClient
from tests.conftest import NodeFactory
from tests.plugins import demo

from .overlay_fixtures import Spender
from .test_cli import cli

DEMO = {
    "overlay.topic_managers": ["tm_ship", demo.TOPIC],
    "overlay.lookup_services": ["ls_ship", demo.SERVICE],
    "wallet.devnet_block_interval": 0.0,
}


async def test_submit_lookup_topics_history(start_node: NodeFactory) -> None:
    node = await start_node("a", **DEMO)
    data_dir = str(node.data_dir.path)
    alice = Spender()
    async with DevnetClient(node.status()["ledger"]) as devnet:
        first, beef1 = alice.spend(await alice.fund(devnet, 10_000))
    second, beef2 = alice.spend(first)
    binary = node.data_dir.path / "first.beef"
    binary.write_bytes(beef1)
    text = node.data_dir.path / "second.hex"
    text.write_text(beef2.hex() + "\n")

    submitted = await cli("--data-dir", data_dir, "ctl", "submit", str(binary), "--topic", "tm_demo", "--json")
    assert submitted.exit_code == 0, submitted.output
    assert json.loads(submitted.stdout) == {
        "txid": first.txid,
        "steak": {"tm_demo": {"outputsToAdmit": [0], "coinsToRetain": [], "coinsRemoved": []}},
    }
    human = await cli("--data-dir", data_dir, "ctl", "submit", str(text), "-t", "tm_demo")
    assert human.exit_code == 0
    assert second.txid in human.stdout

    found = await cli("--data-dir", data_dir, "ctl", "lookup", "--service", "ls_demo", "--query", '{"findAll": true}')
    assert found.exit_code == 0
    assert f"{second.txid}.0" in found.stdout
    as_json = await cli(
        "--data-dir", data_dir, "ctl", "lookup", "-s", "ls_demo", "-q", f'{{"txid": "{second.txid}"}}', "--json"
    )
    (output,) = json.loads(as_json.stdout)["outputs"]
    assert output["txid"] == second.txid
    assert output["satoshis"] == second.satoshis
    assert output["decoded"] == {"script": second.script.hex()}  # a plain P2PKH output: nothing to decode

    topics = json.loads((await cli("--data-dir", data_dir, "ctl", "topics", "--json")).stdout)
    assert topics["topic_managers"]["tm_demo"]["outputs"] == 2
    assert topics["topic_managers"]["tm_demo"]["unspent"] == 1
    assert topics["lookup_services"]["ls_demo"]["indexed"] == 1
    assert "tm_ship" in topics["topic_managers"]

    history = await cli("--data-dir", data_dir, "ctl", "history", f"{second.txid}.0", "--depth", "1", "--json")
    answer = json.loads(history.stdout)
    assert [(h["txid"], h["depth"], h["spent"]) for h in answer["history"]] == [
        (second.txid, 0, False),
        (first.txid, 1, True),
    ]

    synced = await cli("--data-dir", data_dir, "ctl", "sync", "--topic", "tm_demo", "--json")
    assert synced.exit_code == 0
    assert json.loads(synced.stdout) == {"reports": []}  # no other host known
    unknown_topic = await cli("--data-dir", data_dir, "ctl", "sync", "--topic", "tm_nope")
    assert unknown_topic.exit_code != 0
    assert "does not support this topic: tm_nope" in unknown_topic.stderr

    # clear one-line errors
    bad = await cli("--data-dir", data_dir, "ctl", "lookup", "-s", "ls_demo", "-q", "{nope")
    assert bad.exit_code != 0
    assert "--query is not JSON" in bad.stderr
    assert "Traceback" not in bad.output
    unknown = await cli("--data-dir", data_dir, "ctl", "submit", str(binary), "-t", "tm_nope")
    assert unknown.exit_code != 0
    assert "does not support this topic: tm_nope" in unknown.stderr
    missing = await cli("--data-dir", data_dir, "ctl", "history", "f" * 64 + ".0")
    assert missing.exit_code != 0
    assert "is not an output" in missing.stderr
