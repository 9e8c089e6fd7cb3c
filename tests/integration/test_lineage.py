"""Content lineage across the network: parents and relationship travel in provider records and replicas, children
records let any node find descendants; ``ctl lineage`` from a node that holds none of the content."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
from typer.testing import CliRunner

from overlay_cli.main import app
from overlay_node.crypto.uhrp import url_for_hash
from overlay_node.errors import BadRequest, NotFound
from overlay_node.node import Node
from overlay_node.protocol.content import (
    ChildItem,
    ProviderRecord,
    decode_children,
    decode_provider,
    encode_children,
    encode_provider,
)
from overlay_node.services.content_common import ContentMeta
from overlay_node.services.dht import dht_key
from tests.conftest import NodeFactory
from tests.integration.test_content import start_network, write_random


async def cli(*args: str) -> Any:
    runner = CliRunner()
    return await trio.to_thread.run_sync(lambda: runner.invoke(app, list(args)))


async def publish(node: Node, path: Path, size: int, **meta: Any) -> str:
    cid = write_random(path, size)
    await node.content.publish(path, meta=ContentMeta(**meta), replication=0)
    return cid.hex()


def hashes(entries: list[dict[str, Any]], key: str) -> list[Any]:
    """A lineage tree as nested ``[hash, relationship, [...]]`` lists."""
    return [[e["hash"], e["relationship"], hashes(e[key], key)] for e in entries]


async def test_chain_published_on_three_nodes_is_seen_whole_from_a_fourth(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        a, b, c, d = await start_network(start_node, 4)
        x = await publish(a, tmp_path / "x.bin", 70_000, title="raw")
        y = await publish(b, tmp_path / "y.bin", 80_000, parents=(x,), relationship="derived")
        z = await publish(
            c, tmp_path / "z.bin", 90_000, parents=(url_for_hash(bytes.fromhex(y)),), relationship="processed"
        )

        # the provider record carries the lineage, so any node reads it without the producer's database
        records = await d.dht.get(dht_key("uhrp", z))
        assert [decode_provider(r.value).parents for r in records] == [(bytes.fromhex(y),)]
        assert decode_provider(records[0].value).relationship == "processed"

        # a replica keeps the parents and relationship, and its own provider record says them too
        await b.content.distribute(y, nodes=(a.info.identity_key,), replication=1)
        replica = await a.content.item(y)
        assert not replica.published
        assert (replica.parents, replica.relationship) == ((x,), "derived")
        status = await a.content.status(y)
        assert (status["parents"], status["relationship"]) == ([x], "derived")
        by_holder = {r.publisher.hex(): decode_provider(r.value) for r in await d.dht.get(dht_key("uhrp", y))}
        assert set(by_holder) == {a.info.identity_key, b.info.identity_key}
        assert {p.parents for p in by_holder.values()} == {(bytes.fromhex(x),)}

        # from d, which holds none of it: ancestors of z, descendants of x, both ways from y
        assert await d.content.list_items() == []
        down = await d.content.lineage(z, depth=5)
        assert hashes(down["parents"], "parents") == [[y, "derived", [[x, "", []]]]]
        assert down["children"] == []
        assert [(e["hash"], e["depth"]) for e in down["ancestors"]] == [(y, 1), (x, 2)]
        up = await d.content.lineage(x, depth=5)
        assert up["relationship"] == ""
        assert hashes(up["children"], "children") == [[y, "derived", [[z, "processed", []]]]]
        assert [(e["hash"], e["depth"]) for e in up["descendants"]] == [(y, 1), (z, 2)]
        middle = await d.content.lineage(y, depth=1)
        assert hashes(middle["parents"], "parents") == [[x, "", []]]
        assert hashes(middle["children"], "children") == [[z, "processed", []]]
        shallow = await d.content.lineage(x, depth=1)
        assert hashes(shallow["children"], "children") == [[y, "derived", []]]

        # a node that claims foreign content as a child of x is not believed: w's own lineage does not name x
        w = await publish(d, tmp_path / "w.bin", 1000)
        await d.dht.put(
            dht_key("children", x),
            encode_children([ChildItem(content_id=bytes.fromhex(w), relationship="derived")]),
            ttl=60,
        )
        again = await c.content.lineage(x, depth=2)
        assert hashes(again["children"], "children") == [[y, "derived", [[z, "processed", []]]]]

        # the CLI, from d
        out = await cli("--data-dir", str(d.data_dir.path), "ctl", "lineage", z, "--json")
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout)
        assert data["hash"] == z
        assert [p["hash"] for p in data["parents"]] == [y]
        assert data["children"] == []
        human = await cli("--data-dir", str(d.data_dir.path), "ctl", "lineage", x, "--depth", "2")
        assert human.exit_code == 0, human.output
        for text in (y, z, "processed"):
            assert text in human.stdout

        # bad input: a clear error, nothing changed
        with pytest.raises(BadRequest, match="depth"):
            await d.content.lineage(x, depth=0)
        with pytest.raises(NotFound, match="not known"):
            await d.content.lineage("ab" * 32)
        missing = await cli("--data-dir", str(d.data_dir.path), "ctl", "lineage", "cd" * 32)
        assert missing.exit_code == 9
        assert "not known" in missing.stderr
        bad = await cli("--data-dir", str(d.data_dir.path), "ctl", "lineage", "nothash")
        assert bad.exit_code == 2


async def test_lineage_limits_on_publish(start_node: NodeFactory, tmp_path: Path) -> None:
    with trio.fail_after(20):
        (a,) = await start_network(start_node, 1)
        parents = tuple(f"{i:064x}" for i in range(9))
        with pytest.raises(BadRequest, match="at most 8"):
            await publish(a, tmp_path / "p.bin", 100, parents=parents, relationship="derived")
        with pytest.raises(BadRequest, match="relationship must be one of"):
            await publish(a, tmp_path / "q.bin", 100, parents=parents[:1])
        assert await a.content.list_items() == []


def test_lineage_record_formats() -> None:
    x, y = bytes(range(32)), bytes(range(1, 33))
    plain = ProviderRecord(content_id=y, size=5)
    assert b"pa" not in encode_provider(plain)  # content without lineage keeps the record it always had
    derived = ProviderRecord(content_id=y, size=5, parents=(x,), relationship="enriched")
    back = decode_provider(encode_provider(derived))
    assert (back.parents, back.relationship) == ((x,), "enriched")
    assert back.as_dict()["parents"] == [x.hex()]
    bad_maps: list[dict[str, Any]] = [
        {"v": 1, "h": y, "s": 5, "pa": [x]},  # parents without a relationship
        {"v": 1, "h": y, "s": 5, "rl": "derived"},  # a relationship without parents
        {"v": 1, "h": y, "s": 5, "pa": [x[:31]], "rl": "derived"},
        {"v": 1, "h": y, "s": 5, "pa": [x] * 9, "rl": "derived"},
        {"v": 1, "h": y, "s": 5, "pa": x, "rl": "derived"},
        {"v": 1, "h": y, "s": 5, "pa": [x], "rl": "copied"},
    ]
    for bad in bad_maps:
        with pytest.raises(BadRequest):
            decode_provider(cbor2.dumps(bad))
    items = [ChildItem(content_id=bytes([i]) * 32, relationship="derived") for i in range(20)]
    value = encode_children(items)
    assert len(value) <= 1024
    assert decode_children(value) == items[:16]
    for bad_value in ({"v": 1, "c": [[x]]}, {"v": 1, "c": [[x, 3]]}, {"v": 1, "c": [[x[:5], "derived"]]}, {"v": 2}):
        with pytest.raises(BadRequest):
            decode_children(cbor2.dumps(bad_value))
