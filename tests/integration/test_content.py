"""UHRP content on whole nodes in one process: publish, replicate to R, verify, download, corruption, bad input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from overlay_node.crypto.uhrp import url_for_hash
from overlay_node.errors import BadRequest, ConnectionLost, OverlayError
from overlay_node.node import Node
from overlay_node.protocol.content import ReplicaState
from overlay_node.services.content_common import OFFER, REPLICATE, ContentMeta, PaymentRequired, StorageFull
from overlay_node.services.content_fetch import ContentUnavailable, _Download, fetch
from overlay_node.services.dht import dht_key
from tests.conftest import NodeFactory

MiB = 1024 * 1024
FAST = {"content.repair_interval": 0, "dht.request_timeout": 0.3}


async def start_network(start_node: NodeFactory, n: int, **overrides: Any) -> list[Node]:
    first = await start_node("n0", **FAST, **overrides)
    shared = {"wallet.arc_url": first.status()["ledger"], "dht.bootstrap": [first.info.dht]}
    rest: list[Node] = []
    async with trio.open_nursery() as nursery:

        async def one(i: int) -> None:
            rest.append(await start_node(f"n{i}", **FAST, **shared, **overrides))

        for i in range(1, n):
            nursery.start_soon(one, i)
    nodes = [first, *rest]
    # every node announces itself once ready: make sure the node records are in before placing
    for node in nodes:
        await node.content._announce()
    return nodes


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).digest()


def file_hash(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.digest()


async def test_publish_replicate_three_download_and_survive_a_corrupt_replica(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        nodes = await start_network(start_node, 6)
        producer = nodes[0]
        source = tmp_path / "big.bin"
        cid = write_random(source, 50 * MiB)

        item = await producer.content.publish(
            source,
            meta=ContentMeta(title="big", tags=("science", "big"), content_type="application/x-test"),
            replication=3,
            replicate=False,
        )
        assert item.hash == cid.hex()
        assert item.size == 50 * MiB
        rows = await producer.content.distribute(item.hash)
        available = [r.identity_key for r in rows if r.state == ReplicaState.AVAILABLE]
        assert len(available) == 3
        status = await producer.content.status(url_for_hash(cid))
        assert sorted(r["identity_key"] for r in status["replicas"] if r["state"] == "available") == sorted(available)

        by_key = {n.info.identity_key: n for n in nodes}
        for key in available:
            holder = by_key[key]
            assert await holder.content.blobs.verify(cid)
            held = await holder.content.store.content.get(cid.hex())
            assert held is not None
            assert held.local
            assert held.content_type == "application/x-test"
        providers = await nodes[5].content.providers(cid)
        assert set(providers) == {producer.info.identity_key, *available}

        # a node that holds nothing downloads the exact bytes from several holders
        reader = next(n for n in nodes[1:] if n.info.identity_key not in available)
        out = tmp_path / "copy.bin"
        result = await fetch(reader.content, cid.hex(), out)
        assert file_hash(out) == cid
        assert out.stat().st_size == 50 * MiB
        assert len(result.holders_used) >= 2
        assert result.bad_holders == []

        # flip a byte in every chunk of one replica on disk: the download detects it and uses other holders
        bad = by_key[available[0]]
        blob = bad.content.blobs.path(cid)
        with blob.open("r+b") as f:
            for offset in range(0, 50 * MiB, item.chunk_size):
                f.seek(offset + 7)
                byte = f.read(1)
                f.seek(offset + 7)
                f.write(bytes([byte[0] ^ 0xFF]))
        out2 = tmp_path / "copy2.bin"
        result2 = await fetch(reader.content, url_for_hash(cid), out2)
        assert file_hash(out2) == cid
        assert result2.bad_holders == [bad.info.identity_key]
        # the holder checks its copy (told by the downloader); the corrupt copy is gone either way
        assert not await bad.content.check_local(cid)
        assert not bad.content.blobs.has(cid)

        # search by tag from another node
        found = await nodes[4].content.search(tags=("science",))
        assert [f["hash"] for f in found] == [cid.hex()]
        assert await nodes[4].content.search(tags=("science",), max_price=-1 + 1, content_type="text/plain") == []


async def test_resume_gateway_and_bad_input(
    start_node: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(40):
        nodes = await start_network(start_node, 2, **{"content.max_object": 8 * MiB, "content.chunk_size": 65536})
        a, b = nodes
        source = tmp_path / "small.bin"
        cid = write_random(source, 1 * MiB + 123)
        item = await a.content.publish(source, meta=ContentMeta(content_type="text/plain"), replication=0)

        # resume: a download whose holder fails after 3 chunks keeps its part file; the next one finishes it without
        # fetching the kept chunks again
        out = tmp_path / "resumed.bin"
        read = _Download._read
        reads = 0

        async def holder_fails_after_three_chunks(download: _Download, link: Any, index: int) -> bytes:
            nonlocal reads
            reads += 1
            if reads > 3:
                raise ConnectionLost("the holder went away")
            return await read(download, link, index)

        with monkeypatch.context() as patch:
            patch.setattr(_Download, "_read", holder_fails_after_three_chunks)
            with pytest.raises(ContentUnavailable):
                await fetch(b.content, cid.hex(), out)
        assert (tmp_path / "resumed.bin.part").exists()
        assert not out.exists()
        result = await fetch(b.content, cid.hex(), out)
        assert result.resumed_chunks >= 3
        assert file_hash(out) == cid

        # gateway: full, range, etag, 304, 404, 416, bad checksum
        http = a.info.http
        async with httpx.AsyncClient(base_url=http) as client:
            r = await client.get(f"/uhrp/{cid.hex()}")
            assert r.status_code == 200
            assert hashlib.sha256(r.content).digest() == cid
            assert r.headers["etag"] == f'"{cid.hex()}"'
            assert r.headers["content-type"].startswith("text/plain")
            r = await client.get(f"/uhrp/uhrp://{url_for_hash(cid)}", headers={"Range": "bytes=10-19"})
            assert r.status_code == 206
            assert r.content == source.read_bytes()[10:20]
            assert r.headers["content-range"] == f"bytes 10-19/{item.size}"
            r = await client.get(f"/uhrp/{cid.hex()}", headers={"Range": "bytes=-5"})
            assert r.content == source.read_bytes()[-5:]
            r = await client.get(f"/uhrp/{cid.hex()}", headers={"If-None-Match": f'"{cid.hex()}"'})
            assert r.status_code == 304
            r = await client.get(f"/uhrp/{cid.hex()}", headers={"Range": f"bytes={item.size}-"})
            assert r.status_code == 416
            assert r.headers["content-range"] == f"bytes */{item.size}"
            assert r.json()["code"] == "range_not_satisfiable"
            r = await client.get(f"/uhrp/{cid.hex()}", headers={"Range": "bytes=1-2,5-6"})
            assert r.status_code == 400
            r = await client.get(f"/uhrp/{'ab' * 32}")
            assert r.status_code == 404
            assert r.json()["code"] == "not_found"
            url = url_for_hash(cid)
            broken = url[:-1] + ("1" if url[-1] != "1" else "2")
            r = await client.get(f"/uhrp/{broken}")
            assert r.status_code == 400
            assert "checksum" in r.json()["message"]

            # a small object is served from memory once read, ranges too; dropping it stops serving at once
            tiny = tmp_path / "tiny.bin"
            tiny_id = write_random(tiny, 1000)
            tiny_item = await a.content.publish(tiny, replication=0)
            for _ in range(2):
                r = await client.get(f"/uhrp/{tiny_id.hex()}")
                assert r.status_code == 200
                assert r.content == tiny.read_bytes()
            r = await client.get(f"/uhrp/{tiny_id.hex()}", headers={"Range": "bytes=990-"})
            assert r.status_code == 206
            assert r.content == tiny.read_bytes()[990:]
            await a.content.drop_local(tiny_item)
            r = await client.get(f"/uhrp/{tiny_id.hex()}")
            assert r.status_code == 404

        # bad replication input from a peer: nothing that does not match its hash is ever stored
        link = await a.content.link_to(b.info.identity_key)
        other = os.urandom(200_000)
        other_id = hashlib.sha256(other).hexdigest()
        header = {"hash": other_id, "size": len(other), "chunk_size": 65536}

        async def push(data: bytes, **changes: Any) -> None:
            async with link.open_transfer(REPLICATE, header | changes) as tx:
                await tx.send(data)

        with pytest.raises(OverlayError, match="hash mismatch"):
            await push(b"x" * len(other))  # wrong chunks
        with pytest.raises(OverlayError, match="truncated"):
            await push(other[:-1000])
        with pytest.raises(OverlayError, match="more bytes than"):
            await push(other + b"extra")
        with pytest.raises(OverlayError, match="over the limit"):
            await link.request(OFFER, {"hash": other_id, "size": 9 * MiB})
        with pytest.raises(OverlayError, match="not a UHRP URL"):
            await link.request(OFFER, {"hash": "zz", "size": 1})
        assert await b.content.store.content.get(other_id) is None
        assert not b.content.blobs.has(bytes.fromhex(other_id))
        assert list(b.content.blobs.tmp.iterdir()) == []
        # the right bytes are accepted, verified and announced
        await push(other)
        assert b.content.blobs.has(bytes.fromhex(other_id))
        assert b.info.identity_key in await a.content.providers(bytes.fromhex(other_id))

        with pytest.raises(BadRequest, match="checksum"):
            await b.content.item(broken)


async def test_storage_budget_refuses_offers_and_placement_moves_on(start_node: NodeFactory, tmp_path: Path) -> None:
    with trio.fail_after(30):
        a = await start_node("a", **FAST)
        shared = {"wallet.arc_url": a.status()["ledger"], "dht.bootstrap": [a.info.dht]}
        small = await start_node("small", **FAST, **shared, **{"content.storage_budget": 1000})
        big = await start_node("big", **FAST, **shared)
        for node in (a, small, big):
            await node.content._announce()
        source = tmp_path / "f.bin"
        write_random(source, 300_000)
        # the small node cannot take it; placement with R=1 over both lands on the one that can
        item = await a.content.publish(source, replication=1, replicate=False)
        rows = await a.content.distribute(item.hash, nodes=(small.info.identity_key, big.info.identity_key))
        states = {r.identity_key: r.state for r in rows}
        assert states == {small.info.identity_key: ReplicaState.FAILED, big.info.identity_key: ReplicaState.AVAILABLE}
        detail = next(r.detail for r in rows if r.identity_key == small.info.identity_key)
        assert "storage budget" in detail
        assert not small.content.blobs.has(bytes.fromhex(item.hash))
        with pytest.raises(StorageFull):
            await small.content.publish(source)


async def test_cli_publish_status_access_search(start_node: NodeFactory, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from overlay_cli.main import app

    async def cli(*args: str) -> Any:
        runner = CliRunner()
        return await trio.to_thread.run_sync(lambda: runner.invoke(app, list(args)))

    with trio.fail_after(40):
        a, _b, c = await start_network(start_node, 3)
        source = tmp_path / "doc.txt"
        cid = write_random(source, 300_000)
        dir_a, dir_c = str(a.data_dir.path), str(c.data_dir.path)

        out = await cli(
            "--data-dir",
            dir_a,
            "--json",
            "ctl",
            "publish",
            str(source),
            "--replication",
            "1",
            "--tags",
            "docs",
            "--content-type",
            "text/plain",
            "--wait",
        )
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout)
        assert data["hash"] == cid.hex()
        assert data["uhrp_url"] == url_for_hash(cid)
        assert [r["state"] for r in data["replicas"]] == ["available"]
        assert (data["replicas_placed"], data["replicas_wanted"]) == (1, 1)

        st = await cli("--data-dir", dir_a, "--json", "ctl", "content", "status", data["uhrp_url"])
        assert st.exit_code == 0, st.output
        replicas = json.loads(st.stdout)["replicas"]
        assert [r["state"] for r in replicas] == ["available"]
        assert len(replicas[0]["identity_key"]) == 66
        human = await cli("--data-dir", dir_a, "ctl", "content", "status", cid.hex())
        assert human.exit_code == 0
        assert "available" in human.stdout

        target = tmp_path / "fetched.txt"
        got = await cli("--data-dir", dir_c, "--json", "ctl", "access", data["uhrp_url"], "--output", str(target))
        assert got.exit_code == 0, got.output
        assert target.read_bytes() == source.read_bytes()
        alias = await cli("--data-dir", dir_c, "ctl", "get", cid.hex(), "--output", str(tmp_path / "again.txt"))
        assert alias.exit_code == 0
        assert (tmp_path / "again.txt").read_bytes() == source.read_bytes()

        found = await cli("--data-dir", dir_c, "--json", "ctl", "search", "--tags", "docs")
        assert [r["hash"] for r in json.loads(found.stdout)["results"]] == [cid.hex()]

        missing = await cli("--data-dir", dir_c, "ctl", "access", "ab" * 32, "--output", str(tmp_path / "none"))
        assert missing.exit_code != 0
        assert "no node provides" in missing.stderr
        bad = await cli("--data-dir", dir_c, "ctl", "content", "status", "XUnotaurl")
        assert bad.exit_code == 2
        assert "UHRP" in bad.stderr


async def test_cli_publish_wait_that_places_fewer_replicas_than_wanted_fails_and_keeps_the_content(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from overlay_cli.main import app

    async def cli(*args: str) -> Any:
        runner = CliRunner()
        return await trio.to_thread.run_sync(lambda: runner.invoke(app, ["--data-dir", str(lone.data_dir.path), *args]))

    with trio.fail_after(40):
        lone = await start_node("lone", **FAST)  # no peer, no DHT contact: nobody to place a replica on
        source = tmp_path / "doc.txt"
        cid = write_random(source, 10_000)
        line = "placed 0 of 2 replicas (no peer took them: check `overlay-node ctl peers`)"

        out = await cli("--json", "ctl", "publish", str(source), "--replication", "2", "--wait")
        assert out.exit_code == 1, out.output
        data = json.loads(out.stdout)
        assert (data["hash"], data["replicas_placed"], data["replicas_wanted"]) == (cid.hex(), 0, 2)
        assert out.stderr == f"error: {line}\n"
        # the content itself stays published: held here, its provider record in the DHT
        assert [c.hash for c in await lone.content.list_items()] == [cid.hex()]
        assert lone.dht.local_records(dht_key("uhrp", cid.hex()))

        human = await cli("ctl", "publish", str(source), "--replication", "2", "--wait")
        assert human.exit_code == 1, human.output
        assert cid.hex() in human.stdout
        assert human.stderr.splitlines()[-1] == f"error: {line}"

        again = await cli("--json", "ctl", "distribute", cid.hex(), "--replication", "1")
        assert again.exit_code == 1, again.output
        assert (json.loads(again.stdout)["replicas_placed"], json.loads(again.stdout)["replicas_wanted"]) == (0, 1)
        assert "placed 0 of 1 replicas" in again.stderr
        told = await cli("ctl", "distribute", cid.hex(), "--replication", "1")
        assert "0 replicas available (target 1)" in told.stdout, told.output  # the content's own is 2
        # asking for nothing more than is placed succeeds, and so does --wait with R = 0
        none = await cli("--json", "ctl", "distribute", cid.hex(), "--replication", "0")
        assert none.exit_code == 0, none.output
        free = await cli("--json", "ctl", "publish", str(source), "--replication", "0", "--wait")
        assert free.exit_code == 0, free.output
        assert (json.loads(free.stdout)["replicas_placed"], json.loads(free.stdout)["replicas_wanted"]) == (0, 0)


async def repair_all(nodes: list[Node]) -> None:
    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(node.content.repair_pass)


async def test_repair_recruits_after_a_holder_dies_and_trims_surplus(start_node: NodeFactory, tmp_path: Path) -> None:
    with trio.fail_after(40):
        nodes = await start_network(
            start_node, 5, **{"content.trim_grace": 0, "content.check_timeout": 10.0, "swarm.handshake_timeout": 5.0}
        )
        producer = nodes[0]
        by_key = {n.info.identity_key: n for n in nodes}
        source = tmp_path / "r.bin"
        cid = write_random(source, 400_000)
        item = await producer.content.publish(source, replication=2, replicate=False)
        rows = await producer.content.distribute(item.hash)
        holders = [r.identity_key for r in rows if r.state == ReplicaState.AVAILABLE]
        assert len(holders) == 2

        # one holder dies: the closest live holder recruits a new replica on a node that has none
        dead = by_key[holders[0]]
        dead.request_shutdown()
        await dead.wait_stopped()
        survivors = [n for n in nodes if n is not dead]
        await repair_all(survivors)

        async def live_holders() -> set[str]:
            return {n.info.identity_key for n in survivors if n.content.blobs.has(cid)} - {producer.info.identity_key}

        now_live = await live_holders()
        assert len(now_live) == 2
        assert holders[1] in now_live

        # one replica too many (placed by hand): the farthest unpinned holder drops its copy
        spare = next(n for n in survivors if n.info.identity_key not in now_live and n is not producer)
        await producer.content.distribute(item.hash, nodes=(spare.info.identity_key,), replication=3)
        assert len(await live_holders()) == 3
        await repair_all(survivors)
        assert len(await live_holders()) == 2
        assert producer.content.blobs.has(cid)  # the producer's own copy is pinned


async def test_priced_content_needs_a_grant_and_payment_buys_one(start_node: NodeFactory, tmp_path: Path) -> None:
    with trio.fail_after(40):
        producer, consumer, holder = await start_network(start_node, 3)
        source = tmp_path / "premium.bin"
        cid = write_random(source, 200_000)
        await producer.content.publish(source, meta=ContentMeta(price=50), replication=0)
        await producer.content.distribute(cid.hex(), nodes=(holder.info.identity_key,), replication=1)

        # no grant: holders refuse; the producer's gateway sells it with BRC-105 only to an authenticated request
        # (tests/integration/test_http_auth.py), so a plain request gets the reference's 401; a holder's gateway
        # answers 402 with the price and the producer
        with pytest.raises(OverlayError, match="costs 50 satoshis"):
            await fetch(consumer.content, cid.hex(), tmp_path / "x.bin")
        async with httpx.AsyncClient(base_url=producer.info.http) as client:
            r = await client.get(f"/uhrp/{cid.hex()}", headers={"X-Payer": consumer.info.identity_key})
            assert r.status_code == 401
            assert r.json()["code"] == "UNAUTHORIZED"
        async with httpx.AsyncClient(base_url=holder.info.http) as client:
            r = await client.get(f"/uhrp/{cid.hex()}", headers={"X-Payer": consumer.info.identity_key})
            assert r.status_code == 402
            assert r.json()["price"] == 50
            assert r.json()["producer"] == producer.info.identity_key
            assert "quote" not in r.json()

        # pay the producer, get its grant, download from the holder and the producer with it
        await consumer.wallet.faucet(10_000)
        with pytest.raises(OverlayError, match="over --max-price"):
            await consumer.content.grant_for(cid.hex(), max_price=10)
        grant = await consumer.content.grant_for(cid.hex(), max_price=100)
        assert grant is not None
        assert grant["consumer"] == consumer.info.identity_key
        out = tmp_path / "paid.bin"
        await fetch(consumer.content, cid.hex(), out, grant=grant)
        assert file_hash(out) == cid
        # a grant is bound to its consumer: a holder refuses it for another peer
        held = await holder.content.item(cid.hex())
        holder.content.check_access(held, consumer.info.identity_key, grant)
        with pytest.raises(PaymentRequired, match="another consumer"):
            holder.content.check_access(held, producer.info.identity_key[:2] + "1" * 64, grant)
        forged = grant | {"expires": grant["expires"] + 1}
        with pytest.raises(PaymentRequired, match="signature"):
            holder.content.check_access(held, consumer.info.identity_key, forged)
        # over HTTP the grant opens both gateways, without authentication
        for node in (producer, holder):
            async with httpx.AsyncClient(base_url=node.info.http) as client:
                r = await client.get(f"/uhrp/{cid.hex()}", headers={"X-Access-Grant": json.dumps(grant)})
                assert r.status_code == 200
                assert hashlib.sha256(r.content).digest() == cid
                r = await client.get(f"/uhrp/{cid.hex()}", headers={"X-Access-Grant": json.dumps(forged)})
                assert r.status_code in (401, 402)


async def test_legacy_priced_gateway_without_brc105(start_node: NodeFactory, tmp_path: Path) -> None:
    """With ``auth.priced = false`` the producer's gateway answers 402 with the price and a quote for X-Payer."""
    with trio.fail_after(40):
        producer, consumer = await start_network(start_node, 2, **{"auth.priced": False})
        source = tmp_path / "premium.bin"
        cid = write_random(source, 20_000)
        await producer.content.publish(source, meta=ContentMeta(price=50), replication=0)
        async with httpx.AsyncClient(base_url=producer.info.http) as client:
            r = await client.get(f"/uhrp/{cid.hex()}", headers={"X-Payer": consumer.info.identity_key})
            assert r.status_code == 402
            assert r.json()["price"] == 50
            assert r.json()["quote"]["amount"] == 50
